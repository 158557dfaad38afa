"""Cross-node calls against hostile or broken peers (advA findings of #18): a node that cannot
serve its declared ports refuses to start; key-less floods, clients that do not read, refused
keys, FIFOs as keys and client-chosen routing ids harm no one but themselves."""

from __future__ import annotations

import os
import socket
import time

import msgspec
import pytest
import zmq

import otpy
from otpy.node.errors import NodeStartError
from otpy.wire.errors import CallTimeout, NodeUnreachable
from otpy.wire.remote_calls import RemoteCaller
from tests.helpers import unique_name, wait_until
from tests.test_cross_node_calls import agent, client_keys, free_port_pair

pytestmark = pytest.mark.timeout(60)


def node_spec(prefix: str, port: int, *children: otpy.ChildSpec) -> otpy.NodeSpec:
    return otpy.NodeSpec(name=unique_name(prefix), control_tcp=f"tcp://127.0.0.1:{port}",
                         root=otpy.SupervisorSpec(id="root", children=children or (agent("echo", "Echo"),)))


@pytest.mark.parametrize("offset", [1, 2])
def test_a_node_whose_calls_or_events_port_is_taken_refuses_to_start_naming_it(offset):
    port = free_port_pair()
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", port + offset))
        except OSError:
            pytest.skip("the port was taken meanwhile")
        held.listen()
        spec = node_spec("taken", port)
        expected = f"node.control_tcp .*{port + offset} \\(control_tcp's port \\+ {offset}\\) cannot be bound"
        with pytest.raises(NodeStartError, match=expected):
            otpy.Node(spec).start()
    with socket.socket() as probe:  # what the failed start bound is free again
        probe.bind(("127.0.0.1", port))


def test_a_fifo_named_like_a_key_is_refused_at_once_never_read(tmp_path):
    from otpy.wire.curve import client_keys_problem, load_key, new_key_pair
    from otpy.wire.remote_cluster import ClusterNode, ClusterSpec
    from otpy.wire.calls import Caller

    folder = tmp_path / "fk"
    public, _ = new_key_pair(folder, "real")
    os.replace(public, folder / "server.key")  # any public key will do as the node's here
    (folder / "real.key_secret").unlink()
    os.mkfifo(folder / "evil.key_secret", 0o600)
    started = time.monotonic()
    assert "is not a regular file" in client_keys_problem(folder)
    with pytest.raises(ValueError, match="is not a regular file"):
        load_key(folder / "evil.key_secret")
    with pytest.raises(ValueError, match="is not a regular file"):
        RemoteCaller("tcp://127.0.0.1:9", folder)
    cluster = ClusterSpec(source="x", nodes={"far": ClusterNode("tcp://127.0.0.1:9", str(folder))})
    with Caller("near", cluster=cluster) as caller, pytest.raises(Exception, match="is not a regular file"):
        caller.call("echo@far", {}, timeout=1)
    assert time.monotonic() - started < 5


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    from tests.test_cross_node_calls import start_node

    node, endpoint = start_node("b", agent("echo", "Echo"), agent("slow", "Slow"),
                                otpy.ChildSpec(id="big", program="tests.attack_agents:Big"))
    node.endpoint = endpoint
    node.keys = client_keys(tmp_path_factory.mktemp("keys") / "b", node.name)
    yield node
    node.stop()


def stranger_keys(folder, node_name: str):
    """A client keys folder whose key the node never authorized."""
    import shutil

    import zmq.auth

    from otpy.wire.curve import keys_dir

    folder.mkdir(mode=0o700)
    zmq.auth.create_certificates(folder, "stranger")
    (folder / "stranger.key").unlink()
    (folder / "stranger.key_secret").chmod(0o600)
    shutil.copy(keys_dir(node_name) / "server.key", folder)
    return folder


def test_a_refused_caller_does_not_knock_again_while_idle(b, tmp_path, monkeypatch):
    """advA-11: a key the node refuses: the call fails, and no new connection is tried until the next call."""
    from otpy.wire import remote_calls

    opened = []
    real_open = remote_calls._Link._open
    monkeypatch.setattr(remote_calls._Link, "_open", lambda link: (opened.append(1), real_open(link))[1])
    with RemoteCaller(b.endpoint, stranger_keys(tmp_path / "s", b.name)) as remote:
        with pytest.raises((NodeUnreachable, CallTimeout)):
            remote.submit("echo", {}, timeout=3).result(5)
        before = len(opened)
        time.sleep(1.0)  # idle: what is measured is that nothing happens
        assert len(opened) - before <= 1
        with pytest.raises((NodeUnreachable, CallTimeout)):  # a new call tries again
            remote.call("echo", {}, timeout=3)
        assert len(opened) > before


def raw_dealer(context, keys, gateway: str, **options):
    from otpy.wire.curve import connect_curve

    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.setsockopt(zmq.MAXMSGSIZE, -1)
    for option, value in options.items():
        dealer.setsockopt(getattr(zmq, option), value)
    connect_curve(dealer, keys)
    dealer.connect(gateway)
    return dealer


def remote_call(call_id: int, agent_id: str, **inputs) -> bytes:
    from otpy.wire.protocol import ENCODER
    from otpy.wire.remote_protocol import RemoteCall

    return ENCODER.encode(RemoteCall(call_id=call_id, agent=agent_id, inputs=msgspec.Raw(ENCODER.encode(inputs)),
                                     timeout=30.0))


