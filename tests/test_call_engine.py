"""The call engine against a fake agent (a ROUTER the test answers by hand): drain notices and
calls refused while draining go to the name's next holder, the same for ``call`` (the calling
thread's engine) and ``submit`` (the I/O thread's)."""

from __future__ import annotations

import concurrent.futures
import os
import threading

import msgspec
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import otpy
from otpy.host.runtime_dir import agent_endpoint, agent_socket_path, make_agents_dir
from otpy.wire.protocol import DRAIN_NOTICE, ENCODER, Call, CallFailed, Reply
from tests.helpers import unique_name

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setenv("OTPY_RUNTIME_DIR", str(tmp_path))
    name = unique_name("fakeagent")
    make_agents_dir(name)
    return name


@pytest.fixture
def holder(node):
    """Binds the agent's name like a process would (a replacement binds the same path);
    ``holder.watch(router)``: a monitor of the router's disconnections (or other ``events``)."""
    context, sockets = zmq.Context(), []

    def bind() -> zmq.Socket:
        router = context.socket(zmq.ROUTER)
        router.linger = 0
        sockets.append(router)
        router.bind(agent_endpoint(node, "agent"))
        return router

    def watch(router: zmq.Socket, events: int = zmq.EVENT_DISCONNECTED) -> zmq.Socket:
        sockets.append(monitor := router.get_monitor_socket(events))
        return monitor

    bind.watch = watch
    yield bind
    for socket in reversed(sockets):
        socket.close(linger=0)
    context.term()


@pytest.fixture(params=["call", "submit"])
def send(request, node):
    """Sends a call the way the parameter says; returns a function that waits for its outputs.
    ``call`` runs on one worker thread, so that every call uses that thread's engine."""
    with otpy.Caller(node) as caller, concurrent.futures.ThreadPoolExecutor(1) as worker:
        if request.param == "call":
            yield lambda inputs: worker.submit(caller.call, "agent", inputs, timeout=10).result
        else:
            yield lambda inputs: (lambda future: (lambda: future.result(10)))(
                caller.submit("agent", inputs, timeout=10))


def take(router: zmq.Socket) -> tuple[bytes, Call]:
    assert router.poll(5000), "no call came"
    peer, payload = router.recv_multipart()
    return peer, msgspec.msgpack.decode(payload, type=Call)


def answer(router: zmq.Socket, peer: bytes, message) -> None:
    router.send_multipart([peer, ENCODER.encode(message)])


def test_a_call_refused_while_draining_goes_once_to_the_next_holder(holder, send):
    first = holder()
    result = send({"n": 1})
    peer, call = take(first)
    second = holder()  # the replacement has the name now
    answer(first, peer, CallFailed(call_id=DRAIN_NOTICE, kind="draining"))
    answer(first, peer, CallFailed(call_id=call.call_id, kind="draining"))
    peer, again = take(second)
    assert again == call  # the same call: it did not run
    answer(second, peer, Reply(call_id=again.call_id, outputs={"by": "second"}))
    assert result() == {"by": "second"}
    assert not first.poll(200)


def test_after_a_drain_notice_the_call_on_the_old_link_is_answered_and_the_next_goes_on(holder, send):
    first = holder()
    result = send({"n": 1})
    peer, call = take(first)
    second = holder()
    answer(first, peer, CallFailed(call_id=DRAIN_NOTICE, kind="draining"))
    answer(first, peer, Reply(call_id=call.call_id + 1000, outputs={"stale": True}))  # nobody's: dropped
    answer(first, peer, Reply(call_id=call.call_id, outputs={"by": "first"}))
    assert result() == {"by": "first"}
    result = send({"n": 2})
    peer, call = take(second)
    assert call.inputs == {"n": 2}
    answer(second, peer, Reply(call_id=call.call_id, outputs={"by": "second"}))
    assert result() == {"by": "second"}
    assert not first.poll(200)


