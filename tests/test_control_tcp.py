"""The opt-in TCP control endpoint: CURVE only, and only for authorized client keys."""

from __future__ import annotations

import shutil

import pytest
import zmq
import zmq.auth

import otpy
from otpy.wire.curve import keys_dir
from tests.helpers import free_node_port, sleeper, unique_name

pytestmark = pytest.mark.timeout(60)


free_port = free_node_port  # the node binds P, P+1 (calls) and P+2 (events)


@pytest.fixture
def node():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spec = otpy.NodeSpec(name=unique_name("tcp"), control_tcp=endpoint,
                         root=otpy.SupervisorSpec(id="root", children=(sleeper("a"),)))
    with otpy.Node(spec) as node:
        yield node, endpoint


def client_folder(tmp_path, node_name: str, secret: str = "client.key_secret"):
    folder = tmp_path / "keys"
    folder.mkdir()
    shutil.copy(keys_dir(node_name) / "server.key", folder)
    shutil.copy(keys_dir(node_name) / secret, folder)
    return folder


def test_an_authorized_client_is_served_over_tcp(node, tmp_path):
    node, endpoint = node
    with otpy.connect(endpoint=endpoint, keys=client_folder(tmp_path, node.name), timeout=5) as client:
        assert [c.id for c in client.which_children("root")] == ["a"]


def test_a_plain_tcp_client_gets_nothing(node):
    node, endpoint = node
    context = zmq.Context()
    try:
        dealer = context.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(endpoint)
        dealer.send(b"\x81\xa4type\xadWhichChildren")  # any bytes: the CURVE handshake never completes
        assert dealer.poll(1000) == 0
    finally:
        context.destroy(linger=0)


def test_a_client_whose_key_is_not_authorized_is_refused(node, tmp_path):
    node, endpoint = node
    folder = tmp_path / "keys"
    folder.mkdir()
    zmq.auth.create_certificates(folder, "stranger")
    shutil.copy(keys_dir(node.name) / "server.key", folder)
    with otpy.connect(endpoint=endpoint, keys=folder, timeout=1) as client:
        with pytest.raises(TimeoutError):
            client.which_children("root")
    assert [c.id for c in node.which_children("root")] == ["a"]  # still serving


@pytest.mark.parametrize("client", ["sync", "async"])
def test_a_refused_client_times_out_even_once_its_connection_is_gone(node, tmp_path, client):
    """The node refuses the key, the connection ends, and the DEALER has no pipe left: before,
    the request's send blocked for ever (past the client's timeout); now it shares the deadline."""
    import asyncio
    import time

    node, endpoint = node
    folder = tmp_path / "keys"
    folder.mkdir()
    zmq.auth.create_certificates(folder, "stranger")
    shutil.copy(keys_dir(node.name) / "server.key", folder)
    if client == "sync":
        with otpy.connect(endpoint=endpoint, keys=folder, timeout=1) as refused:
            time.sleep(0.5)  # the handshake is refused meanwhile (no event to wait on from outside)
            began = time.monotonic()
            with pytest.raises(TimeoutError):
                refused.which_children("root")
    else:
        async def ask() -> float:
            refused = otpy.AsyncClient(node.name, endpoint=endpoint, keys=folder, timeout=1)
            try:
                await asyncio.sleep(0.5)
                began = time.monotonic()
                with pytest.raises(TimeoutError):
                    await refused.which_children("root")
                return began
            finally:
                refused.close()

        began = asyncio.run(ask())
    assert time.monotonic() - began < 3


def test_tcp_needs_keys():
    with pytest.raises(ValueError, match="CURVE"):
        otpy.connect(endpoint="tcp://127.0.0.1:9")


def test_stop_over_tcp_does_not_wait_for_a_local_process_of_the_nodes_pid(node, tmp_path, monkeypatch):
    """The pid a remote node reports is another host's: before, stop() waited for whatever local
    process had that pid (its whole timeout if one did)."""
    import otpy.wire.client as client_module

    running, endpoint = node
    waited = []
    monkeypatch.setattr(client_module, "wait_gone", lambda *a: waited.append(a))
    with otpy.connect(running.name, endpoint=endpoint, keys=client_folder(tmp_path, running.name)) as client:
        assert client.stop(timeout=30).ok
    assert waited == []