def the_gateway(node_name: str):
    import gc

    from otpy.node.call_gateway import CallGateway

    return next(g for g in gc.get_objects() if isinstance(g, CallGateway) and g.node == node_name)


def test_a_client_that_does_not_read_its_replies_makes_the_node_hold_a_bounded_number_of_bytes(b):
    """advA-7: replies queue up to SEND_HWM messages in ZeroMQ and PARKED_BYTES in the gateway per
    connection; beyond, the connection does not read: its replies are dropped, its calls too."""
    from otpy.node import call_gateway
    from otpy.wire.remote_protocol import FROM_GATEWAY, RemoteReply, calls_endpoint

    gateway = the_gateway(b.name)
    size = 8 << 20
    context = zmq.Context()
    try:
        dealer = raw_dealer(context, b.keys, calls_endpoint(b.endpoint), RCVHWM=1, RCVBUF=4096)
        for i in range(20):  # 160 MiB of replies asked, none read meanwhile
            dealer.send(remote_call(i + 1, "big", n=size))
        wait_until(lambda: gateway._deaf, 30)
        wait_until(lambda: gateway.in_flight == 0 and not gateway._parked, 30)
        dealer.send(remote_call(99, "big", n=1))  # dropped unrun: it does not read
        replies = []
        while dealer.poll(3000):
            replies.append(FROM_GATEWAY.decode(dealer.recv()))
        full = [r for r in replies if isinstance(r, RemoteReply)]
        most = call_gateway.SEND_HWM + 2 + call_gateway.PARKED_BYTES // size + 2  # kernel buffers: a few more
        assert 0 < len(full) <= most and 99 not in [r.call_id for r in replies]
    finally:
        context.destroy(linger=0)
    with RemoteCaller(b.endpoint, b.keys) as remote:  # others are served
        assert remote.call("big", {"n": 10})["data"] == "x" * 10


def test_a_client_that_chooses_its_routing_id_gets_no_answer(b):
    """advA-8: a reply goes to the connection that made the call: a routing id the client chose
    (which a later connection of another key could take) is refused."""
    from otpy.wire.remote_protocol import calls_endpoint

    context = zmq.Context()
    try:
        chosen = raw_dealer(context, b.keys, calls_endpoint(b.endpoint), ROUTING_ID=b"victim-1234")
        chosen.send(remote_call(7, "echo", secret="VICTIM DATA"))
        generated = raw_dealer(context, b.keys, calls_endpoint(b.endpoint))
        generated.send(remote_call(8, "echo"))
        assert generated.poll(5000)
        assert not chosen.poll(1000)
    finally:
        context.destroy(linger=0)


def test_a_flood_of_key_less_connections_never_cuts_an_authorized_client(b):
    """advA-2: at the gateway's connection cap, the connections too young to have shown a key are
    closed; an authorized client's link, and its call in flight, stay."""
    from otpy.wire.remote_protocol import calls_endpoint, split_tcp

    gateway = the_gateway(b.name)
    host, port = split_tcp(calls_endpoint(b.endpoint))
    cap = gateway.cap.tally.cap
    gateway.cap.tally.cap = 40
    flood = []
    try:
        with RemoteCaller(b.endpoint, b.keys) as remote:
            remote.call("echo", {})  # both links (calling thread's, submit's) are up, and older than any flood
            remote.submit("echo", {}).result(5)
            wait_until(lambda: time.monotonic() - max(gateway.cap.accepted.values()) > 6.5, 20)
            future = remote.submit("slow", {"seconds": 1.5}, timeout=10)
            for _ in range(120):
                flood.append(socket.create_connection((host, port), timeout=5))
            wait_until(lambda: gateway.cap.shed > 0, 10)
            assert future.result(10)["seconds"] == 1.5
            assert remote.call("echo", {"after": 1})["after"] == 1
    finally:
        gateway.cap.tally.cap = cap
        for sock in flood:
            sock.close()


def test_a_client_with_replies_waiting_on_the_node_gets_overloaded_for_new_calls(b):
    """A connection whose replies wait in the gateway (its queue full: a slow link or reader):
    its new calls are refused at once (overloaded), not run to make more replies to hold."""
    from otpy.node.call_gateway import SLOW_PARKED_BYTES
    from otpy.wire.remote_protocol import FROM_GATEWAY, RemoteFailed, calls_endpoint

    gateway = the_gateway(b.name)
    context = zmq.Context()
    try:
        dealer = raw_dealer(context, b.keys, calls_endpoint(b.endpoint), RCVHWM=1, RCVBUF=4096)
        for i in range(16):  # 16 MiB: more than ZeroMQ's queue and the kernel's buffers, within PARKED_BYTES
            dealer.send(remote_call(i + 1, "big", n=(1 << 20) - 4096))
        # not only parked: as much as refuses new calls (one reply alone is a little under 1 MiB)
        wait_until(lambda: any(p.size >= SLOW_PARKED_BYTES for p in list(gateway._parked.values())), 20)
        dealer.send(remote_call(50, "echo"))
        replies = {}
        while dealer.poll(3000):
            reply = FROM_GATEWAY.decode(dealer.recv())
            replies[reply.call_id] = reply
        assert isinstance(replies[50], RemoteFailed) and replies[50].kind == "overloaded", replies.get(50)
    finally:
        context.destroy(linger=0)
