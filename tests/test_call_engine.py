"""The call engine against a fake agent (a ROUTER the test answers by hand): drain notices and
calls refused while draining go to the name's next holder, the same for ``call`` (the calling
thread's engine) and ``submit`` (the I/O thread's)."""

from __future__ import annotations

import concurrent.futures
import threading

import msgspec
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import otpy
from otpy.host.runtime_dir import agent_endpoint, make_agents_dir
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
