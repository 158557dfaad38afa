"""``ready = "notify"`` speaks systemd's protocol too: ``$NOTIFY_SOCKET``, ``READY=1``,
``STATUS=...`` (shown in status), ``STOPPING=1``. The daemons here use only the socket module,
as a daemon with its own sd_notify would."""

from __future__ import annotations

import os
import socket
import stat
import sys

import pytest

import otpy
from tests.helpers import unique_name, wait_dead, wait_until

pytestmark = pytest.mark.timeout(60)

# A daemon: says STATUS while it starts, then READY=1 with a STATUS; SIGUSR1 makes it say
# STOPPING=1; it prints its NOTIFY_SOCKET on stdout.
DAEMON = """
import os, signal, socket, sys, time
path = os.environ["NOTIFY_SOCKET"]
print(path, flush=True)
def notify(text):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(text.encode(), path)
signal.signal(signal.SIGUSR1, lambda *_: notify("STOPPING=1\\nSTATUS=draining"))  # before READY: the test
notify("STATUS=warming up")                                                    # may signal at once after it
notify("READY=1\\nSTATUS=serving 3 clients\\nMAINPID=%d\\nX-UNKNOWN=ignored" % os.getpid())
while True:
    time.sleep(3600)
"""

# Never says READY itself: prints its NOTIFY_SOCKET, so that someone else can try.
SILENT = """
import os, time
print(os.environ["NOTIFY_SOCKET"], flush=True)
time.sleep(3600)
"""

# Says READY=1 from a grandchild in its process group (a daemon's worker may be the one to say it).
FROM_A_WORKER = """
import os, socket, time
if os.fork() == 0:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1\\nSTATUS=from the worker", os.environ["NOTIFY_SOCKET"])
    os._exit(0)
time.sleep(3600)
"""


def daemon(id: str, code: str, **fields) -> otpy.ChildSpec:
    return otpy.ChildSpec(id=id, command=(sys.executable, "-c", code), ready="notify", **fields)


class Output:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, child_id: str, stream: str, line: str) -> None:
        self.lines.append((child_id, line))

    def first(self, child_id: str) -> str:
        return wait_until(lambda: next((line for c, line in self.lines if c == child_id), None),
                          what=f"a line from {child_id}")


@pytest.fixture
def node_and_output():
    output = Output()
    root = otpy.SupervisorSpec(id="root", children=(otpy.DynamicSupervisorSpec(id="pool"),))
    node = otpy.Node.from_spec(root, name=unique_name("sdnotify"), on_output=output).start()
    yield node, output
    node.stop()


def info(node: otpy.Node, id: str):
    [child] = [c for c in node.which_children("pool") if c.id == id]
    return child


def test_a_daemon_that_says_ready_on_notify_socket_is_started_and_its_status_shown(node_and_output):
    node, output = node_and_output
    result = node.start_child("pool", daemon("d", DAEMON))
    assert result.ok, result
    assert info(node, "d").status_line == "serving 3 clients"
    path = output.first("d")
    assert os.path.dirname(path).startswith(str(node.aio.dir))  # in the node's private folder
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    os.kill(result.pid, __import__("signal").SIGUSR1)
    wait_until(lambda: info(node, "d").status_line == "stopping: draining", what="STOPPING=1 shown")
    tree = node.status().tree
    [entry] = [e for e in tree.children[0].children if e.id == "d"]
    assert entry.status_line == "stopping: draining"


def test_the_socket_is_gone_once_the_child_is_dead(node_and_output):
    node, output = node_and_output
    result = node.start_child("pool", daemon("d", DAEMON))
    assert result.ok, result
    path = output.first("d")
    assert os.path.exists(path)
    node.terminate_child("d", "pool")
    assert wait_dead([result.pid], 5) == []
    wait_until(lambda: not os.path.exists(path), what="the socket file removed")


def test_a_daemon_that_never_says_ready_fails_its_start_even_if_another_process_does(node_and_output):
    node, output = node_and_output
    started = {}

    def say_ready_for_it():
        path = output.first("silent")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:  # this process: not the child's
            s.sendto(b"READY=1\nSTATUS=forged", path)
        started["sent"] = True

    import threading

    thread = threading.Thread(target=say_ready_for_it)
    thread.start()
    result = node.start_child("pool", daemon("silent", SILENT, start_timeout=3.0))
    thread.join()
    assert started == {"sent": True}
    assert result.outcome == "start_failed" and "no READY within 3.0 s" in (result.detail or ""), result


# Says READY=1 in a datagram too long for the socket (a 5000-byte STATUS first): dropped.
TOO_LONG = """
import os, socket, time
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(b"STATUS=" + b"Z" * 5000 + b"\\nREADY=1", os.environ["NOTIFY_SOCKET"])
    s.sendto(b"STATUS=" + b"Z" * 6000, os.environ["NOTIFY_SOCKET"])
time.sleep(3600)
"""


def test_a_datagram_too_long_is_logged_once_and_named_in_the_start_failure(node_and_output, caplog):
    node, _ = node_and_output
    with caplog.at_level("WARNING", logger="otpy"):
        result = node.start_child("pool", daemon("long", TOO_LONG, start_timeout=3.0))
    assert result.outcome == "start_failed", result
    assert "no READY within 3.0 s" in result.detail and "longer than 4096 bytes" in result.detail, result
    warnings = [r.getMessage() for r in caplog.records if "NOTIFY_SOCKET" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one per child, not one per datagram
    assert "'long'" in warnings[0] and "5015 bytes" in warnings[0] and "4096" in warnings[0], warnings


def test_a_process_in_the_child_s_group_may_say_ready(node_and_output):
    node, _ = node_and_output
    result = node.start_child("pool", daemon("w", FROM_A_WORKER))
    assert result.ok, result
    assert info(node, "w").status_line == "from the worker"


def test_otpy_s_own_notify_fd_still_works(node_and_output):
    node, _ = node_and_output
    code = "import os, time; os.write(int(os.environ['OTPY_NOTIFY_FD']), b'READY\\n'); time.sleep(3600)"
    result = node.start_child("pool", daemon("classic", code))
    assert result.ok, result
    assert info(node, "classic").status_line == ""


@pytest.mark.skipif(__import__("shutil").which("systemd-notify") is None, reason="no systemd-notify here")
def test_systemd_notify_itself_works_from_a_shell_script(node_and_output):
    node, _ = node_and_output
    script = "systemd-notify --ready --status='up from systemd-notify'; exec sleep 3600"
    result = node.start_child("pool", otpy.ChildSpec(id="sh", command=("sh", "-c", script), ready="notify",
                                                     start_timeout=10.0))
    assert result.ok, result
    assert info(node, "sh").status_line == "up from systemd-notify"
