"""Control messages that cost far more to take than to send: a million empty frames, a 1 MiB
request of 500k ``[[]]``. Each is refused on its frames or bytes, before it is decoded, and
the node answers ``status`` meanwhile."""

from __future__ import annotations

import threading
import time

import msgspec
import psutil
import pytest
import zmq

import otpy
from otpy.node.control_lanes import MAX_CONTROL_ITEMS
from otpy.wire.protocol import ENCODER, FROM_NODE, GetStatus, Outcome, Refused, Status, TerminateChild, WhichChildren
from tests.helpers import sleeper, unique_name
from tests.test_wire_hostile import raw_map

pytestmark = pytest.mark.timeout(90)

E = msgspec.msgpack.encode


@pytest.fixture(scope="module")
def node():
    root = otpy.SupervisorSpec(id="root", children=(sleeper("s"),))
    with otpy.Node.from_spec(root, name=unique_name("ctlcost")) as node:
        yield node


def answer(sock: zmq.Socket, timeout_s: float = 30.0):
    assert sock.poll(int(timeout_s * 1000)), "no reply"
    return FROM_NODE.decode(sock.recv())


def timed_status(sock: zmq.Socket, request_id: int) -> float:
    started = time.monotonic()
    sock.send(ENCODER.encode(GetStatus(request_id)))
    assert isinstance(answer(sock), Status)
    return time.monotonic() - started


def heavy_request(containers: int) -> bytes:
    """A StartFromTemplate of ~1 MiB whose args hold ``containers`` // 2 ``[[]]``."""
    pairs = containers // 2
    return raw_map(type=E("StartFromTemplate"), request_id=b"\x07", supervisor=E("root"), template=E("nope"),
                   id=E("zz"), args=raw_map(x=b"\xdd" + pairs.to_bytes(4, "big") + b"\x91\x90" * pairs))


def test_a_message_of_many_empty_frames_is_refused_at_once(node, control_dealers):
    """Before: one awaited recv per frame, ~80 us each; 100k empty frames held the node 8.6 s."""
    flood, other = control_dealers(node.name), control_dealers(node.name)
    started = time.monotonic()
    flood.send_multipart([b""] * 200_000)
    refused = answer(flood)
    took = time.monotonic() - started
    assert isinstance(refused, Refused) and refused.kind == "bad_request", refused
    assert "got 200000" in refused.message
    assert timed_status(other, 2) < 2.0  # the node answers others meanwhile, not after the flood
    assert took < 8.0, took  # before: 80 us a frame, 16 s for these 200k; a loaded machine may take seconds


def test_a_request_of_too_many_containers_is_refused_before_its_decoding(node, control_dealers):
    sock = control_dealers(node.name)
    sock.send(heavy_request(1_000_000))
    refused = answer(sock)
    assert isinstance(refused, Refused) and refused.kind == "bad_request", refused
    assert f"more than {MAX_CONTROL_ITEMS}" in refused.message


def test_heavy_requests_delay_status_little_and_memory_stays_bounded(node, control_dealers):
    """Before: each cost ~1.2 s of the node's loop (decoding, then the depth walk); ``status``
    behind ten of them took 8 s and the node's RSS grew by gigabytes."""
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    senders = [control_dealers(node.name) for _ in range(2)]
    message = heavy_request(1_000_000)
    for sender in senders:
        for _ in range(10):
            sender.send(message)
    status = control_dealers(node.name)
    latencies = [timed_status(status, i) for i in range(1, 5)]
    for sender in senders:
        for _ in range(10):
            assert answer(sender).kind == "bad_request"
    done.set()
    sampler.join()
    grew = (peak[0] - base) / 2**20
    print(f"status latencies {[round(x, 3) for x in latencies]} s, RSS grew by {grew:.0f} MiB at most")
    assert max(latencies) < 0.5, latencies
    assert grew < 200, grew


@pytest.mark.parametrize("request_", [WhichChildren(1, "s" * 100_000), TerminateChild(2, "c" * 100_000, "root")])
def test_an_error_echoes_a_long_name_shortened(node, control_dealers, request_):
    """Before: the 100k-char name came back whole in the error message."""
    sock = control_dealers(node.name)
    sock.send(ENCODER.encode(request_))
    reply = answer(sock)
    text = reply.message if isinstance(reply, Refused) else reply.detail
    assert isinstance(reply, (Refused, Outcome)) and reply.request_id == request_.request_id, reply
    assert len(text) < 5000, len(text)
