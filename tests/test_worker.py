"""The worker's parts as objects: its ``Shutdown``, its ``CallServer``'s typed items, the
node's caller it hands to its program (no module state in a child: each test makes its own)."""

from __future__ import annotations

import select
import signal
import threading

import pytest
import zmq

import otpy
from otpy.agent.call_server import CallJob, CallServer, NewConfig
from otpy.agent.program import NodeCaller, Program
from otpy.agent.shutdown import Shutdown
from tests.helpers import unique_name

pytestmark = pytest.mark.timeout(60)


def test_sigterm_after_a_config_restart_request_ends_as_a_shutdown():
    shutdown = Shutdown()
    assert not shutdown.requested
    shutdown.request_config_restart()
    assert (shutdown.requested, shutdown.for_new_config) == (True, True)
    assert select.select([shutdown.fd], [], [], 5.0)[0] == [shutdown.fd]  # the loop wakes
    shutdown.drain()
    assert select.select([shutdown.fd], [], [], 0)[0] == []
    before = signal.getsignal(signal.SIGTERM)
    try:
        shutdown._on_sigterm(signal.SIGTERM, None)
        assert (shutdown.requested, shutdown.for_new_config) == (True, False)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # teardown runs once
    finally:
        signal.signal(signal.SIGTERM, before)


def test_two_shutdowns_share_nothing():
    first, second = Shutdown(), Shutdown()
    first.request_config_restart()
    assert not second.requested and not second.for_new_config


class Recorder(Program):
    def __init__(self) -> None:
        self.configs: list[dict] = []
        self.got = threading.Event()

    def on_config(self, config):
        self.configs.append(config)
        self.got.set()


def test_a_new_config_is_its_own_item_for_the_call_threads():
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(f"inproc://{unique_name('server')}")
    program = Recorder()
    try:
        server = CallServer(program, context, router, Shutdown(), concurrency=2, max_queue=1)  # the call threads' path
        server.new_config({"temperature": 0.3})
        assert program.got.wait(5.0)
        assert program.configs == [{"temperature": 0.3}]
        assert server.taken == 0  # no call was counted
    finally:
        router.close(linger=0)
        context.term()


def test_call_items_match_by_kind():
    match NewConfig({"a": 1}):
        case CallJob():
            pytest.fail("a config is no call")
        case NewConfig(config):
            assert config == {"a": 1}


def test_a_program_no_worker_runs_cannot_call(monkeypatch):
    monkeypatch.delenv("OTPY_NODE", raising=False)
    with pytest.raises(RuntimeError, match="run by an otpy node"):
        Program().call("echo")


def test_a_program_made_inside_an_agent_can_call_too():
    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="echo", program="tests.agents:Echo"),
        otpy.ChildSpec(id="outer", program="tests.agents:CallsThroughASubProgram"),
    ))
    with otpy.Node.from_spec(root, name=unique_name("worker")) as node:
        assert node.call("outer", {"x": 2}, timeout=5.0) == {"x": 2}


def test_the_node_caller_is_handed_to_programs_only():
    caller = NodeCaller("some-node")
    program, plain = Program(), object()
    caller.hand_to(program)
    caller.hand_to(plain)  # the registry is no Program: nothing to hand
    assert program._otpy_node_caller is caller
    assert Program()._otpy_node_caller is None  # each program its own: nothing shared


def test_program_call_works_from_setup_and_forward():
    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="echo", program="tests.agents:Echo"),
        otpy.ChildSpec(id="caller", program="tests.agents:CallsInSetup", args={"target": "echo"}),
    ))
    with otpy.Node.from_spec(root, name=unique_name("worker")) as node:
        assert node.call("caller", {"x": 1}, timeout=5.0) == {
            "in_setup": {"from": "setup"}, "in_forward": {"x": 1}}


def test_the_caller_a_sub_program_made_for_itself_is_closed_with_it(tmp_path, monkeypatch):
    """Before: a Program made inside an agent (a sub-program, one per request, DSPy style) made
    its own caller that nothing closed: one eventfd (and its sockets) left per sub-program."""
    import gc
    import os

    import msgspec

    from otpy.host.runtime_dir import agent_endpoint, make_agents_dir
    from otpy.wire.protocol import ENCODER, Call, Reply

    monkeypatch.setenv("OTPY_RUNTIME_DIR", str(tmp_path))
    node = unique_name("subprogram")
    make_agents_dir(node)
    monkeypatch.setenv("OTPY_NODE", node)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(agent_endpoint(node, "agent"))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                peer, payload = router.recv_multipart()
                call = msgspec.msgpack.decode(payload, type=Call)
                router.send_multipart([peer, ENCODER.encode(Reply(call_id=call.call_id, outputs={}))])

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        Program().call("agent", {})
        gc.collect()
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(50):  # one forward each: a fresh sub-program calls once
            assert Program().call("agent", {}) == {}
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) - before < 10
    finally:
        stop.set()
        server.join()
        router.close()
        context.term()
