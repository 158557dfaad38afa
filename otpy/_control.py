"""The node's control socket (ZeroMQ ROUTER) and events socket (PUB).

Both live in the node's private runtime folder (0700) and are chmod 0600 right after bind.
Requests are the ``client <-> node (control)`` messages of ``_protocol``; they are served
by ONE loop, one at a time, in arrival order (ZeroMQ queues the rest), and each gets exactly
one reply. Anything that cannot be decoded gets a ``ControlError`` saying why, and nothing
changes. A message over ``MAX_MESSAGE_BYTES`` is dropped by ZeroMQ, which also disconnects
its sender (``ZMQ_MAXMSGSIZE``): that sender gets no reply.

``StopNode`` is answered after the tree has stopped: the request is remembered, the node is
asked to stop (``AsyncNode.request_stop``), and ``close()`` (run by the node once its tree is
down) sends the ``Stopping`` reply before closing the socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import zmq
import zmq.asyncio

from ._effects import Result
from ._protocol import (
    ENCODER, TO_NODE, ChildInfo, Children, ControlError, CountChildren, Counts, DeleteChild, GetStatus,
    Message, NodeEvent, Outcome, Reconfigure, RestartChild, SetVariables, StartChild, StartFromTemplate,
    Status, StopNode, Stopping, TerminateChild, TreeEntry, WhichChildren,
)
from ._runtime import control_endpoint, events_endpoint, node_dir

if TYPE_CHECKING:
    from ._node import AsyncNode

log = logging.getLogger("otpy")

MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: bigger messages are dropped and their sender disconnected
REPLY_LINGER_MS = 2000  # how long close() lets the last replies (the Stopping ones) leave
EVENT_FIELDS = ("kind", "node", "supervisor", "child", "pid", "detail", "time")


async def open_control(node: "AsyncNode") -> "ControlServer":
    """The node's service opener: bind both sockets and start serving."""
    server = ControlServer(node)
    server.open()
    return server


def _ipc_path(endpoint: str) -> Path:
    return Path(endpoint.removeprefix("ipc://"))


