"""A node under a low descriptor limit survives any number of connections to its control
sockets (ipc and the CURVE TCP port) and to its agents' sockets, and keeps serving and
restarting children.

Before: libzmq 4.3.5 aborted the node at EMFILE in the ipc accept path
(``Too many open files (src/ipc_listener.cpp:297)``); a TCP flood left it without descriptors.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

import otpy
from otpy.host.runtime_dir import agent_socket_path, control_endpoint, events_endpoint
from tests.helpers import free_node_port, unique_name

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FD_LIMIT = 1024  # as in the issue (ulimit -n 1024)
ECHO = 1  # the registry (the topology has [variables]) is the root's first child, echo the second


free_port = free_node_port  # the node binds P, P+1 (calls) and P+2 (events)


@pytest.fixture
def node(tmp_path):
    """A node (``otpy start``) in a subprocess whose RLIMIT_NOFILE is 1024, with a TCP endpoint."""
    name, port = unique_name("fds"), free_port()
    topology = tmp_path / "topology.toml"
    topology.write_text(f'[node]\nname = "{name}"\ncontrol_tcp = "tcp://127.0.0.1:{port}"\n\n'
                        '[supervisor]\nmax_restarts = 100\n\n'
                        '[[supervisor.children]]\nid = "echo"\nprogram = "tests.call_agents:Echo"\n\n'
                        '[variables.global]\nt = { type = "float", low = 0.0, high = 2.0, default = 1.0 }\n')

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    log = tmp_path / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", str(topology)], cwd=ROOT,
                                preexec_fn=low_limit, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _answers(name):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield name, port, proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answers(name: str) -> bool:
    try:
        with otpy.connect(name, timeout=2) as client:
            return client.status().tree.state == "running"
    except Exception:
        return False


def flood(address, family: int, count: int) -> list[socket.socket]:
    """``count`` idle connections (each retried while refused: an attacker that insists)."""
    held = []
    for _ in range(count):
        for _ in range(200):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(1)
            try:
                s.connect(address)
                held.append(s)
                break
            except OSError:
                s.close()
                time.sleep(0.01)
        else:
            return held  # refused for 2 s: the listener is gone for good (the node died)
    return held


def children(name: str, deadline: float) -> list:
    """The root's children, asked again while unanswered: a request in flight when a flood's
    connections fill the cap is lost with every other connection (``wire.connections``; the
    client's socket reconnects by itself), so one request may go unanswered; a node that never
    answers before ``deadline`` fails the test."""
    while True:
        try:
            with otpy.connect(name, timeout=5) as client:
                assert client.status().tree.state == "running"
                return client.which_children()
        except TimeoutError:
            assert time.monotonic() < deadline, f"node {name!r} stopped answering"


def assert_serves_and_restarts(name: str) -> None:
    deadline = time.monotonic() + 30  # serving is the point; a loaded machine is slow to drain 2000 peers
    old = children(name, deadline)[ECHO].pid
    os.kill(old, signal.SIGKILL)
    while True:
        child = children(name, deadline)[ECHO]
        if child.state == "running" and child.pid not in (None, old):
            return
        assert time.monotonic() < deadline, f"echo not restarted: {child}"
        time.sleep(0.05)


def registry_pid(name: str) -> int:
    with otpy.connect(name, timeout=10) as client:
        registry = client.which_children()[0]
    assert registry.id == "registry" and registry.state == "running"
    return registry.pid


@pytest.mark.parametrize("where", ["ipc", "tcp", "events", "agent", "registry-events"])
def test_a_connection_flood_under_a_low_fd_limit_leaves_the_node_serving(node, where):
    name, port, proc, log = node
    if where == "ipc":
        held = flood(control_endpoint(name).removeprefix("ipc://"), socket.AF_UNIX, 2000)
    elif where == "tcp":
        held = flood(("127.0.0.1", port), socket.AF_INET, 2000)
    elif where == "events":
        held = flood(events_endpoint(name).removeprefix("ipc://"), socket.AF_UNIX, 2000)
    elif where == "registry-events":  # the registry's PUB: before, the registry aborted at EMFILE
        pid = registry_pid(name)
        held = flood(os.path.join(os.path.dirname(control_endpoint(name).removeprefix("ipc://")),
                                  "registry-events.sock"), socket.AF_UNIX, 2000)
        assert registry_pid(name) == pid, log.read_text()[-2000:]
    else:  # the agent's socket: before, the agent aborted at EMFILE, again and again
        with otpy.Caller(name) as caller:
            pid = caller.call("echo", timeout=10)["pid"]
            held = flood(str(agent_socket_path(name, "echo")), socket.AF_UNIX, 2000)
            assert caller.call("echo", timeout=10, retries=3)["pid"] == pid  # the same process
        assert "SIGABRT" not in log.read_text()
    try:
        assert proc.poll() is None, log.read_text()[-2000:]
        assert len(os.listdir(f"/proc/{proc.pid}/fd")) < FD_LIMIT // 2
        assert_serves_and_restarts(name)
    finally:
        for s in held:
            s.close()
    assert_serves_and_restarts(name)
    assert proc.poll() is None
