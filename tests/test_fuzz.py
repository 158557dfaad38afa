"""Hostile input on every socket a node serves (issue #8, item 3), with hypothesis.

The control socket, an agent's call socket and the registry's call socket get random bytes,
msgpack of the wrong shape, unknown tags, truncated messages, several frames, oversized
messages and floods. Each message gets an error reply or is dropped; the process keeps
serving (same pid, a proper request works) and nothing changes (which_children, registry).
"""

from __future__ import annotations

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import otpy
from otpy.host.runtime_dir import agent_endpoint
from otpy.node.control import MAX_MESSAGE_BYTES
from otpy.wire.protocol import (
    ENCODER, FROM_AGENT, FROM_NODE, TO_AGENT, TO_NODE, Call, CallFailed, Children, CountChildren,
    DeleteChild, GetStatus, Refused, Reply, RestartChild, StartFromTemplate, TerminateChild, WhichChildren,
)
from otpy.variables.placement import REGISTRY_ID, with_registry
from tests.helpers import sleeper, unique_name

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COUNTS = {"control": 0, "agent": 0, "registry": 0, "flood": 0, "oversized": 0}

VARIABLES = {"global": {"temperature": {"type": "float", "low": 0.0, "high": 2.0, "default": 1.0},
                        "model": {"type": "choice", "choices": ["a", "b"], "default": "a"}}}
TAGS = ["WhichChildren", "CountChildren", "StartChild", "StartFromTemplate", "TerminateChild",
        "RestartChild", "DeleteChild", "Reconfigure", "SetVariables", "GetStatus", "StopNode"]


@pytest.fixture(scope="module")
def node():
    pool = otpy.DynamicSupervisorSpec(id="pool", templates={"e": otpy.ChildSpec(id="t", program="tests.call_agents:Echo")})
    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="echo", program="tests.call_agents:Echo"), sleeper("s"), pool))
    node = otpy.Node.from_spec(with_registry(root, VARIABLES), name=unique_name("fuzz")).start()
    node.start_from_template("pool", "e", "p1")
    yield node
    node.stop()
    print(f"\nfuzz figures: {COUNTS}")


