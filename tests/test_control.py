"""The control socket and the events socket, through otpy.connect(), with real processes and sockets."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from pathlib import Path

import msgspec
import pytest
import zmq

import otpy
from otpy.node.control import MAX_MESSAGE_BYTES
from otpy.wire.protocol import (
    ENCODER, EVENT, FROM_NODE, Counts, GetStatus, Refused, Status, StopNode, Stopping, TerminateChild, WhichChildren,
)
from otpy.host.runtime_dir import control_endpoint, events_endpoint, runtime_root
from tests.helpers import IGNORES_TERM, alive, pids, python, sleeper, unique_name, wait_dead, wait_until

pytestmark = pytest.mark.timeout(30)

TEMPLATE = otpy.ChildSpec(id="t", command=("sleep", "3600"))


def tree(*extra) -> otpy.SupervisorSpec:
    pool = otpy.DynamicSupervisorSpec(id="pool", max_children=2, templates={"sleepy": TEMPLATE})
    return otpy.SupervisorSpec(id="root", children=(sleeper("a"), sleeper("b"), pool, *extra))


@pytest.fixture
def node():
    node = otpy.Node.from_spec(tree(), name=unique_name("ctl")).start()
    yield node
    node.stop()


@pytest.fixture
def client(node):
    with otpy.connect(node.name, timeout=10) as client:
        yield client


def dealer(ctx: zmq.Context, name: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(control_endpoint(name))
    return sock


def reply_of(sock: zmq.Socket, timeout_ms: int = 5000):
    assert sock.poll(timeout_ms), "no reply"
    return FROM_NODE.decode(sock.recv())


def shape(node: otpy.Node) -> list:
    return [(c.id, c.pid, c.state) for sup in ("root", "pool") for c in node.which_children(sup)]


class TestOperations:
    def test_socket_files_are_private(self, node):
        folder = runtime_root() / node.name
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for endpoint in (control_endpoint(node.name), events_endpoint(node.name)):
            path = Path(endpoint.removeprefix("ipc://"))
            assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_which_children_and_count_children(self, node, client):
        assert client.which_children() == node.which_children("root")
        assert [c.id for c in client.which_children("root")] == ["a", "b", "pool"]
        assert client.count_children() == Counts(0, specs=3, active=3, supervisors=1, workers=2)
        assert client.count_children("pool") == Counts(0, specs=0, active=0, supervisors=0, workers=0)
        with pytest.raises(otpy.ControlError, match="no supervisor 'nope'") as info:
            client.which_children("nope")
        assert info.value.kind == "not_found"

    def test_terminate_restart_delete_outcomes(self, node, client):
        old = pids(node)["a"]
        assert client.terminate_child("a") == otpy.Result("ok")
        assert wait_dead([old], 5) == []
        assert client.terminate_child("a").outcome == "ok"  # idempotent
        restarted = client.restart_child("a")
        assert restarted.outcome == "ok" and restarted.pid == pids(node)["a"] != old
        assert client.restart_child("a").outcome == "running"
        assert client.delete_child("a").outcome == "running"
        assert client.terminate_child("a", "root").outcome == "ok"
        assert client.delete_child("a").outcome == "ok"
        assert client.delete_child("a").outcome == "not_found"
        missing = client.terminate_child("x")
        assert missing.outcome == "not_found" and "x" in missing.detail
        assert client.terminate_child("b", "nope").outcome == "not_found"
        assert [c.id for c in client.which_children()] == ["b", "pool"]

    def test_start_child_outcomes(self, node, client):
        started = client.start_child("root", sleeper("c"))
        assert started.outcome == "ok" and alive(started.pid)
        assert client.start_child("root", sleeper("c")) == otpy.Result("already_started", pid=started.pid)
        client.terminate_child("c")
        assert client.start_child("root", sleeper("c")).outcome == "already_present"
        assert client.start_child("nope", sleeper("d")).outcome == "not_found"
        assert client.start_child("root", sleeper("a")).outcome in ("already_started", "invalid")
        invalid = client.start_child("root", otpy.ChildSpec(id="d"))
        assert invalid.outcome == "invalid" and "'program' nor 'command'" in invalid.detail
        failed = client.start_child("root", otpy.ChildSpec(id="e", command=("/no/such/program",)))
        assert failed.outcome == "start_failed"
        assert "e" not in {c.id for c in client.which_children()}

    def test_start_a_supervisor_with_children(self, node, client):
        team = otpy.SupervisorSpec(id="team", children=(sleeper("t1"), sleeper("t2")))
        assert client.start_child("root", team).outcome == "ok"
        assert [c.state for c in client.which_children("team")] == ["running", "running"]
        assert client.count_children().supervisors == 2

    def test_status_is_the_tree(self, node, client):
        status = client.status()
        assert isinstance(status, Status) and status.node == node.name and status.pid == os.getpid()
        root = status.tree
        assert [c.id for c in root.children] == ["a", "b", "pool"]
        a = root.children[0]
        assert a.kind == "worker" and a.state == "running" and a.pid == pids(node)["a"]
        assert a.children is None and a.uptime >= 0
        assert root.children[2].children == []

    def test_request_takes_the_wire_message_in_process_and_through_the_socket(self, node, client):
        for asked in (node.request, client.request):
            status = asked(GetStatus(0))
            assert isinstance(status, Status) and status.tree.state == "running"
            assert asked(TerminateChild(0, "nope", "")).outcome == "not_found"
        assert node.request(GetStatus(42)).request_id == 42  # in-process: the id as given
        assert node.request(StopNode(3)) == Stopping(3, pid=os.getpid(), process_exits=False)
        assert node.aio.stopping and node.request(GetStatus(4)).tree.state == "stopped"  # queries answer

    def test_async_client(self, node):
        async def talk():
            async with otpy.AsyncClient(node.name, timeout=10) as client:
                children = await client.which_children("pool")
                result = await client.start_from_template("pool", "sleepy", "w1")
                return children, result, await client.count_children("pool")

        children, result, counts = asyncio.run(talk())
        assert children == [] and result.outcome == "ok" and counts.active == 1


class TestDynamicSupervisor:
    def test_start_from_spec_and_template_max_children_and_terminate(self, node, client):
        from_template = client.start_from_template("pool", "sleepy", "w1", {"k": 1})
        assert from_template.outcome == "ok" and alive(from_template.pid)
        assert client.start_child("pool", otpy.ChildSpec(id="w2", command=("sleep", "3600"))).outcome == "ok"
        full = client.start_from_template("pool", "sleepy", "w3")
        assert full.outcome == "max_children" and "2" in full.detail
        assert client.count_children("pool") == Counts(0, specs=2, active=2, supervisors=0, workers=2)
        assert client.start_from_template("pool", "nope", "w4").outcome == "not_found"
        assert client.restart_child("w1").outcome == "not_supported"
        assert client.terminate_child("w1").outcome == "ok"
        assert wait_dead([from_template.pid], 5) == []
        assert [c.id for c in client.which_children("pool")] == ["w2"]  # removed, not kept
        assert client.terminate_child("w1", "pool").outcome == "not_found"
        assert client.start_from_template("pool", "sleepy", "w3").outcome == "ok"


class TestStop:
    def test_stop_replies_after_the_tree_stopped_and_closes_the_socket(self, node):
        workers = [p for p in pids(node).values() if p != os.getpid()]
        with otpy.connect(node.name) as client:
            client.start_from_template("pool", "sleepy", "w1")
            result = client.stop()
        assert result.outcome == "ok" and result.pid == os.getpid()
        assert wait_dead(workers, 1) == []
        assert not Path(control_endpoint(node.name).removeprefix("ipc://")).exists()
        with pytest.raises(otpy.NodeNotFound):
            otpy.connect(node.name)


class TestEvents:
    def test_every_event_is_published(self, node, client):
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(events_endpoint(node.name))
        try:
            deadline = time.monotonic() + 10
            seen = []
            while not any(e.kind == "started" and e.child == "a" for e in seen):  # subscription is async
                assert time.monotonic() < deadline, f"no events; seen {seen}"
                client.terminate_child("a")
                client.restart_child("a")
                while sub.poll(100):
                    seen.append(EVENT.decode(sub.recv()))
            started = next(e for e in seen if e.kind == "started" and e.child == "a")
            assert started.node == node.name and started.supervisor == "root" and started.pid == pids(node)["a"]
            assert started.time == pytest.approx(time.time(), abs=10)
        finally:
            sub.close()
            ctx.term()


class TestAbuse:
    def test_malformed_requests_get_error_replies_and_change_nothing(self, node, client):
        before = shape(node)
        ctx = zmq.Context()
        sock = dealer(ctx, node.name)
        try:
            cases = {
                "garbage": [b"\xff\x00garbage"],
                "unknown tag": [msgspec.msgpack.encode({"type": "Nuke", "request_id": 1})],
                "wrong type": [msgspec.msgpack.encode({"type": "TerminateChild", "request_id": 1, "id": 5})],
                "missing field": [msgspec.msgpack.encode({"type": "TerminateChild", "request_id": 1})],
                "a reply sent as request": [ENCODER.encode(Stopping(1, pid=1, process_exits=False))],
                "empty frame": [b""],
                "two frames": [ENCODER.encode(GetStatus(1)), b"extra"],
                "bad spec": [msgspec.msgpack.encode({"type": "StartChild", "request_id": 1, "supervisor": "root",
                                                     "spec": {"type": "worker", "id": 3}})],
            }
            for what, frames in cases.items():
                sock.send_multipart(frames)
                reply = reply_of(sock)
                assert isinstance(reply, Refused) and reply.kind == "bad_request", what
                assert reply.message, what
            sock.send(ENCODER.encode(GetStatus(42)))
            assert isinstance(reply_of(sock), Status)
        finally:
            sock.close()
            ctx.term()
        assert shape(node) == before

    def test_an_oversized_frame_is_dropped_and_the_node_keeps_serving(self, node, client):
        ctx = zmq.Context()
        big = dealer(ctx, node.name)
        try:
            big.send(b"\x00" * (MAX_MESSAGE_BYTES + 1))
            assert big.poll(300) == 0  # zmq dropped it and disconnected the sender: no reply
            assert client.status().tree.state == "running"
        finally:
            big.close()
            ctx.term()

    def test_a_thousand_concurrent_requests_from_several_sockets(self, node, client):
        before = shape(node)
        ctx = zmq.Context()
        sockets = [dealer(ctx, node.name) for _ in range(5)]
        answers: dict[int, list] = {}

        def fire(index: int, sock: zmq.Socket) -> None:
            for i in range(200):
                sock.send(ENCODER.encode(WhichChildren(i + 1, "root")) if i % 3 else b"junk")
            answers[index] = [reply_of(sock, 10000) for _ in range(200)]

        threads = [threading.Thread(target=fire, args=(i, s)) for i, s in enumerate(sockets)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert sorted(answers) == list(range(5))
            for replies in answers.values():
                assert [r.request_id for r in replies if not isinstance(r, Refused)] == \
                    [i + 1 for i in range(200) if i % 3]  # one reply each, in arrival order
                assert sum(isinstance(r, Refused) for r in replies) == len(range(0, 200, 3))
        finally:
            for s in sockets:
                s.close()
            ctx.term()
        assert client.status().tree.state == "running"
        assert shape(node) == before

    def test_requests_are_served_in_arrival_order(self, node, client):
        ctx = zmq.Context()
        sock = dealer(ctx, node.name)
        try:
            from otpy.wire.protocol import TerminateChild

            sock.send(ENCODER.encode(TerminateChild(1, "a")))
            sock.send(ENCODER.encode(WhichChildren(2)))
            first, second = reply_of(sock), reply_of(sock)
            assert (first.request_id, first.outcome) == (1, "ok")
            assert second.request_id == 2 and second.children[0].state == "stopped"
        finally:
            sock.close()
            ctx.term()


class TestErrorsAreNamed:
    """A missing supervisor is a reply; a bug is ``internal``; an unreachable registry is ``unavailable``."""

    def test_a_lookup_error_raised_by_a_bug_is_internal_not_not_found(self, node, client, monkeypatch):
        def broken():
            raise KeyError("a bug")

        monkeypatch.setattr(node.aio.supervisor("root"), "children_info", broken)
        with pytest.raises(otpy.ControlError) as info:
            client.which_children("root")
        assert info.value.kind == "internal" and "KeyError" in str(info.value)
        monkeypatch.undo()
        with pytest.raises(otpy.ControlError) as missing:
            client.which_children("nope")
        assert missing.value.kind == "not_found" and isinstance(missing.value, LookupError)
        assert node.request(WhichChildren(7, "nope")) == Refused(7, "not_found", "no supervisor 'nope'")
        assert client.status().tree.state == "running"  # still serving

    def test_an_unreachable_registry_is_unavailable_not_start_failed(self):
        from otpy.variables.placement import REGISTRY_ID

        root = otpy.SupervisorSpec(id="root", children=(sleeper(REGISTRY_ID),))  # no agent socket: no answer
        with otpy.Node.from_spec(root, name=unique_name("noreg")) as node, \
                otpy.connect(node.name, timeout=10) as client:
            for result in (node.set_variables("pool", {"x": 1}), client.set_variables("pool", {"x": 1})):
                assert result.outcome == "unavailable" and "the registry did not answer" in result.detail, result


@pytest.mark.parametrize("operation", ["terminate_child", "restart_child", "delete_child"])
def test_an_id_that_is_no_name_is_invalid_not_merely_absent(operation):
    """An id arriving alone is checked by the name rule, as ids in specs are: ``../x`` is refused
    as ``invalid`` naming the rule, never looked up as if it could be a child."""
    root = otpy.SupervisorSpec(id="root", children=())
    with otpy.Node.from_spec(root, name=unique_name("ids")) as node:
        for bad in ("../x", "a/b", "", "x" * 65):
            result = getattr(node, operation)(bad)
            assert result.outcome == "invalid" and "id" in result.detail, (bad, result)
        assert getattr(node, operation)("absent").outcome == "not_found"


def test_a_reconfigure_whose_source_is_no_name_is_invalid():
    root = otpy.SupervisorSpec(id="root", children=(otpy.DynamicSupervisorSpec(id="pool"),))
    with otpy.Node.from_spec(root, name=unique_name("ids")) as node:
        target = otpy.ChildSpec(id="../x", command=("true",))
        result = node.reconfigure("pool", "../x", target)
        assert result.outcome == "invalid" and result.detail.startswith("source: id"), result


def test_queries_answer_while_the_node_stops_and_operations_are_refused():
    """OTP's supervisor answers which_children while it terminates its children: the queries tell
    the truth ("stopping", then "stopped"); what would change the tree is refused."""
    slow = otpy.ChildSpec(id="slow", command=python(IGNORES_TERM), ready="notify", shutdown=3.0)
    root = otpy.SupervisorSpec(id="root", children=(slow,))
    node = otpy.Node.from_spec(root, name=unique_name("stopq")).start()
    stopper = threading.Thread(target=node.stop)
    stopper.start()
    try:
        wait_until(lambda: node.aio.stopping, 5.0, "the stop to begin")
        assert node.status().tree.state == "stopping"
        assert [c.id for c in node.which_children()] == ["slow"]
        assert node.count_children().specs == 1
        with pytest.raises(otpy.ControlError, match="stopping"):
            node.start_child("root", sleeper("late"))
    finally:
        stopper.join(20)


def test_every_child_that_arrives_is_checked_for_an_id_in_use():
    """start_child, start_from_template and reconfigure alike: an id already used by another
    child, or by any supervisor, is refused; the running tree stays as it was."""
    echo = otpy.ChildSpec(id="t", command=python(IGNORES_TERM), ready="notify", shutdown=0.5)
    pool = otpy.DynamicSupervisorSpec(id="pool", templates={"t": echo})
    root = otpy.SupervisorSpec(id="root", children=(sleeper("x"), pool))
    with otpy.Node.from_spec(root, name=unique_name("clash")) as node:
        for used in ("root", "pool", "x"):
            assert node.start_from_template("pool", "t", used).outcome == "invalid", used
            assert node.start_child("pool", sleeper(used)).outcome == "invalid", used
        team = otpy.SupervisorSpec(id="team", children=(sleeper("y"),))
        assert node.start_child("pool", team).outcome == "ok"
        x = pids(node)["x"]
        clash = otpy.SupervisorSpec(id="team", children=(sleeper("x"),))
        result = node.reconfigure("pool", "team", clash)
        assert result.outcome == "invalid" and "'x' is already used" in result.detail, result
        again = otpy.SupervisorSpec(id="team", children=(sleeper("y"), sleeper("z")))
        assert node.reconfigure("pool", "team", again).outcome == "ok"  # its own ids may stay
        assert pids(node)["x"] == x


def test_a_registry_that_fails_is_no_invalid_value():
    """The registry answering ``internal`` (its file failed, a bug) is otpy's failure, not the
    user's values: in-process it raises, over the socket it is Refused(internal)."""
    registry = otpy.ChildSpec(id="registry", program="tests.registry_agents:broken_registry")
    root = otpy.SupervisorSpec(id="root", children=(registry,))
    with otpy.Node.from_spec(root, name=unique_name("regfail")) as node:
        with pytest.raises(RuntimeError, match="the registry failed: set_many: OperationalError"):
            node.set_variables("global", {"t": 1.0})
        with otpy.connect(node.name) as client:
            with pytest.raises(otpy.ControlError) as refused:
                client.set_variables("global", {"t": 1.0})
            assert refused.value.kind == "internal"


def test_an_event_of_a_kind_this_version_does_not_know_is_read():
    """Field types never change on the wire (docs/protocol.md): a kind a newer node adds decodes."""
    data = ENCODER.encode({"type": "NodeEvent", "kind": "paused", "node": "n", "supervisor": "root"})
    assert EVENT.decode(data).kind == "paused"


def test_starting_a_started_node_object_again_is_refused_and_it_keeps_running():
    """Before: the second start() raised NodeAlreadyRunning and closed the object's loop, so
    every later operation on it failed with AttributeError while the node served on."""
    with otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=(sleeper("a"),)),
                             name=unique_name("twice")) as node:
        with pytest.raises(otpy.NodeAlreadyRunning, match="this Node object started it"):
            node.start()
        assert [c.state for c in node.which_children()] == ["running"]
