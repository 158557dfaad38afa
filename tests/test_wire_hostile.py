"""Hostile or broken messages hurt only their sender: the control socket, an agent's call loop
and a caller's reply path answer them with a typed error and keep serving."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
import zmq

import otpy
from otpy.wire.protocol import ENCODER, FROM_AGENT, FROM_NODE, CallFailed, GetStatus, Refused, Reply, Status
from otpy.host.runtime_dir import agent_endpoint, agent_socket_path, control_endpoint, make_agents_dir
from otpy.wire.codec import MAX_DEPTH
from tests.helpers import sleeper, unique_name
from tests.bad_answer_agents import nested

pytestmark = pytest.mark.timeout(60)

NEST = "tests.bad_answer_agents:Nest"


def deep_bytes(depth: int) -> bytes:
    """msgpack of ``depth`` nested one-element arrays, built by hand (no encoder would)."""
    return b"\x91" * depth + b"\x00"


def raw_map(**fields: bytes) -> bytes:
    """A msgpack map whose values are given already encoded."""
    out = bytes([0x80 | len(fields)])
    for name, value in fields.items():
        out += msgspec.msgpack.encode(name) + value
    return out


@pytest.fixture(scope="module")
def node():
    root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="nest", program=NEST), sleeper("s")))
    with otpy.Node.from_spec(root, name=unique_name("wire")) as node:
        yield node


class Sockets:
    """A context whose sockets are all closed at the end of the test."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.made: list[zmq.Socket] = []

    def socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0
        self.made.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.made:
            sock.close(linger=0)
        self.context.term()


@pytest.fixture
def ctx():
    sockets = Sockets()
    yield sockets
    sockets.close()


def dealer(ctx: Sockets, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    return sock


def reply(sock: zmq.Socket, decoder, timeout_ms: int = 5000):
    assert sock.poll(timeout_ms), "no reply"
    return decoder.decode(sock.recv())


# --- the control socket -------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 50, 2000, 100_000])
def test_a_deep_control_request_gets_bad_request_and_the_node_keeps_serving(node, ctx, depth):
    sock = dealer(ctx, control_endpoint(node.name))
    sock.send(raw_map(type=msgspec.msgpack.encode("SetVariables"), request_id=b"\x07",
                      scope=msgspec.msgpack.encode("global"), values=raw_map(x=deep_bytes(depth))))
    refused = reply(sock, FROM_NODE)
    assert isinstance(refused, Refused) and refused.kind == "bad_request", refused
    assert "nested deeper than" in refused.message or "holds more than" in refused.message  # 100k: both
    sock.send(ENCODER.encode(GetStatus(8)))
    assert isinstance(reply(sock, FROM_NODE), Status)
    with otpy.connect(node.name, timeout=5) as client:
        assert client.status().tree.state == "running"


def test_a_message_over_the_limit_in_all_its_frames_gets_bad_request(node, ctx):
    sock = dealer(ctx, control_endpoint(node.name))
    sock.send_multipart([b"\0" * (512 * 1024)] * 4)  # each frame under ZMQ_MAXMSGSIZE, 2 MiB in all
    refused = reply(sock, FROM_NODE)
    assert isinstance(refused, Refused) and refused.kind == "bad_request" and "over the limit" in refused.message
    sock.send(ENCODER.encode(GetStatus(9)))
    assert isinstance(reply(sock, FROM_NODE), Status)


# --- an agent's call loop -----------------------------------------------------------------


def test_deep_calls_get_bad_request_and_the_agent_keeps_serving(node, ctx):
    """Before: each one killed the agent (RecursionError out of the call loop); the fourth in
    5 s exceeded the root's restart intensity and the node stopped."""
    pid = node.call("nest")["pid"]
    sock = dealer(ctx, agent_endpoint(node.name, "nest"))
    for call_id in range(1, 6):
        sock.send(raw_map(type=msgspec.msgpack.encode("Call"), call_id=bytes([call_id]),
                          inputs=raw_map(x=deep_bytes(2000))))
        failed = reply(sock, FROM_AGENT)
        assert isinstance(failed, CallFailed) and (failed.call_id, failed.kind) == (call_id, "bad_request"), failed
    assert node.call("nest")["pid"] == pid
    assert node.status().tree.state == "running"


@pytest.mark.parametrize("depth", [MAX_DEPTH, 3000])
def test_inputs_too_deep_are_unencodable_at_the_caller(node, depth):
    with pytest.raises(otpy.Unencodable, match="'x'"):
        node.call("nest", {"x": nested(depth)})
    with otpy.Caller(node.name) as caller:
        with pytest.raises(otpy.Unencodable):
            caller.submit("nest", {"x": nested(depth)}).result(timeout=5)


@pytest.mark.parametrize("depth", [MAX_DEPTH, 3000])
def test_a_reply_too_deep_is_unencodable_and_the_agent_answers_the_next_call(node, depth):
    """Before: 3000 deep, the encoder's RecursionError killed the call thread; the agent was
    shown running and never answered again. ``MAX_DEPTH`` deep: the reply went out and the
    caller's decoder choked on it (a timeout)."""
    pid = node.call("nest")["pid"]
    started = time.monotonic()
    with pytest.raises(otpy.Unencodable, match="'deep'"):
        node.call("nest", {"depth": depth}, timeout=5)
    assert time.monotonic() - started < 2
    assert node.call("nest", {"depth": 3}) == {"deep": nested(3), "pid": pid}


# --- a caller's reply path ----------------------------------------------------------------


class FakeAgent:
    """A ROUTER bound at an agent's address in the node's folder, answering with given bytes."""

    def __init__(self, ctx: Sockets, node: str, agent: str) -> None:
        make_agents_dir(node)
        self.router = ctx.socket(zmq.ROUTER)
        self.router.bind(agent_endpoint(node, agent))
        self.path = agent_socket_path(node, agent)

    def answer(self, make_reply) -> None:
        """Answer one call with ``make_reply(call_id)`` (bytes)."""
        assert self.router.poll(5000), "no call came"
        peer, payload = self.router.recv_multipart()
        self.router.send_multipart([peer, make_reply(msgspec.msgpack.decode(payload)["call_id"])])

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["call", "submit"])
def test_a_caller_survives_a_reply_it_cannot_read(node, ctx, how):
    fake = FakeAgent(ctx, node.name, "fake")
    deep = lambda call_id: raw_map(type=msgspec.msgpack.encode("Reply"), call_id=msgspec.msgpack.encode(call_id),
                                   outputs=raw_map(x=deep_bytes(5000)))
    good = lambda call_id: ENCODER.encode(Reply(call_id=call_id, outputs={"ok": True}))
    try:
        with otpy.Caller(node.name) as caller:
            for make_reply, expected in ((deep, otpy.Unencodable), (good, {"ok": True})):
                result: dict = {}

                def run():
                    try:
                        if how == "call":
                            result["value"] = caller.call("fake", timeout=5)
                        else:
                            result["value"] = caller.submit("fake", timeout=5).result(timeout=6)
                    except Exception as exc:
                        result["value"] = exc

                thread = threading.Thread(target=run)
                thread.start()
                fake.answer(make_reply)
                thread.join(6)
                if isinstance(expected, dict):
                    assert result["value"] == expected
                else:
                    assert isinstance(result["value"], expected), result
    finally:
        fake.close()
