"""The young-first connection cap on the node's TCP listeners (advA-2's class): a flood of
key-less plain TCP connections past the cap is shut down, an authorized client's connection,
older than a handshake's time, stays and is served. Under the old rule (unbind at the cap) the
client's connection was closed with everyone else's (its monitor saw the disconnection)."""

from __future__ import annotations

import gc
import socket
import time

import pytest
import zmq

import otpy
from otpy.wire.connections import YOUNG_S, AsyncYoungFirstCap
from tests.helpers import sleeper, unique_name, wait_until
from tests.test_control_tcp import client_folder
from tests.test_cross_node_calls import free_port_pair

pytestmark = pytest.mark.timeout(60)

CAP = 16
FLOOD = 4 * CAP


@pytest.fixture
def node(tmp_path):
    port = free_port_pair()
    endpoint = f"tcp://127.0.0.1:{port}"
    spec = otpy.NodeSpec(name=unique_name("yf"), control_tcp=endpoint,
                         root=otpy.SupervisorSpec(id="root", children=(sleeper("a"),)))
    with otpy.Node(spec) as running:
        yield running, endpoint, port, client_folder(tmp_path, running.name)


def the_cap(port: int) -> AsyncYoungFirstCap:
    cap = next(c for c in gc.get_objects() if isinstance(c, AsyncYoungFirstCap) and c.local[1] == port)
    cap.tally.cap = CAP
    return cap


def old_enough(cap: AsyncYoungFirstCap) -> int:
    """The one connection the cap holds (the authorized client's), once older than ``YOUNG_S``."""
    wait_until(lambda: len(cap.accepted) == 1, 5)
    (fd,) = cap.accepted
    time.sleep(max(0.0, YOUNG_S + 0.5 - (time.monotonic() - cap.accepted[fd])))
    return fd


def flood_past(cap: AsyncYoungFirstCap, port: int) -> list[socket.socket]:
    flood = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(FLOOD)]
    # the node's loop takes the monitor's events in batches: once it has taken the whole flood,
    # what it keeps is within the cap (right after the sheds, more accepts may still be on their way)
    wait_until(lambda: cap.shed >= 2 * CAP and len(cap.accepted) <= CAP, 10)
    return flood


def closed_by_the_node(flood: list[socket.socket]) -> int:
    closed = 0
    for sock in flood:
        sock.settimeout(0.5)
        try:
            while sock.recv(4096):  # the node's ZMTP greeting, then the end
                pass
            closed += 1
        except ConnectionResetError:
            closed += 1
        except socket.timeout:
            pass  # one of the last, under the cap: libzmq drops it at its handshake timeout
        finally:
            sock.close()
    return closed


def watch(sock: zmq.Socket) -> zmq.Socket:
    return sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)


def unwatch(sock: zmq.Socket, monitor: zmq.Socket) -> None:
    sock.disable_monitor()
    monitor.close(linger=0)


def test_a_flood_of_key_less_connections_never_cuts_an_authorized_control_client(node):
    running, endpoint, port, keys = node
    cap = the_cap(port)
    with otpy.connect(endpoint=endpoint, keys=keys, timeout=5) as client:
        assert [c.id for c in client.which_children("root")] == ["a"]
        monitor = watch(client._socket)
        try:
            authorized = old_enough(cap)
            flood = flood_past(cap, port)
            assert authorized in cap.accepted  # still counted, never shed
            for _ in range(3):
                assert [c.id for c in client.which_children("root")] == ["a"]
            assert not monitor.poll(0), "the authorized client's connection was closed"
        finally:
            unwatch(client._socket, monitor)
    assert closed_by_the_node(flood) >= 2 * CAP


def test_a_flood_of_key_less_connections_never_cuts_an_authorized_events_subscriber(node):
    from otpy.node.remote_events import events_endpoint
    from otpy.wire.curve import connect_curve

    running, endpoint, port, keys = node
    cap = the_cap(port + 2)
    context = zmq.Context()
    try:
        sub = context.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        connect_curve(sub, keys)
        monitor = watch(sub)
        sub.connect(events_endpoint(endpoint))
        try:
            authorized = old_enough(cap)
            flood = flood_past(cap, port + 2)
            assert authorized in cap.accepted
            running.terminate_child("a", "root")  # an event
            assert sub.poll(5000), "the authorized subscriber got no event"
            assert not monitor.poll(0), "the authorized subscriber's connection was closed"
        finally:
            unwatch(sub, monitor)
        assert closed_by_the_node(flood) >= 2 * CAP
    finally:
        context.destroy(linger=0)
