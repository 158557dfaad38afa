"""The node's control socket (ZeroMQ ROUTER) and events socket (PUB).

Both live in the node's private runtime folder (0700) and are chmod 0600 right after bind.
Requests are the ``client <-> node (control)`` messages of ``protocol``; each gets exactly
one reply, the node's (``AsyncNode.handle``): this server only decodes, queues and encodes.
Requests that concern one supervisor are served one after the other, in arrival order, in
that supervisor's lane; different supervisors' lanes proceed independently, as
OTP's supervisor processes do, and ``GetStatus`` waits for none (``node/control_lanes``).

Whatever a message holds, only its sender is affected: anything that cannot be decoded (not
msgpack, a wrong field, nested deeper than ``codec.MAX_DEPTH``, over ``MAX_MESSAGE_BYTES``
in all its frames) gets a ``bad_request`` ``Refused`` saying why, is logged (a few lines
a minute at most), and the receive loops go on; a loop that ends anyway is started again.
A frame over ``MAX_MESSAGE_BYTES`` is dropped by ZeroMQ itself, which also disconnects its
sender (``ZMQ_MAXMSGSIZE``): that sender gets no reply. At most ``MAX_WAITING`` requests
wait for their reply; beyond, the node stops reading and ZeroMQ queues (then drops) the rest.

``StopNode`` is answered after the tree has stopped: the request is remembered, the node is
asked to stop (``AsyncNode.request_stop``), and ``close()`` (run by the node once its tree is
down) sends the ``Stopping`` reply before closing the socket; every request still waiting
then gets ``Refused(stopping)``. A request whose answer raises (a bug in the node) gets
``Refused(internal)`` naming the exception, and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Protocol

import zmq
import zmq.asyncio

from ..wire.connections import AsyncYoungFirstCap, ConnectionCap, connection_cap, node_cap, prepare
from .control_lanes import Lane, Supervisors, lane_of, parse_request, receive_bounded
from .errors import NodeStartError
from ..wire.protocol import ENCODER, MAX_REQUEST_BYTES, FromNode, Message, NodeEvent, Refused, StopNode, Stopping, ToNode
from ..host.runtime_dir import control_endpoint, events_endpoint, node_dir, write_private
from ..specs.model import NodeSpec
from ..wire.codec import Complaints, Frames, WireError, describe, encode, return_big_buffers, trim_memory

log = logging.getLogger("otpy")

MAX_MESSAGE_BYTES = MAX_REQUEST_BYTES  # 1 MiB: a bigger frame is dropped and its sender disconnected; a bigger
# message of several frames gets bad_request
MAX_WAITING = 1024  # requests received and not answered yet; beyond, the node reads no more for now
MAX_WAITING_BYTES = 8 << 20  # nor beyond this many bytes of them (as received; decoded, each holds at
# most MAX_CONTROL_ITEMS containers: ~9 MB at worst)
REPLY_LINGER_MS = 2000  # how long close() lets the last replies (the Stopping ones) leave


async def open_control(node: Served) -> "ControlServer":
    """The node's service opener: bind both sockets and start serving. If a bind fails, what
    was opened is closed again (a socket left open would also hang the context's ``term``);
    a TCP endpoint that cannot be bound is one line naming ``node.control_tcp``."""
    server = ControlServer(node)
    try:
        server.open()
    except BaseException:
        server.discard()
        raise
    return server


class Served(Supervisors, Protocol):
    """What the control server needs of the node it serves (``AsyncNode``)."""

    name: str
    spec: NodeSpec
    listeners: list[Callable[[NodeEvent], None]]
    on_stop_request: Callable[[], None] | None

    async def handle(self, request: ToNode) -> FromNode: ...

    def request_stop(self) -> None: ...


def _ipc_path(endpoint: str) -> Path:
    return Path(endpoint.removeprefix("ipc://"))


class ControlServer:
    def __init__(self, node: Served) -> None:
        self._complain = Complaints(log.warning)  # this server's lines, rate-limited
        self.node = node
        self._context = zmq.asyncio.Context()
        self._router: zmq.asyncio.Socket | None = None
        self._pub: zmq.Socket | None = None
        self._tcp: zmq.asyncio.Socket | None = None  # opt-in, CURVE only
        self._auth = None
        self._keys = None  # the TCP endpoint's AuthorizedKeys
        self._gateway = None  # the call gateway, with the TCP endpoint
        self._cap = 0
        self._tasks: list[asyncio.Task] = []  # the receive loops
        self._running: set[asyncio.Task] = set()  # one per request being answered
        self._lanes: dict[Lane, asyncio.Task] = {}  # each lane's last request
        self._tokens = itertools.count()
        self._waiting: dict[int, tuple[zmq.asyncio.Socket, bytes, int]] = {}  # not answered yet
        self._weights: dict[int, int] = {}  # the bytes of each waiting request, as received
        self._waiting_bytes = 0
        self._room = asyncio.Event()  # set while fewer than MAX_WAITING wait
        self._room.set()
        self._closing = False
        self._caps: list[ConnectionCap | AsyncYoungFirstCap] = []
        self._stop_waiters: list[tuple[zmq.asyncio.Socket, bytes, int]] = []

    # --- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        node_dir(self.node.name)
        return_big_buffers()
        self._pub = zmq.Context.shadow(self._context.underlying).socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        prepare(self._pub)
        self._bind_private(self._pub, events_endpoint(self.node.name))
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._router.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        prepare(self._router)
        endpoint = control_endpoint(self.node.name)
        self._bind_private(self._router, endpoint)
        if self.node.spec.control_tcp:
            self._open_tcp(self.node.spec.control_tcp)
        self._cap_connections(endpoint)
        if self._tcp is not None:
            self._open_gateway()
        self._write_cluster()
        self._tasks.extend(asyncio.ensure_future(c.run()) for c in self._caps)
        self.node.listeners.append(self.publish)
        for sock in (self._router, self._tcp):
            if sock is not None:
                self._start_receiving(sock)

    def _cap_connections(self, control: str) -> None:
        """A connection cap on every listener: control (ipc, TCP) and events (``wire.connections``):
        the reset on the ipc ones, young-first on TCP (an authorized client is never cut)."""
        listeners = [(self._router, control), (self._pub, events_endpoint(self.node.name))]
        if self._tcp is not None:  # as bound: a wildcard or port 0 resolved, so that unbind/bind find it
            listeners.append((self._tcp, self._tcp.getsockopt_string(zmq.LAST_ENDPOINT)))
        cap = self._cap = connection_cap(len(listeners) + (self._tcp is not None))  # the call gateway's too
        for sock, endpoint in listeners:
            bind = (lambda s=sock, e=endpoint: self._bind_private(s, e)) if endpoint.startswith("ipc://") else \
                (lambda s=sock, e=endpoint: s.bind(e))
            self._caps.append(node_cap(sock, endpoint, cap, bind, self.node.name, self._context))

    def _open_tcp(self, endpoint: str) -> None:
        """The TCP control endpoint: CURVE-encrypted, only clients in ``curve/authorized`` get in."""
        from ..wire.curve import ensure_keys, keys_dir, serve_curve, start_authenticator

        had_keys = keys_dir(self.node.name).exists()
        folder = ensure_keys(self.node.name)
        # the folder's keys as they are at each handshake: `otpy keys authorize/revoke` apply at once
        self._auth, self._keys = start_authenticator(self._context, folder / "authorized")
        self._tcp = self._context.socket(zmq.ROUTER)
        self._tcp.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._tcp.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        serve_curve(self._tcp, folder)
        prepare(self._tcp)  # a peer without the keys is dropped after HANDSHAKE_IVL_MS
        self._tcp.setsockopt(zmq.IPV6, 1)  # tcp://[::1]:PORT; IPv4 addresses still work
        try:
            self._tcp.bind(endpoint)
        except zmq.ZMQError as exc:
            if not had_keys:  # made for this start only: nothing of it stays
                shutil.rmtree(folder, ignore_errors=True)
            raise NodeStartError(f"node.control_tcp {endpoint!r} cannot be bound: {exc}") from None

    def _write_cluster(self) -> None:
        """The node's cluster (``[cluster]``, resolved) in its folder, for its agents' ``Caller`` and
        ``otpy call AGENT@NODE``; a file a previous run left is removed."""
        from ..wire.remote_cluster import CLUSTER_FILE, encode_cluster

        path = node_dir(self.node.name) / CLUSTER_FILE
        cluster = getattr(self.node, "cluster", None)
        if cluster is None:
            path.unlink(missing_ok=True)
        else:
            write_private(path, encode_cluster(cluster))

    def _open_gateway(self) -> None:
        """The call gateway (``call_gateway``) on the port after the TCP endpoint as bound, same keys,
        same allow-list. A port that cannot be bound refuses the start (``NodeStartError`` naming
        ``node.control_tcp``), as control_tcp's own: a node does not claim what it cannot serve."""
        from ..wire.curve import keys_dir
        from ..wire.remote_protocol import calls_endpoint
        from .call_gateway import CallGateway

        declared = self.node.spec.control_tcp
        try:
            endpoint = calls_endpoint(self._tcp.getsockopt_string(zmq.LAST_ENDPOINT))
        except ValueError as exc:
            raise NodeStartError(f"node.control_tcp {declared!r}: {exc}") from None
        try:
            self._gateway = CallGateway(self.node.name, endpoint, keys_dir(self.node.name), self._cap)
        except zmq.ZMQError as exc:
            try:
                shown = calls_endpoint(declared)  # as the user wrote it (not the [::ffff:...] form bound)
            except ValueError:
                shown = endpoint
            raise NodeStartError(f"node.control_tcp {declared!r}: its calls port {shown} (control_tcp's port + 1) "
                                 f"cannot be bound: {exc.strerror}") from None
        self._gateway.start()

    def discard(self) -> None:
        """After a failed ``open``: close what it opened, remove the socket files it bound."""
        for endpoint in (control_endpoint(self.node.name), events_endpoint(self.node.name)):
            _ipc_path(endpoint).unlink(missing_ok=True)
        for sock in (self._router, self._tcp, self._pub):
            if sock is not None:
                sock.close(linger=0)
        for cap in self._caps:  # their monitor sockets, or term() would wait for them
            cap.close()
        if self._gateway is not None:
            self._gateway.stop()
        if self._auth is not None:
            self._auth.stop()
        self._context.term()

    @staticmethod
    def _bind_private(socket: zmq.Socket, endpoint: str) -> None:
        socket.bind(endpoint)
        os.chmod(_ipc_path(endpoint), 0o600)

    async def close(self) -> None:
        """Stop serving, answer whoever waits (requests in flight or queued, StopNode), close the sockets."""
        self._closing = True
        tasks = [*self._tasks, *self._running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.publish in self.node.listeners:
            self.node.listeners.remove(self.publish)
        endpoints = (control_endpoint(self.node.name), events_endpoint(self.node.name))
        for endpoint in endpoints:  # first: once a client has its reply, the node is gone for others too
            _ipc_path(endpoint).unlink(missing_ok=True)
        for sock, identity, request_id in self._waiting.values():
            await self._reply_now(sock, identity, Refused(request_id, "stopping", "the node stopped before answering"))
        self._waiting.clear()
        exits = self.node.on_stop_request is not None
        for sock, identity, request_id in self._stop_waiters:
            await self._reply_now(sock, identity, Stopping(request_id, pid=os.getpid(), process_exits=exits))
        for cap in self._caps:
            cap.close()
        self._router.close()
        if self._gateway is not None:
            await asyncio.to_thread(self._gateway.stop)  # its calls in flight fail (stopping), its socket closes
        if self._tcp is not None:
            self._tcp.close()
            self._auth.stop()
        self._pub.close()
        await asyncio.to_thread(self._context.term)  # waits for the replies to leave (linger)

    # --- events -----------------------------------------------------------------------------

    def publish(self, event: NodeEvent) -> None:
        """A node listener: every event goes out as it is; slow subscribers lose some."""
        try:
            self._pub.send(ENCODER.encode(event), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    # --- requests ---------------------------------------------------------------------------

    def _start_receiving(self, sock: zmq.asyncio.Socket) -> None:
        """A receive loop for ``sock``; if it ever ends while the server is open, it is logged
        and started again: the node must never go deaf."""
        task = asyncio.ensure_future(self._receive(sock))
        self._tasks.append(task)
        task.add_done_callback(lambda done: self._receiving_ended(done, sock))

    def _receiving_ended(self, task: asyncio.Task, sock: zmq.asyncio.Socket) -> None:
        if self._closing or task.cancelled():
            return
        log.error("otpy[%s]: the control receive loop ended (%r): started again", self.node.name, task.exception())
        self._tasks.remove(task)
        self._start_receiving(sock)

    async def _receive(self, sock: zmq.asyncio.Socket) -> None:
        """Take messages as they come, whatever they hold; each becomes a request task or an
        error reply. Only a closed socket ends this loop."""
        while True:
            await self._room.wait()  # too many requests waiting: ZeroMQ queues the rest (its HWM)
            try:
                self._accept(sock, await receive_bounded(sock, MAX_MESSAGE_BYTES))
                await asyncio.sleep(0)  # the requests just started (a GetStatus) run before the next message
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                    return
                self._complain(f"otpy[{self.node.name}]: control receive failed: {describe(exc)}")
                await asyncio.sleep(0.01)  # an error that repeats must not spin the loop
            except Exception as exc:  # anything else: the message is lost, the loop goes on
                self._complain(f"otpy[{self.node.name}]: a control message was dropped: {describe(exc)}")

    def _accept(self, sock: zmq.asyncio.Socket, frames: Frames) -> None:
        """Decode one message and start answering it: at once (errors, ``GetStatus``) or in its
        supervisor's lane, behind the requests that came earlier for that supervisor."""
        identity = frames.kept[0].bytes
        if sock is self._tcp and not self._keys.allows(frames.kept[0].get("User-Id")):
            self._complain(f"otpy[{self.node.name}]: dropped a TCP request: its client's key was revoked")
            return  # a connection made before `otpy keys revoke`: no answer, as to a refused handshake
        request = parse_request(frames, MAX_MESSAGE_BYTES)
        if isinstance(request, Refused):
            self._complain(f"otpy[{self.node.name}]: refused a control request: {request.message}")
            self._spawn(self._reply_now(sock, identity, request))
            if frames.size > MAX_MESSAGE_BYTES // 4:
                trim_memory()  # its buffers are freed: their pages go back to the system
            return
        if isinstance(request, StopNode):
            self._stop_waiters.append((sock, identity, request.request_id))
            self.node.request_stop()
            return
        token = next(self._tokens)
        self._waiting[token] = (sock, identity, request.request_id)
        self._weights[token] = frames.size
        self._waiting_bytes += frames.size
        self._update_room()
        try:
            key = lane_of(self.node, request)
        except Exception as exc:  # a bug: the request is still answered (its dispatch will say what failed)
            log.exception("otpy[%s]: no lane for %r", self.node.name, request)
            key = ("other", describe(exc))
        previous = self._lanes.get(key) if key is not None else None
        task = self._spawn(self._serve(token, previous, request))
        if key is not None:
            self._lanes[key] = task
            task.add_done_callback(lambda done: self._lanes.pop(key) if self._lanes.get(key) is done else None)

    def _update_room(self) -> None:
        """Read on only while fewer than ``MAX_WAITING`` requests, of ``MAX_WAITING_BYTES`` in
        all, wait: the count alone let 1024 big decoded requests take gigabytes."""
        if len(self._waiting) < MAX_WAITING and self._waiting_bytes < MAX_WAITING_BYTES:
            self._room.set()
        else:
            self._room.clear()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def _serve(self, token: int, previous: asyncio.Task | None, request: Message) -> None:
        """One request, once the previous one of its lane is done; its reply goes to its sender."""
        if previous is not None:
            await asyncio.wait([previous])
        reply = await self._answer(request)
        waiting = self._waiting.pop(token, None)
        self._waiting_bytes -= self._weights.pop(token, 0)
        self._update_room()
        if waiting is not None:
            sock, identity, _ = waiting
            await self._reply_now(sock, identity, reply)

    async def _reply_now(self, sock: zmq.asyncio.Socket, identity: bytes, reply: Message) -> None:
        try:
            await self._send(sock, identity, reply)
        except Exception as exc:  # the socket closed meanwhile, or the reply would not encode
            self._complain(f"otpy[{self.node.name}]: a control reply was not sent: {describe(exc)}")

    async def _send(self, sock: zmq.asyncio.Socket, identity: bytes, reply: Message) -> None:
        try:
            data = encode(ENCODER, reply)
        except WireError as exc:
            data = ENCODER.encode(Refused(getattr(reply, "request_id", 0), "internal",
                                               f"the reply could not be encoded: {exc}"))
        await sock.send_multipart([identity, data])

    async def _answer(self, request: ToNode) -> FromNode:
        """The node's reply; a bug must not take the node down: say what happened."""
        try:
            return await self.node.handle(request)
        except Exception as exc:
            log.exception("otpy[%s]: control request %r failed", self.node.name, type(request).__name__)
            return Refused(request.request_id, "internal", describe(exc))