class ControlServer:
    def __init__(self, node: "AsyncNode") -> None:
        self.node = node
        self._context = zmq.asyncio.Context()
        self._router: zmq.asyncio.Socket | None = None
        self._pub: zmq.Socket | None = None
        self._tcp: zmq.asyncio.Socket | None = None  # opt-in, CURVE only
        self._auth = None
        self._requests: asyncio.Queue = asyncio.Queue()  # (socket, identity, body) in arrival order
        self._tasks: list[asyncio.Task] = []
        self._in_flight: tuple[zmq.asyncio.Socket, bytes, int] | None = None
        self._stop_waiters: list[tuple[zmq.asyncio.Socket, bytes, int]] = []

    # --- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        node_dir(self.node.name)
        self._pub = zmq.Context.shadow(self._context.underlying).socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._bind_private(self._pub, events_endpoint(self.node.name))
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._router.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        self._bind_private(self._router, control_endpoint(self.node.name))
        if self.node.spec.control_tcp:
            self._open_tcp(self.node.spec.control_tcp)
        self.node.listeners.append(self.publish)
        self._tasks = [asyncio.ensure_future(self._receive(sock)) for sock in (self._router, self._tcp) if sock]
        self._tasks.append(asyncio.ensure_future(self._serve()))

    def _open_tcp(self, endpoint: str) -> None:
        """The TCP control endpoint: CURVE-encrypted, only clients in ``curve/authorized`` get in."""
        from zmq.auth.asyncio import AsyncioAuthenticator

        from ._curve import ensure_keys, serve_curve

        folder = ensure_keys(self.node.name)
        self._auth = AsyncioAuthenticator(self._context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(folder / "authorized"))
        self._tcp = self._context.socket(zmq.ROUTER)
        self._tcp.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._tcp.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        serve_curve(self._tcp, folder)
        self._tcp.bind(endpoint)

    @staticmethod
    def _bind_private(socket: zmq.Socket, endpoint: str) -> None:
        socket.bind(endpoint)
        os.chmod(_ipc_path(endpoint), 0o600)

    async def close(self) -> None:
        """Stop serving, answer whoever waits (in-flight request, StopNode), close the sockets."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.publish in self.node.listeners:
            self.node.listeners.remove(self.publish)
        endpoints = (control_endpoint(self.node.name), events_endpoint(self.node.name))
        for endpoint in endpoints:  # first: once a client has its reply, the node is gone for others too
            _ipc_path(endpoint).unlink(missing_ok=True)
        if self._in_flight is not None:
            sock, identity, request_id = self._in_flight
            await self._send(sock, identity, ControlError(request_id, "stopping", "the node stopped before answering"))
        exits = self.node.on_stop_request is not None
        for sock, identity, request_id in self._stop_waiters:
            await self._send(sock, identity, Stopping(request_id, pid=os.getpid(), process_exits=exits))
        self._router.close()
        if self._tcp is not None:
            self._tcp.close()
            self._auth.stop()
        self._pub.close()
        await asyncio.to_thread(self._context.term)  # waits for the replies to leave (linger)

    # --- events -----------------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        """A node listener: every event goes out as one NodeEvent; slow subscribers lose some."""
        message = NodeEvent(**{field: event.get(field) for field in EVENT_FIELDS if event.get(field) is not None})
        try:
            self._pub.send(ENCODER.encode(message), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    # --- requests ---------------------------------------------------------------------------

    async def _receive(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            identity, *body = await sock.recv_multipart()
            self._requests.put_nowait((sock, identity, body))

    async def _serve(self) -> None:
        """One request at a time, in arrival order, whichever socket it came on."""
        while True:
            sock, identity, body = await self._requests.get()
            reply = await self._answer(sock, identity, body)
            if reply is not None:
                await self._send(sock, identity, reply)

    async def _send(self, sock: zmq.asyncio.Socket, identity: bytes, reply: Message) -> None:
        await sock.send_multipart([identity, ENCODER.encode(reply)])

    async def _answer(self, sock: zmq.asyncio.Socket, identity: bytes, body: list[bytes]) -> Message | None:
        if len(body) != 1:
            return ControlError(0, "bad_request", f"expected one frame after the identity, got {len(body)}")
        try:
            request = TO_NODE.decode(body[0])
        except msgspec.DecodeError as exc:  # also ValidationError: unknown tag, wrong type, missing field
            return ControlError(0, "bad_request", f"undecodable request: {exc}")
        if isinstance(request, StopNode):
            self._stop_waiters.append((sock, identity, request.request_id))
            self.node.request_stop()
            return None
        if self.node.stopping:
            return ControlError(request.request_id, "stopping", f"node {self.node.name!r} is stopping")
        self._in_flight = (sock, identity, request.request_id)
        try:
            return await self._dispatch(request)
        except LookupError as exc:
            return ControlError(request.request_id, "not_found", str(exc.args[0]) if exc.args else "not found")
        except Exception as exc:  # a bug must not take the node down; say what happened
            log.exception("otpy[%s]: control request %r failed", self.node.name, request)
            return ControlError(request.request_id, "internal", f"{type(exc).__name__}: {exc}")
        finally:
            self._in_flight = None

    async def _dispatch(self, request: Message) -> Message:
        node = self.node
        match request:
            case WhichChildren(request_id=rid, supervisor=sup):
                return Children(rid, [ChildInfo(**c) for c in node.which_children(sup or None)])
            case CountChildren(request_id=rid, supervisor=sup):
                return Counts(rid, **node.count_children(sup or None))
            case StartChild(request_id=rid, supervisor=sup, spec=spec):
                return _outcome(rid, await node.start_child(sup or None, spec))
            case StartFromTemplate(request_id=rid, supervisor=sup, template=template, id=child_id, args=args):
                return _outcome(rid, await node.start_from_template(sup or None, template, child_id, args))
            case TerminateChild(request_id=rid, id=child_id, supervisor=sup):
                return _outcome(rid, await node.terminate_child(child_id, sup or None))
            case RestartChild(request_id=rid, id=child_id, supervisor=sup):
                return _outcome(rid, await node.restart_child(child_id, sup or None))
            case DeleteChild(request_id=rid, id=child_id, supervisor=sup):
                return _outcome(rid, await node.delete_child(child_id, sup or None))
            case Reconfigure(request_id=rid, supervisor=sup, source=source, target=target):
                return _outcome(rid, await node.reconfigure(sup or None, source, target))
            case SetVariables(request_id=rid, scope=scope, values=values):
                return _outcome(rid, await node.set_variables(scope, values))
            case GetStatus(request_id=rid):
                status = node.status()
                return Status(rid, node=status["node"], pid=status["pid"], tree=tree_entry(status["tree"]))
        raise AssertionError(f"unhandled request {request!r}")


def _outcome(request_id: int, result: Result) -> Outcome:
    return Outcome(request_id, result.outcome, pid=result.pid, detail=result.detail)


def tree_entry(snapshot: dict[str, Any]) -> TreeEntry:
    """A supervisor's ``snapshot()`` as wire data, with uptime instead of a monotonic start time."""
    started = snapshot.get("started_at")
    running = snapshot["state"] == "running" and started is not None
    children = snapshot.get("children")
    return TreeEntry(
        id=snapshot["id"], kind=snapshot["kind"], state=snapshot["state"], pid=snapshot.get("pid"),
        restarts=snapshot.get("restarts", 0), uptime=round(time.monotonic() - started, 3) if running else None,
        children=None if children is None else [tree_entry(c) for c in children],
    )
