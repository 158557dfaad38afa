"""A node's events over TCP: a CURVE PUB two ports after ``control_tcp``, and its subscriber.

The node publishes its events on a local ipc PUB (``node.control``); a node with ``control_tcp
= "tcp://HOST:PORT"`` also publishes them on ``tcp://HOST:PORT+2`` (``events_endpoint``; the
port after ``control_tcp`` is the call gateway's, ``wire.remote_protocol``), with the same keys
and allow-list as its control endpoint: ZeroMQ CURVE, and a ZAP authenticator of this service's
own context that asks ``wire.curve.AuthorizedKeys`` at each handshake, so `otpy keys
authorize/revoke` apply at once. A PUB cannot leave out one subscriber: before each event the
allow-list is looked at (one stat), and when a key has gone since the last look every remote
subscriber is cut (the listener unbound, then bound again ``REBIND_AFTER_S`` later; events
published meanwhile are dropped); the allowed ones reconnect by themselves and handshake again,
the revoked one is refused. Slow subscribers lose events, as on the ipc socket. No timer: the
node does nothing between two events.

``RemoteEvents`` is the subscriber side (``otpy events --endpoint``): it waits for the CURVE
handshake (a socket monitor says whether the node let this key in), then yields events until
the node says it stops (``node_stopping``, then the connection ends) or the connection is lost
and not made again within ``RECONNECT_GRACE_S``. Lost includes silent: both sides send ZMTP
heartbeats, so a cut network or a frozen node (no FIN, no RST) ends the connection after
``HEARTBEAT_TIMEOUT_MS`` (the socket monitor's DISCONNECTED), and a reconnection that makes no
handshake does not count as made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Iterator

import zmq

from ..wire.protocol import ENCODER, EVENT, NodeEvent

log = logging.getLogger("otpy")

EVENTS_PORT_OFFSET = 2  # control_tcp's port + 1 is the call gateway's
REBIND_AFTER_S = 0.05  # between the unbind that cuts every subscriber and the bind again
REBIND_TRIES = 40  # of REBIND_AFTER_S each: libzmq closes the old listener in its I/O thread
RECONNECT_GRACE_S = 5.0  # a subscriber whose connection ended waits this long for it to be made again
SEND_HWM = 1000  # events queued per subscriber before it loses some
# ZMTP heartbeats (PING/PONG, libzmq's I/O thread; no timer of ours), as remote calls' links: a
# connection that carries nothing for HEARTBEAT_TIMEOUT_MS is taken as ended, both sides. A cut
# network or a frozen node sends no FIN/RST; without them a subscriber would wait forever.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000


def events_endpoint(control_tcp: str) -> str:
    """The events endpoint of a node whose control endpoint is ``control_tcp``: the same host,
    two ports up (``tcp://10.0.0.2:7000`` -> ``tcp://10.0.0.2:7002``). ValueError for what is
    not ``tcp://HOST:PORT`` or leaves no port there."""
    host, sep, port = control_tcp.removeprefix("tcp://").rpartition(":")
    if not control_tcp.startswith("tcp://") or not sep or not host or not port.isdigit() or \
            not 0 < int(port) < 65536:
        raise ValueError(f"got {control_tcp!r}; expected tcp://HOST:PORT")
    if int(port) + EVENTS_PORT_OFFSET > 65535:
        raise ValueError(f"{control_tcp!r}: events are served {EVENTS_PORT_OFFSET} ports after it, and there is "
                         f"no port {int(port) + EVENTS_PORT_OFFSET}")
    return f"tcp://{host}:{int(port) + EVENTS_PORT_OFFSET}"


async def open_remote_events(node: Any) -> "RemoteEventsServer | NoRemoteEvents":
    """The node's service opener (``AsyncNode.service_openers``): the TCP events PUB of a node
    with ``control_tcp``, else nothing to close. A port that cannot be bound refuses the start
    (``NodeStartError`` naming ``node.control_tcp``), as control_tcp's own and the call gateway's:
    a node does not claim what it cannot serve."""
    if not node.spec.control_tcp:
        return NoRemoteEvents()
    server = RemoteEventsServer(node.name, node.spec.control_tcp)
    try:
        server.open()
    except (ValueError, zmq.ZMQError) as exc:
        server.close_now()
        from .errors import NodeStartError

        raise NodeStartError(f"node.control_tcp {node.spec.control_tcp!r}: {exc}") from None
    except BaseException:
        server.close_now()
        raise
    node.listeners.append(server.publish)
    server.listeners = node.listeners
    return server


class NoRemoteEvents:
    async def close(self) -> None:
        pass


class RemoteEventsServer:
    """The CURVE PUB of one node's events; ``publish`` is a node listener (the node's loop)."""

    def __init__(self, node: str, control_tcp: str) -> None:
        self.node = node
        self.control_tcp = control_tcp
        self.endpoint = ""
        self.listeners: list | None = None
        self._context: Any = None
        self._pub: zmq.Socket | None = None
        self._auth: Any = None
        self._keys: Any = None
        self._generation = 0
        self._bound: str | None = None  # as bound (a wildcard host resolved): what unbind takes
        self._cut: asyncio.Task | None = None
        self._cap: Any = None
        self._cap_task: asyncio.Task | None = None

    def open(self) -> None:
        import zmq.asyncio

        from ..wire.connections import AsyncYoungFirstCap, connection_cap, prepare
        from ..wire.curve import ensure_keys, serve_curve, start_authenticator

        self.endpoint = events_endpoint(self.control_tcp)  # ValueError: no port + 2
        folder = ensure_keys(self.node)
        self._context = zmq.asyncio.Context()
        self._auth, self._keys = start_authenticator(self._context, folder / "authorized")
        self._keys.current()
        self._generation = self._keys.generation
        self._pub = zmq.Context.shadow(self._context.underlying).socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.SNDHWM, SEND_HWM)
        heartbeats(self._pub)  # a subscriber gone silent (cut, frozen) is dropped: its connection slot freed
        serve_curve(self._pub, folder)
        prepare(self._pub)  # a peer that never completes its handshake is dropped
        self._pub.setsockopt(zmq.IPV6, 1)
        try:
            self._pub.bind(self.endpoint)
        except zmq.ZMQError as exc:
            raise zmq.ZMQError(exc.errno, f"{self.endpoint} (control_tcp's port + {EVENTS_PORT_OFFSET}) cannot be "
                                          f"bound: {exc}") from None
        self._bound = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        # young-first: a flood of key-less connections never cuts an authorized subscriber
        self._cap = AsyncYoungFirstCap(self._pub, self._bound, connection_cap(3), self.node, self._context)
        self._cap_task = asyncio.ensure_future(self._cap.run())

    def publish(self, event: NodeEvent) -> None:
        """Send ``event`` to every subscriber, unless a key was revoked since the last event:
        then cut them all first (``_cut_all``), and this event is dropped."""
        if self._pub is None:
            return
        if self._cut is not None:
            return  # the listener is away: nobody would get it
        self._keys.current()
        if self._keys.generation != self._generation:
            self._generation = self._keys.generation
            self._cut = asyncio.ensure_future(self._cut_all())
            return
        try:
            self._pub.send(ENCODER.encode(event), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    async def _cut_all(self) -> None:
        """Unbind (libzmq closes every connection accepted there) and bind again: the subscribers
        still allowed reconnect and handshake again, a revoked one is refused."""
        try:
            log.warning("otpy[%s]: a client key was revoked: every remote events subscriber is cut (the allowed "
                        "ones reconnect)", self.node)
            self._pub.unbind(self._bound)
            for _ in range(REBIND_TRIES):
                await asyncio.sleep(REBIND_AFTER_S)
                try:
                    self._pub.bind(self._bound)
                    if self._cap is not None:
                        self._cap.forget()  # the unbind closed them all, untold
                    return
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EADDRINUSE:
                        raise
            log.error("otpy[%s]: the events endpoint %s could not be bound again", self.node, self._bound)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("otpy[%s]: cutting the remote events subscribers failed: %r", self.node, exc)
        finally:
            self._cut = None

    async def close(self) -> None:
        if self.listeners is not None and self.publish in self.listeners:
            self.listeners.remove(self.publish)
        for task in (self._cut, self._cap_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.close_now()

    def close_now(self) -> None:
        if self._cap is not None:
            self._cap.close()
            self._cap = None
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._context is not None:
            self._context.term()
            self._context = None


def heartbeats(sock: zmq.Socket) -> None:
    """PING every HEARTBEAT_IVL_MS; the connection ends when nothing came for HEARTBEAT_TIMEOUT_MS."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)


# --- the subscriber ----------------------------------------------------------------------------

class RemoteEvents:
    """A subscriber of a node's TCP events: ``for event in RemoteEvents(control_tcp, keys)``.
    ``connect(timeout)`` waits for the handshake first: TimeoutError when none came (nothing
    there, another server key, a key the node does not know: CURVE does not say which),
    ConnectionRefusedError when the node refused this key. Iterating ends after the node's
    ``node_stopping`` once the connection ends; else ConnectionResetError when the connection
    ended and was not made again within ``RECONNECT_GRACE_S``, ConnectionRefusedError when the
    node refused this key at a reconnection (revoked)."""

    def __init__(self, control_tcp: str, keys: str | os.PathLike) -> None:
        from ..wire.curve import connect_curve

        self.endpoint = events_endpoint(control_tcp)
        self._context = zmq.Context()
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.setsockopt(zmq.IPV6, 1)
        heartbeats(self._sub)  # a node gone silent: DISCONNECTED, then the reconnection grace
        self._sub.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)  # and the node drops this one likewise
        connect_curve(self._sub, keys)
        self._monitor = self._sub.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED)
        self._sub.connect(self.endpoint)
        self.stopping = False  # the node said node_stopping

    def connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._monitor.poll(int(left * 1000) + 1):
                event = self._monitor_event()
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    return
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    raise ConnectionRefusedError(f"{self.endpoint}: the node refused this client's key (not in its "
                                        "curve/authorized/, or revoked)")
        raise TimeoutError(f"no events endpoint answered at {self.endpoint} within {timeout} s")

    def _monitor_event(self) -> int:
        from zmq.utils.monitor import recv_monitor_message

        return recv_monitor_message(self._monitor)["event"]

    def __iter__(self) -> Iterator[NodeEvent]:
        lost_at: float | None = None
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            wait = None if lost_at is None else max(0.0, lost_at + RECONNECT_GRACE_S - time.monotonic())
            ready = dict(poller.poll(None if wait is None else int(wait * 1000) + 1))
            while self._sub.poll(0):
                event = EVENT.decode(self._sub.recv())
                self.stopping = self.stopping or event.kind == "node_stopping"
                yield event
            if self._monitor in ready:
                kind = self._monitor_event()
                if kind == zmq.EVENT_DISCONNECTED:
                    if self.stopping:
                        return
                    if lost_at is None:  # the grace runs from the first loss: a reconnection cut in its
                        lost_at = time.monotonic()  # handshake (a frozen node) does not extend it
                elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    lost_at = None
                elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    raise ConnectionRefusedError(f"{self.endpoint}: the node refused this client's key at a reconnection "
                                        "(revoked?)")
            if lost_at is not None and time.monotonic() - lost_at >= RECONNECT_GRACE_S:
                raise ConnectionResetError(f"the connection to {self.endpoint} ended and was not made again within "
                                 f"{RECONNECT_GRACE_S} s (the node died, or the network is down)")

    def close(self) -> None:
        self._sub.disable_monitor()
        self._monitor.close(linger=0)
        self._sub.close(linger=0)
        self._context.term()

    def __enter__(self) -> "RemoteEvents":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
