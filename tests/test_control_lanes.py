"""Control requests in per-supervisor lanes, the registry's quick return, private agent sockets."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest
import zmq

import otpy
from otpy.wire.protocol import ENCODER, FROM_NODE, Children, GetStatus, Outcome, Status, TerminateChild, WhichChildren
from otpy.host.runtime_dir import agent_socket_path
from tests.helpers import IGNORES_TERM, Events, pids, python, sleeper, unique_name

pytestmark = pytest.mark.timeout(60)


def timed_reply(sock: zmq.Socket, timeout_s: float = 10.0):
    """The next reply and how long it took from now."""
    started = time.monotonic()
    assert sock.poll(int(timeout_s * 1000)), "no reply"
    return FROM_NODE.decode(sock.recv()), time.monotonic() - started


def test_a_slow_terminate_under_one_supervisor_delays_neither_another_supervisor_nor_status(control_dealers):
    stubborn = otpy.ChildSpec(id="stubborn", command=python(IGNORES_TERM), ready="notify", shutdown=3.0)
    a = otpy.SupervisorSpec(id="A", children=(stubborn,))
    b = otpy.SupervisorSpec(id="B", children=(sleeper("b1"),))
    with otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=(a, b)), name=unique_name("lanes")) as node:
        slow, other, status = (control_dealers(node.name) for _ in range(3))
        started = time.monotonic()
        slow.send(ENCODER.encode(TerminateChild(1, "stubborn", "A")))
        slow.send(ENCODER.encode(WhichChildren(2, "A")))  # same supervisor, same socket: after the terminate
        time.sleep(0.2)  # the terminate is under way (SIGTERM sent, ignored)
        other.send(ENCODER.encode(WhichChildren(3, "B")))
        status.send(ENCODER.encode(GetStatus(4)))
        children, took_b = timed_reply(other)
        tree, took_status = timed_reply(status)
        assert isinstance(children, Children) and [c.id for c in children.children] == ["b1"]
        assert isinstance(tree, Status)
        assert took_b < 0.5 and took_status < 0.5, (took_b, took_status)
        done, _ = timed_reply(slow)
        assert isinstance(done, Outcome) and done.outcome == "ok"
        assert time.monotonic() - started > 2.5  # it did wait out the shutdown time
        after, _ = timed_reply(slow)
        assert isinstance(after, Children) and after.children[0].state == "stopped"  # arrival order kept


def test_requests_to_one_supervisor_keep_their_order(control_dealers):
    root = otpy.SupervisorSpec(id="root", children=(sleeper("x"), sleeper("y")))
    with otpy.Node.from_spec(root, name=unique_name("order")) as node:
        sock = control_dealers(node.name)
        for request_id, child in enumerate(("x", "y"), start=1):
            sock.send(ENCODER.encode(TerminateChild(request_id, child)))
        sock.send(ENCODER.encode(WhichChildren(3)))
        replies = [timed_reply(sock)[0] for _ in range(3)]
        assert [r.request_id for r in replies] == [1, 2, 3]
        assert [c.state for c in replies[2].children] == ["stopped", "stopped"]


def test_agent_sockets_are_private_whatever_the_umask():
    """Both ways a program child gets its socket: bound on request (the first start) and the
    spare's, renamed into place (the restart)."""
    old = os.umask(0)
    try:
        spec = otpy.ChildSpec(id="agent", program="tests.call_agents:Echo")
        with otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=(spec,)), name=unique_name("umask")) as node:
            events = Events(node)
            path = agent_socket_path(node.name, "agent")
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            first = node.call("agent")["pid"]
            os.kill(first, signal.SIGKILL)
            events.wait("started", "agent")
            assert node.call("agent", retries=3)["pid"] != first
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


REGISTRY_TOPOLOGY = """[node]
name = "{name}"

[supervisor]

[[supervisor.children]]
id = "hooked"
program = "tests.registry_agents:Shows"

[[supervisor.children]]
id = "plain"
program = "tests.registry_agents:ShowsNoHook"

[variables.global]
temperature = {{ type = "float", low = 0.0, high = 2.0, default = 1.0 }}
"""


@pytest.mark.parametrize("gap_s", [0.0, 0.003, 0.02])
def test_the_registry_is_back_quickly_when_it_dies_while_a_sibling_restarts(tmp_path, gap_s):
    """A sibling restarts and waits for its configuration; the registry dies meanwhile. Before:
    the sibling waited out its resolve timeout (2 x 5 s) while the registry's restart waited
    behind it in the supervisor's inbox. Default intensity (3 restarts in 5 s) still holds."""
    name = unique_name("regstall")
    path = tmp_path / "topology.toml"
    path.write_text(REGISTRY_TOPOLOGY.format(name=name))
    with otpy.Node.from_toml(path) as node:
        events = Events(node)
        before = pids(node)
        os.kill(before["hooked"], signal.SIGKILL)
        if gap_s:
            time.sleep(gap_s)
        died = time.monotonic()
        os.kill(before["registry"], signal.SIGKILL)
        events.wait("started", "registry", timeout=15)
        back = time.monotonic() - died
        events.wait("started", "hooked", timeout=15)
        assert node.call("hooked", retries=3)["config"] == {"temperature": 1.0}
        assert node.status().tree.state == "running"
        print(f"registry back in {back * 1000:.1f} ms")
        # Before: back after the sibling's resolve timeout (2 x 5 s). Bounded well under one
        # timeout, not by a speed: a loaded machine takes its time, a stall takes >= 5 s.
        assert back < 2.5, f"the registry was back {back:.3f} s after its death"


def test_a_stop_answers_every_request_in_flight_or_queued_exactly_once(control_dealers):
    """A slow terminate in flight under A, a request queued behind it, one under B: a StopNode
    from another client ends them all, each with one reply, and the Stopping comes last."""
    stubborn = otpy.ChildSpec(id="stubborn", command=python(IGNORES_TERM), ready="notify", shutdown=2.0)
    a = otpy.SupervisorSpec(id="A", children=(stubborn, sleeper("a2")))
    b = otpy.SupervisorSpec(id="B", children=(sleeper("b1"),))
    node = otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=(a, b)), name=unique_name("stopall")).start()
    try:
        from otpy.wire.protocol import StopNode, Stopping

        client, stopper = control_dealers(node.name), control_dealers(node.name)
        client.send(ENCODER.encode(TerminateChild(1, "stubborn", "A")))
        client.send(ENCODER.encode(TerminateChild(2, "a2", "A")))  # queued in A's lane
        time.sleep(0.2)
        stopper.send(ENCODER.encode(StopNode(3)))
        replies = [timed_reply(client, 15)[0] for _ in range(2)]
        stopped, _ = timed_reply(stopper, 15)
        assert sorted(r.request_id for r in replies) == [1, 2]
        assert isinstance(stopped, Stopping)
        assert not client.poll(300)  # nothing more: one reply each
    finally:
        node.stop()