@pytest.fixture(scope="module")
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def dealer(ctx, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def state(node) -> tuple:
    return (tuple((c.id, c.pid, c.state) for sup in ("root", "pool") for c in node.which_children(sup)),
            node.status().pid)


def registry_values(node) -> list:
    return [(v["scope"], v["name"], v["value"], v["version"])
            for v in node.call(REGISTRY_ID, {"op": "list"}, timeout=10)["values"]]


# --- strategies ---------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@st.composite
def wrong_types(draw):
    """A known tag with random field values (most of them the wrong type)."""
    message = {"type": draw(st.sampled_from(TAGS))}
    for field in draw(st.lists(st.sampled_from(
            ["request_id", "supervisor", "id", "spec", "template", "args", "source", "target", "scope", "values"]),
            max_size=5, unique=True)):
        message[field] = draw(values)
    return msgspec.msgpack.encode(message)


unknown_tags = st.builds(lambda tag, rid, extra: msgspec.msgpack.encode({"type": tag, "request_id": rid, **extra}),
                         st.text(max_size=20).filter(lambda t: t not in TAGS), st.integers(0, 2**31),
                         st.dictionaries(st.text(max_size=6), scalars, max_size=3))
VALID_REQUESTS = [ENCODER.encode(m) for m in (
    WhichChildren(1, "pool"), CountChildren(2), GetStatus(3), TerminateChild(4, "echo"), RestartChild(5, "s"),
    DeleteChild(6, "s"), StartFromTemplate(7, "pool", "e", "p2", {"k": [1, 2, 3]}))]
truncated = st.builds(lambda raw, cut: raw[:cut % len(raw)], st.sampled_from(VALID_REQUESTS), st.integers(0, 200))
random_msgpack = values.map(msgspec.msgpack.encode)
one_frame = st.one_of(st.binary(max_size=300), random_msgpack, wrong_types(), unknown_tags, truncated)
several_frames = st.lists(one_frame, min_size=2, max_size=4)


def undecodable(payload: bytes) -> bool:
    try:
        TO_NODE.decode(payload)
    except msgspec.DecodeError:
        return True
    return False


# --- the control socket -------------------------------------------------------------------------


class TestControlSocket:
    @FUZZ
    @given(frames=st.one_of(one_frame.map(lambda f: [f]), several_frames))
    def test_garbage_gets_bad_request_and_changes_nothing(self, node, ctx, frames):
        if len(frames) == 1:
            assume(undecodable(frames[0]))
        before = state(node)
        sock = dealer(ctx, otpy.host.runtime_dir.control_endpoint(node.name))
        try:
            sock.send_multipart(frames)
            assert sock.poll(5000), f"no reply to {frames!r}"
            reply = FROM_NODE.decode(sock.recv())
            assert isinstance(reply, Refused) and reply.kind == "bad_request" and reply.request_id == 0, reply
            assert reply.message
            sock.send(ENCODER.encode(WhichChildren(99, "")))
            assert sock.poll(5000)
            ok = FROM_NODE.decode(sock.recv())
            assert isinstance(ok, Children) and ok.request_id == 99
        finally:
            sock.close()
        assert state(node) == before
        COUNTS["control"] += 1

    def test_an_oversized_message_is_dropped_and_the_node_keeps_serving(self, node, ctx):
        before = state(node)
        big = dealer(ctx, otpy.host.runtime_dir.control_endpoint(node.name))
        try:
            payload = ENCODER.encode(WhichChildren(5, "x" * (MAX_MESSAGE_BYTES + 16)))
            big.send(payload)
            assert not big.poll(1000), "an oversized message was answered"
            COUNTS["oversized"] += 1
        finally:
            big.close()
        with otpy.connect(node.name, timeout=10) as client:
            assert client.which_children("pool") == node.which_children("pool")
        assert state(node) == before

    def test_a_flood_of_requests_and_garbage_is_answered_or_dropped_and_the_node_keeps_serving(self, node, ctx):
        before = state(node)
        sock = dealer(ctx, otpy.host.runtime_dir.control_endpoint(node.name))
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        n = 3000
        try:
            for i in range(n):
                sock.send(ENCODER.encode(GetStatus(i + 1)) if i % 2 else b"\xc1garbage" + bytes([i % 256]))
            replies = {"ok": 0, "bad_request": 0}
            import time
            deadline = time.monotonic() + 60
            while sum(replies.values()) < n and time.monotonic() < deadline:
                if sock.poll(2000):
                    reply = FROM_NODE.decode(sock.recv())
                    replies["bad_request" if isinstance(reply, Refused) else "ok"] += 1
                else:
                    break
            # The ROUTER may drop replies beyond its high-water mark; every reply is of the right kind.
            assert replies["ok"] >= 1 and replies["bad_request"] >= 1, replies
            COUNTS["flood"] += n
        finally:
            sock.close()
        with otpy.connect(node.name, timeout=10) as client:
            assert client.status().pid == before[1]
        assert state(node) == before


# --- an agent's call socket ---------------------------------------------------------------------


class TestAgentSocket:
    @FUZZ
    @given(frames=st.one_of(one_frame.map(lambda f: [f]), several_frames))
    def test_garbage_gets_bad_request_or_is_dropped_and_the_agent_keeps_serving(self, node, ctx, frames):
        pid = node.which_children("root")[1].pid
        sock = dealer(ctx, agent_endpoint(node.name, "echo"))
        try:
            sock.send_multipart(frames)
            if len(frames) == 1:
                try:
                    valid = isinstance(TO_AGENT.decode(frames[0]), Call)
                except msgspec.DecodeError:
                    valid = False
                assert sock.poll(5000), f"no reply to {frames!r}"
                reply = FROM_AGENT.decode(sock.recv())
                if not valid:
                    assert isinstance(reply, CallFailed) and reply.kind == "bad_request", reply
                else:
                    assert isinstance(reply, (Reply, CallFailed)), reply
            sock.send(ENCODER.encode(Call(call_id=4242, inputs={"ok": 1})))
            deadline_ms = 5000
            while True:  # a multi-frame message is dropped: the next reply is ours
                assert sock.poll(deadline_ms), "the agent stopped answering"
                reply = FROM_AGENT.decode(sock.recv())
                if reply.call_id == 4242:
                    break
            assert isinstance(reply, Reply) and reply.outputs["ok"] == 1 and reply.outputs["pid"] == pid
        finally:
            sock.close()
        COUNTS["agent"] += 1


# --- the registry's call socket -----------------------------------------------------------------

registry_inputs = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(["get", "set", "set_many", "resolve", "explain", "list"]), values)},
    optional={"scope": st.one_of(values, st.sampled_from(["nope", "root"])),
              "name": st.one_of(values, st.sampled_from(["temperature", "model"])),
              "value": values, "values": values, "child": values, "chain": values,
              "expected_version": values, "extra": values})


