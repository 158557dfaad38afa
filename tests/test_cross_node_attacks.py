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
