"""The TCP control endpoint: IPv6 addresses bind; an endpoint that cannot be bound is one
clear line naming ``node.control_tcp``, and the failed start leaves no socket nor key behind."""

from __future__ import annotations

import socket

import pytest
import zmq
import zmq.auth

import otpy
from otpy.wire.curve import keys_dir
from otpy.host.runtime_dir import control_endpoint, events_endpoint
from tests.helpers import sleeper, unique_name
from otpy.wire.protocol import ENCODER, FROM_NODE, GetStatus, Status

pytestmark = pytest.mark.timeout(60)


def spec(endpoint: str) -> otpy.NodeSpec:
    return otpy.NodeSpec(name=unique_name("tcp6"), control_tcp=endpoint,
                         root=otpy.SupervisorSpec(id="root", children=(sleeper("a"),)))


def test_an_ipv6_endpoint_is_served():
    """Before: ``ZMQError: No such device`` (ZMQ_IPV6 was off). A raw CURVE client here:
    ``otpy.connect``'s socket has no ZMQ_IPV6 yet (not this module's)."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://[::1]:{port}"
    with otpy.Node(spec(endpoint)) as node:
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        try:
            sock.linger, sock.ipv6 = 0, 1
            sock.curve_serverkey, _ = zmq.auth.load_certificate(keys_dir(node.name) / "server.key")
            sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(
                keys_dir(node.name) / "client.key_secret")
            sock.connect(endpoint)
            sock.send(ENCODER.encode(GetStatus(1)))
            assert sock.poll(5000), "no reply over IPv6"
            assert isinstance(FROM_NODE.decode(sock.recv()), Status)
        finally:
            sock.close(linger=0)
            context.term()


def test_otpy_connect_reaches_an_ipv6_endpoint():
    """Before: ``otpy.connect``'s DEALER had no ZMQ_IPV6 and never connected to ``tcp://[::1]``."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://[::1]:{port}"
    with otpy.Node(spec(endpoint)) as node:
        keys = keys_dir(node.name)
        with otpy.connect(endpoint=endpoint, keys=keys, timeout=5) as client:
            assert client.status().node == node.name


def test_an_endpoint_in_use_is_one_line_and_leaves_nothing_behind():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        node_spec = spec(endpoint)
        with pytest.raises(otpy.NodeStartError) as failed:
            otpy.Node(node_spec).start()
    message = str(failed.value)
    assert "node.control_tcp" in message and endpoint in message and "\n" not in message
    for endpoint in (control_endpoint(node_spec.name), events_endpoint(node_spec.name)):
        assert not __import__("pathlib").Path(endpoint.removeprefix("ipc://")).exists()
    assert not keys_dir(node_spec.name).exists()