class TestRegistrySocket:
    @FUZZ
    @given(inputs=registry_inputs)
    def test_hostile_requests_get_an_error_and_change_no_value(self, node, inputs):
        # A write to an existing variable of an existing scope is a legitimate request: not hostile.
        assume(inputs.get("scope") != "global" and "global" not in repr(inputs.get("values")))
        pid = {c.id: c.pid for c in node.which_children("root")}[REGISTRY_ID]
        before = registry_values(node)
        try:
            reply = node.call(REGISTRY_ID, inputs, timeout=5)
            if inputs["op"] in ("set", "set_many"):
                assert reply.get("ok") is not True or reply.get("versions") == {} or "global" not in repr(inputs), reply
        except otpy.CallError as error:
            assert not isinstance(error, otpy.CallTimeout), error
        assert registry_values(node) == before
        assert {c.id: c.pid for c in node.which_children("root")}[REGISTRY_ID] == pid
        COUNTS["registry"] += 1

    @FUZZ
    @given(payload=st.one_of(st.binary(max_size=300), random_msgpack, truncated))
    def test_raw_garbage_on_the_registry_socket(self, node, ctx, payload):
        sock = dealer(ctx, agent_endpoint(node.name, REGISTRY_ID))
        try:
            sock.send(payload)
            assert sock.poll(5000), "no reply"
            FROM_AGENT.decode(sock.recv())
        finally:
            sock.close()
        assert node.call(REGISTRY_ID, {"op": "get", "scope": "global", "name": "temperature"}, timeout=5)["ok"]
        COUNTS["registry"] += 1


# --- bad topology files: refused by `otpy validate`, nothing started ---------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

BAD = sorted((Path(__file__).parent / "topologies" / "bad").glob("*.toml"))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("path", BAD[::8], ids=lambda p: p.stem)
def test_validate_refuses_a_bad_topology_naming_the_key_and_starts_nothing(path):
    expect = next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                  if line.startswith("# expect:"))
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    runtime_before = sorted(os.listdir(otpy.host.runtime_dir.runtime_root()))
    proc = subprocess.Popen([sys.executable, "-m", "otpy", "validate", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).parent.parent)
    spawned: set[int] = set()
    while proc.poll() is None:  # sample what the validator starts while it runs
        try:
            spawned |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            break
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert expect in out, f"{expect!r} not named in: {out}"
    assert spawned == set(), f"the validator started processes: {spawned}"
    assert {p.pid for p in me.children(recursive=True)} == children_before
    assert sorted(os.listdir(otpy.host.runtime_dir.runtime_root())) == runtime_before
