"""An agent's socket under calls that cost far more to take than to send: a message of too
many frames, a call over the size limit, a call of millions of containers. Each is refused
with ``bad_request`` (or, over ZMQ_MAXMSGSIZE, dropped by ZeroMQ), fast, and the agent answers on."""

from __future__ import annotations

import threading
import time

import msgspec
import psutil
import pytest
import zmq

import otpy
from otpy.wire.protocol import FROM_AGENT, CallFailed
from otpy.host.runtime_dir import agent_endpoint
from otpy.wire.codec import MAX_CALL_BYTES, MAX_CALL_ITEMS
from tests.helpers import unique_name
from tests.test_wire_hostile import raw_map

pytestmark = pytest.mark.timeout(90)

E = msgspec.msgpack.encode


@pytest.fixture(scope="module")
def node():
    root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="echo", program="tests.call_agents:Echo"),))
    with otpy.Node.from_spec(root, name=unique_name("callcost")) as node:
        yield node


@pytest.fixture
def dealer(node):
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger, sock.sndhwm = 0, 0
    sock.connect(agent_endpoint(node.name, "echo"))
    yield sock
    sock.close(linger=0)
    context.term()


def answer(sock: zmq.Socket, timeout_s: float = 10.0):
    assert sock.poll(int(timeout_s * 1000)), "no reply"
    return FROM_AGENT.decode(sock.recv())


def call_bytes(call_id: int, x: bytes) -> bytes:
    return raw_map(type=E("Call"), call_id=E(call_id), inputs=raw_map(x=x))


@pytest.mark.parametrize("frames", [2, 3, 100_000])
def test_a_message_that_is_not_one_frame_gets_bad_request(node, dealer, frames):
    """Before: dropped without a word; its sender waited for its timeout."""
    dealer.send_multipart([call_bytes(9, E(1))] + [b""] * (frames - 1))
    refused = answer(dealer)
    assert isinstance(refused, CallFailed) and refused.kind == "bad_request", refused
    assert refused.call_id == 9 and f"got {frames}" in refused.message
    assert node.call("echo", {"a": 1})["a"] == 1


def test_a_call_of_too_many_containers_is_refused_fast_and_memory_comes_back(node, dealer):
    """Before: 8M ``[]`` (7.6 MiB) held the agent's loop 4.4 s and kept ~600 MiB of its RSS."""
    pid = node.call("echo")["pid"]
    agent = psutil.Process(pid)
    base = agent.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], agent.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    count = 8_000_000
    started = time.monotonic()
    dealer.send(call_bytes(5, b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count))
    refused = answer(dealer)
    took = time.monotonic() - started
    done.set()
    sampler.join()
    after = agent.memory_info().rss
    print(f"refused in {took:.3f} s; agent RSS {base / 2**20:.0f} MiB, peak {peak[0] / 2**20:.0f}, "
          f"after {after / 2**20:.0f}")
    assert isinstance(refused, CallFailed) and (refused.call_id, refused.kind) == (5, "bad_request"), refused
    assert f"more than {MAX_CALL_ITEMS}" in refused.message
    assert took < 2.0, took
    assert (peak[0] - base) / 2**20 < 100
    assert (after - base) / 2**20 < 40
    assert node.call("echo")["pid"] == pid


def test_a_call_over_the_size_limit_is_refused_at_the_caller(node):
    with pytest.raises(otpy.Unencodable, match=str(MAX_CALL_BYTES)):
        node.call("echo", {"x": b"\0" * MAX_CALL_BYTES})


def test_a_frame_over_the_size_limit_never_reaches_the_agent(node, dealer):
    """ZMQ_MAXMSGSIZE: ZeroMQ drops it and disconnects its sender; the agent answers others."""
    pid = node.call("echo")["pid"]
    dealer.send(call_bytes(6, b"\xc6" + (MAX_CALL_BYTES + 1).to_bytes(4, "big") + b"\0" * (MAX_CALL_BYTES + 1)))
    assert not dealer.poll(500)
    assert node.call("echo")["pid"] == pid
