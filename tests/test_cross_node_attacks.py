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
