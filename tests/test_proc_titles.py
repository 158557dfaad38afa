"""Every otpy process says what it is in ``ps`` and ``top``: ``otpy: NODE/ID`` for a program
child, ``otpy: NODE spare`` and ``otpy: NODE zygote``; ``comm`` (``top``'s default column,
15 bytes) is the child's id, ``otpy-spare``, ``otpy-zygote``. The title must not cost the
process its ``/proc/PID/environ``: the sweeps by run id read it."""

from __future__ import annotations

import psutil
import pytest

import otpy
from otpy.agent.bootstrap import SPARE_NAME
from otpy.host.node_run import RUN_VAR
from otpy.specs.model import NAME_MAX
from tests.helpers import python, SLEEPER, unique_name, wait_until

pytestmark = pytest.mark.timeout(60)

LONG_ID = "a-rather-long-child-id-" + "x" * 9  # longer than comm's 15 bytes, short enough for a socket path
LONGEST_TITLE = len(f"otpy: {'n' * NAME_MAX}/{'i' * NAME_MAX}")  # the longest node name and id


@pytest.fixture
def node():
    root = otpy.SupervisorSpec(id="root", children=(otpy.DynamicSupervisorSpec(id="pool"),))
    node = otpy.Node.from_spec(root, name=unique_name("titles")).start()
    yield node
    node.stop()


def cmdline(pid: int) -> str:
    """What ``ps -o args`` shows: ``/proc/PID/cmdline`` with its NULs as spaces, trimmed."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().rstrip("\n")


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(e.decode().partition("=")[::2] for e in f.read().split(b"\0") if b"=" in e)


def start(node: otpy.Node, id: str, **fields) -> int:
    result = node.start_child("pool", otpy.ChildSpec(id=id, **fields))
    assert result.ok, result
    return result.pid


def zygote_of(node: otpy.Node) -> int:
    [z] = [p.pid for p in psutil.Process().children() if _node_of(p) == node.name]
    return z


def _node_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get("OTPY_NODE")
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return None


def test_a_program_child_shows_its_node_and_id(node):
    forked = start(node, "greeter", program="agents:Sleeper")  # forked on request
    warm = start(node, LONG_ID, program="agents:Sleeper")  # through the spare
    assert cmdline(forked) == f"otpy: {node.name}/greeter"
    assert cmdline(warm) == f"otpy: {node.name}/{LONG_ID}"  # whole, however long
    assert comm(forked) == "greeter" and comm(warm) == LONG_ID[:15]


def test_the_zygote_and_the_spare_show_what_they_are(node):
    start(node, "greeter", program="agents:Sleeper")
    zygote = zygote_of(node)
    assert cmdline(zygote) == f"otpy: {node.name} zygote" and comm(zygote) == "otpy-zygote"
    spare = wait_until(lambda: [c.pid for c in psutil.Process(zygote).children()
                                if cmdline(c.pid) == f"otpy: {node.name} spare"], what="the spare")
    assert [comm(pid) for pid in spare] == [SPARE_NAME]


def test_the_zygote_keeps_room_for_the_longest_title(node):
    """A title is written over the zygote's argv (its environment is left alone): a forked child
    has that room, so the zygote starts with enough of it."""
    with open(f"/proc/{zygote_of(node)}/cmdline", "rb") as f:
        assert len(f.read()) > LONGEST_TITLE


def test_titles_leave_proc_environ_intact(node):
    """The sweep by run id (``host.node_run``) finds a node's processes by their environment."""
    child = start(node, "greeter", program="agents:Sleeper")
    zygote = zygote_of(node)
    assert cmdline(child).startswith("otpy: ")
    for pid in (zygote, child):
        assert environ(pid).get("OTPY_NODE") == node.name and environ(pid).get(RUN_VAR)


def test_a_command_child_shows_its_own_command(node):
    pid = start(node, "cmd", command=python(SLEEPER), ready="notify")
    assert cmdline(pid).endswith("time.sleep(3600)")  # exec replaced the title with its argv