def test_every_connection_a_drain_notice_replaced_is_closed(holder, send):
    """Before: a notice read just before the next call moved the name to a new connection, but
    the old one stayed open (nothing more came on it to retire it): a DEALER and its monitor
    left per drain for as long as the thread (``call``) lived. A chain of holders: each one
    answers a call, then sends its notice; the next call reaches the next holder (at once, or
    after a ``draining`` answer if it went out before the notice was read)."""
    current = holder()
    result = send({"n": 0})
    for n in range(1, 8):
        watch = holder.watch(current)
        peer, call = take(current)
        answer(current, peer, Reply(call_id=call.call_id, outputs={"n": call.inputs["n"]}))
        assert result() == {"n": n - 1}
        following = holder()
        answer(current, peer, CallFailed(call_id=DRAIN_NOTICE, kind="draining"))
        result = send({"n": n})
        if current.poll(500):  # sent before the notice was read: refused, so resent
            peer, late = take(current)
            answer(current, peer, CallFailed(call_id=late.call_id, kind="draining"))
        assert watch.poll(5000), f"holder {n - 1}'s connection was never closed"
        assert recv_monitor_message(watch)["event"] == zmq.EVENT_DISCONNECTED
        current = following
    peer, call = take(current)
    answer(current, peer, Reply(call_id=call.call_id, outputs={"n": call.inputs["n"]}))
    assert result() == {"n": 7}


def test_close_with_a_call_still_on_a_replaced_connection_returns(node, holder):
    """Before: the I/O thread closed only each agent's current connection; one a drain notice
    had replaced, with a call still on it, stayed open and ``close`` hung in ``Context.term``."""
    first = holder()
    caller = otpy.Caller(node)
    future = caller.submit("agent", {}, timeout=20)
    peer, _ = take(first)
    second = holder()
    accepted = holder.watch(second, zmq.EVENT_ACCEPTED)
    answer(first, peer, CallFailed(call_id=DRAIN_NOTICE, kind="draining"))
    assert accepted.poll(5000), "the notice did not move the name to a new connection"
    closing = threading.Thread(target=caller.close, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "close hung"
    with pytest.raises(otpy.CallError, match="closed"):
        future.result(1)


def test_a_failure_of_the_agent_is_its_calls_error(holder, send):
    router = holder()
    result = send({})
    peer, call = take(router)
    answer(router, peer, CallFailed(call_id=call.call_id, kind="raised", error_type="KeyError", message="'x'"))
    with pytest.raises(otpy.RemoteError, match="KeyError"):
        result()


def test_a_call_refused_while_draining_waits_for_the_next_holder_and_goes_once(holder, send):
    """Before: the refused call was resent at once on a new connection to the same path, where
    the draining agent was still bound: refused again, in a tight loop (over a thousand times a
    second) until the caller's timeout, which kept the draining agent from ever going quiet."""
    first = holder()
    result = send({"n": 1})
    peer, call = take(first)
    answer(first, peer, CallFailed(call_id=call.call_id, kind="draining"))
    assert not first.poll(300), "a call refused while draining was sent again to the draining holder"
    second = holder()  # the next holder binds the name
    peer, again = take(second)
    assert again == call  # the same call: it did not run
    answer(second, peer, Reply(call_id=again.call_id, outputs={"by": "second"}))
    assert result() == {"by": "second"}
    assert not first.poll(100)


def test_calls_to_a_draining_holder_that_no_one_replaces_time_out_refused_once(node, holder):
    """The reviewer's probe: an agent that refuses every call ``draining`` and is never replaced
    (an agent being deleted): each call is refused once, then waits out its own timeout."""
    router = holder()
    stop, refused = threading.Event(), []

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                peer, payload = router.recv_multipart()
                refused.append(msgspec.msgpack.decode(payload, type=Call).call_id)
                answer(router, peer, CallFailed(call_id=refused[-1], kind="draining"))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        with otpy.Caller(node) as caller:
            with pytest.raises(otpy.CallTimeout):
                caller.call("agent", {}, timeout=1.0)
            with pytest.raises(otpy.CallTimeout):
                caller.submit("agent", {}, timeout=1.0).result(10)
    finally:
        stop.set()
        server.join()
    assert len(refused) == 2, f"{len(refused)} refusals for two calls"


@pytest.mark.parametrize("how", ["call", "submit"])
def test_calls_to_an_agent_that_is_down_never_block_the_caller(node, how):
    """Before: calls to an agent that is down queue in its DEALER; at ~1000 its send blocked for
    good: the I/O thread froze (futures never ended, calls to other agents hung, ``close`` hung),
    and ``call(timeout=0.001)`` never returned. Now each call ends by its timeout, or at once
    with ``Overloaded`` while the queue is full of calls still waiting."""
    for agent in ("down", "other"):
        agent_socket_path(node, agent).touch()  # seen, nobody bound (a child being restarted)
    caller = otpy.Caller(node)
    if how == "submit":
        futures = [caller.submit("down", {}, timeout=0.5) for _ in range(1100)]
        concurrent.futures.wait(futures, timeout=20)
        assert all(future.done() for future in futures), "calls to an agent that is down never ended"
        assert {type(future.exception()) for future in futures} <= {otpy.CallTimeout, otpy.Overloaded}
        with pytest.raises(otpy.CallTimeout):
            caller.submit("other", {}, timeout=0.2).result(10)
    else:
        for _ in range(1100):  # each times out; its message stays queued for the next holder
            with pytest.raises(otpy.CallTimeout):
                caller.call("down", {}, timeout=0.001)
        ended = threading.Event()
        threading.Thread(target=lambda: (pytest.raises(otpy.CallTimeout, caller.call, "down", {},
                                                       timeout=0.2), ended.set()), daemon=True).start()
        assert ended.wait(10), "a call to an agent that is down blocked in its send"
    closing = threading.Thread(target=caller.close, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "close hung"


def test_close_from_another_thread_wakes_a_waiting_call_with_call_error(node, holder):
    """Before: ``close`` closed the sockets the waiting thread polled (ZeroMQ sockets are not
    thread safe): the call got ``ZMQError('Socket operation on non-socket')``."""
    router = holder()
    caller = otpy.Caller(node)
    got = []

    def one() -> None:
        try:
            got.append(caller.call("agent", {}, timeout=20))
        except BaseException as exc:
            got.append(exc)

    waiting = threading.Thread(target=one, daemon=True)
    waiting.start()
    take(router)  # the call is out: its thread waits for the reply
    closing = threading.Thread(target=caller.close, daemon=True)
    closing.start()
    closing.join(10)
    waiting.join(10)
    assert not closing.is_alive() and not waiting.is_alive(), "close or the call hung"
    assert isinstance(got[0], otpy.CallError) and "closed" in str(got[0]), repr(got[0])


def test_the_engines_of_threads_that_ended_are_closed(node, holder):
    """Before: each thread that used ``call`` kept its engine (a DEALER and its monitor per
    agent) until ``close``: 100 short-lived threads, 500 more file descriptors."""
    router = holder()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if router.poll(50):
                peer, call = take(router)
                answer(router, peer, Reply(call_id=call.call_id, outputs={}))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    caller = otpy.Caller(node)
    try:
        caller.call("agent", {})
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(100):
            thread = threading.Thread(target=caller.call, args=("agent", {}))
            thread.start()
            thread.join()
        assert len(os.listdir("/proc/self/fd")) - before < 20
        assert len(caller._own_engines) <= 2
    finally:
        stop.set()
        server.join()
        caller.close()


def test_each_caller_has_its_own_complaints():
    """Before: one module-level rate limiter for every caller of the process."""
    first, second = otpy.Caller("a"), otpy.Caller("b")
    try:
        assert first._complain is not second._complain
    finally:
        first.close()
        second.close()
