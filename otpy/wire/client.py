"""Clients of a node's control socket: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

    import otpy
    with otpy.connect("hello") as node:
        print(node.which_children("team"))
        print(node.terminate_child("flaky"))   # Outcome(outcome='ok', ...)

Both have ``request(msg) -> reply`` (any ``protocol.ToNode`` message; the reply as the node
sent it) and the operations of ``otpy.Node`` on top of it (``operations.Operations``), with
the same outcomes: child operations return an ``otpy.Result`` (the wire's ``Outcome``); a
request the node refuses (no such supervisor, undecodable, the node is stopping) raises
``ControlError``; no reply within the timeout raises ``TimeoutError``. A local node that is
not running (no control socket: never started, or stopped) raises ``NodeNotFound`` before
anything is sent, as ``connect`` does; one found dead (its folder is left, its lock is free)
raises ``NodeStale`` at once, not after the timeout: a local client checks the lock every
0.1 s while it waits. A client is one DEALER
socket: use it from one thread (or one asyncio loop).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
import psutil
import zmq
import zmq.asyncio

from .codec import describe
from .operations import ControlError, Operations, expect  # ControlError: raised by the operations
from .protocol import (ENCODER, FROM_NODE, MAX_REQUEST_BYTES, FromNode, GetStatus, Outcome, Reload, Status, StopNode,
                       Stopping, ToNode)
from ..host.node_run import lock_holder, sweep_dead_run
from ..host.runtime_dir import control_endpoint, existing_node_dir, node_sockets, running_nodes
from ..specs.model import name_problem
from ..specs.values import MAX_SECONDS

DEFAULT_TIMEOUT = 30.0  # seconds; a start_child waits for READY, which may take start_timeout
PING_TIMEOUT = 0.5  # a live node that does not answer status within this is listed as silent
WATCH_PERIOD = 0.1  # seconds between two looks at a node's lock while waiting for its reply
ZMQ_MAX_MS = 2**31 - 1  # zmq's socket timeouts are C ints of milliseconds (~24.8 days)


class NodeNotFound(LookupError):
    """No node of that name is running (or several are and none was named)."""


class InvalidNodeName(NodeNotFound, ValueError):
    """Not a node name (``specs.model.name_problem``): no such node can run, and no path is built from it."""


class NodeStale(NodeNotFound):
    """The node's folder is left but its process died (its lock is free): nothing will answer."""

    def __init__(self, name: str) -> None:
        super().__init__(f"node {name!r} is not running (stale: its process died)")
        self.name = name


def socket_path(name: str) -> Path:
    return Path(control_endpoint(name).removeprefix("ipc://"))


def connect(name: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, endpoint: str | None = None,
            keys: str | os.PathLike | None = None) -> "Client":
    """A blocking client of node ``name`` (may be left out when exactly one node runs).

    ``endpoint="tcp://host:port"`` with ``keys`` (a folder with the node's ``server.key`` and a
    client ``*.key_secret``) reaches a node's CURVE-protected TCP control endpoint instead
    (``name``, if given, only names it in errors). Every operation works there as on a local
    node, except: ``reload(path)`` with a path (ControlError ``bad_request``, nothing sent: the
    node reloads its own file, ``reload()``), and ``stop()`` returns once the tree stopped,
    without waiting for the remote process. A key folder that lacks something is a ValueError
    saying what (``curve.client_keys_problem``); a node that does not answer, or does not know
    this client's key, is a TimeoutError (CURVE says nothing to a client it refuses).
    """
    if endpoint is not None:
        return Client(name or endpoint, timeout=timeout, endpoint=endpoint, keys=keys)
    return Client(pick_node(name), timeout=timeout)


def pick_node(name: str | None) -> str:
    """``name`` if it runs; without a name, the one node that answers. Else NodeNotFound (NodeStale
    for a named node whose process died). RuntimeDirError if its folder is not private."""
    if name is not None:
        check_reachable(name)
        return name
    statuses = node_statuses()
    live = [n for n, status in statuses if status is not None]
    if len(live) == 1:
        return live[0]
    if not live:
        _raise_if_only_stale([n for n, status in statuses if status is None])
        raise NodeNotFound("no node is running")
    raise NodeNotFound(f"several nodes are running ({', '.join(live)}): name one")


def check_reachable(name: str) -> None:
    """Raise at once what a request to local node ``name`` would only find out after its timeout:
    InvalidNodeName, NodeNotFound (no control socket: never started, or stopped), NodeStale."""
    if problem := name_problem(name, "node name"):
        raise InvalidNodeName(problem)
    folder = existing_node_dir(name)
    if folder is None or not (folder / "control.sock").exists():
        raise NodeNotFound(f"no node {name!r} is running{_running_hint()}")
    if not node_alive(name):
        raise NodeStale(name)


def _raise_if_only_stale(silent: list[str]) -> None:
    """NodeStale when the one node left is a dead one: say so (as for a named node), not "no node"."""
    stale = [name for name in silent if not node_alive(name)]
    if len(silent) == 1 and stale:
        raise NodeStale(stale[0])


def _running_hint() -> str:
    names = running_nodes()
    return f" (running: {', '.join(names)})" if names else ""


def node_alive(name: str) -> bool:
    """True while a process holds the node's lock: the kernel drops it when that process dies."""
    folder = existing_node_dir(name)
    return folder is not None and lock_holder(folder) is not None


def clear_stale(name: str) -> bool:
    """Remove a dead node's sockets and lock, and kill what its run left; False if it runs after all."""
    folder = existing_node_dir(name)
    return folder is None or sweep_dead_run(folder, node_sockets(name))


def node_statuses(timeout: float = PING_TIMEOUT) -> list[tuple[str, Status | None]]:
    """Every node with a control socket and its status; None for a dead one (``node_alive`` tells
    it from a live one that did not answer within ``timeout``)."""
    found = []
    for name in running_nodes():
        if not node_alive(name):
            found.append((name, None))
            continue
        with Client(name, timeout=timeout) as client:
            try:
                found.append((name, client.status()))
            except (TimeoutError, ControlError, NodeStale):
                found.append((name, None))
    return found


_stopping = expect(Stopping)


class Client(Operations):
    """A blocking client of one node. ``stop()`` returns once the node's tree has stopped."""

    def __init__(self, name: str, *, timeout: float = DEFAULT_TIMEOUT, endpoint: str | None = None,
                 keys: str | os.PathLike | None = None) -> None:
        self.name = name
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._local = endpoint is None  # a local node's lock says whether it is alive
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.connect(_secured(self._socket, name, endpoint, keys))
        except BaseException:  # a refused keys folder or endpoint: nothing is left open
            self.close()
            raise

    def request(self, request: ToNode, timeout: float | None = None,
                give_up: Callable[[], bool] | None = None) -> FromNode:
        """One round trip: ``request`` sent with a fresh ``request_id``, the node's reply as it is
        (a ``Refused`` included). A local node that is not there raises NodeNotFound before anything
        is sent (unless ``give_up`` is given: a node that is starting has no socket yet). Gives up
        early when ``give_up()`` says so (TimeoutError) or, by default for a local node, when its
        lock is free (NodeStale)."""
        if self._local and give_up is None:
            check_reachable(self.name)
        elif not self._local:
            check_remote(request)
        request_id = next(self._ids)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        # A DEALER blocks on send while it has no connection (a TCP peer that refused our CURVE
        # key, a node not there yet): the send shares the call's deadline.
        self._socket.setsockopt(zmq.SNDTIMEO, max(1, zmq_ms(limit)))
        data = encode_request(request, request_id)
        try:
            self._socket.send(data)
        except zmq.Again:
            raise TimeoutError(f"node {self.name!r}: the request could not be sent within {limit} s") from None
        watch = give_up is not None or self._local
        while (left := deadline - time.monotonic()) > 0:
            if self._socket.poll(zmq_ms(min(left, WATCH_PERIOD if watch else left)) + 1):
                reply = FROM_NODE.decode(self._socket.recv())
                if reply.request_id in (request_id, 0):
                    return reply
            elif give_up is not None:
                if give_up():
                    break
            elif self._local and not node_alive(self.name):
                raise NodeStale(self.name)
        raise TimeoutError(f"node {self.name!r} did not answer within {limit} s")

    def _ask(self, request: ToNode, take: Callable[[FromNode], Any]) -> Any:
        return take(self.request(request))

    def wait_ready(self, timeout: float, give_up: Callable[[], bool]) -> Status:
        """Status, waiting for a node that is starting (its lock may not be taken yet, so only
        ``give_up()`` ends the wait early; it is checked every 0.1 s)."""
        return expect(Status)(self.request(GetStatus(0), timeout, give_up))

    def stop(self, *, timeout: float | None = 120.0) -> Outcome:
        """Ordered shutdown; returns after the tree stopped and, for a local node (``otpy start``), its
        process exited (a remote node's pid is another host's: not waited for here)."""
        reply = _stopping(self.request(StopNode(0), timeout))
        if self._local:
            wait_gone(reply, timeout or 120.0)
        return Outcome("ok", pid=reply.pid)

    def close(self) -> None:
        self._socket.close()
        self._context.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_remote(request: ToNode) -> None:
    """ControlError ``bad_request`` for a request that means something else over TCP: a reload
    of a path (the client's file, which the node would look for on its own host)."""
    if isinstance(request, Reload) and request.path:
        raise ControlError("bad_request", f"reload({request.path!r}) over TCP: the node reads files on its own "
                           "host, not this one; reload() reloads the file it was started from (nothing was sent)")


def encode_request(request: ToNode, request_id: int) -> bytes:
    """``request`` on the wire, or ``ControlError`` (``bad_request``) if it cannot be encoded or the
    node would drop it: a frame over ``MAX_REQUEST_BYTES`` never reaches it (the caller would wait
    its whole timeout)."""
    try:
        data = ENCODER.encode(msgspec.structs.replace(request, request_id=request_id))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:  # a lone surrogate, 1 << 64, ...
        raise ControlError("bad_request", f"{type(request).__name__}: cannot be sent: {describe(exc)}; "
                           "nothing was sent") from None
    if len(data) > MAX_REQUEST_BYTES:
        raise ControlError("bad_request", f"{type(request).__name__}: the request is {len(data):,} bytes; the node "
                           f"takes at most {MAX_REQUEST_BYTES:,} (1 MiB): nothing was sent")
    return data


def zmq_ms(seconds: float) -> int:
    """``seconds`` as zmq's milliseconds, clamped to what its C int holds (``ZMQ_MAX_MS``, ~24.8
    days): a longer timeout (``otpy stop --timeout 3e6``, ``timeout=math.inf``) waits that long,
    then again as its deadline says, instead of an OverflowError from ``setsockopt``."""
    ms = seconds * 1000
    if not ms < ZMQ_MAX_MS - 1:  # beyond, inf or nan; one less: a poll adds 1
        return ZMQ_MAX_MS - 1
    return max(0, int(ms))


def _secured(socket: zmq.Socket, name: str, endpoint: str | None, keys) -> str:
    """The endpoint to connect to: the node's ipc socket, or a TCP one (CURVE keys required)."""
    if endpoint is None:
        return control_endpoint(name)
    if not endpoint.startswith("tcp://") or keys is None:
        raise ValueError("a TCP control endpoint needs endpoint='tcp://host:port' and keys=FOLDER (CURVE)")
    from .curve import client_keys_problem, connect_curve

    if problem := client_keys_problem(os.path.expanduser(os.fspath(keys)), private=False):
        raise ValueError(f"keys: {problem}")
    keys = os.path.expanduser(os.fspath(keys))

    connect_curve(socket, keys)
    socket.setsockopt(zmq.IPV6, 1)  # tcp://[::1]:PORT as the node binds it
    return endpoint


def wait_gone(reply: Stopping, timeout: float) -> None:
    """After Stopping: when the node runs in ``otpy start``, wait until its process exited."""
    if reply.process_exits and not wait_exit(reply.pid, timeout):
        raise TimeoutError(f"node process {reply.pid} still runs {timeout} s after its tree stopped")


def wait_exit(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a zombie counts: its reaper may be slow), False on timeout
    (ten years at most, as every duration: select refuses a time beyond its clock's range)."""
    timeout = min(timeout, MAX_SECONDS)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfd (old kernel): psutil, which waits for the zombie to be reaped
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            return False
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


class AsyncClient(Operations):
    """The asyncio twin of ``Client``: every operation is a coroutine."""

    def __init__(self, name: str, *, timeout: float = DEFAULT_TIMEOUT, endpoint: str | None = None,
                 keys: str | os.PathLike | None = None) -> None:
        self.name = name
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._local = endpoint is None
        if self._local and (problem := name_problem(name, "node name")):
            raise InvalidNodeName(problem)
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.connect(_secured(self._socket, name, endpoint, keys))
        except BaseException:  # a refused keys folder or endpoint: nothing is left open
            self.close()
            raise

    async def request(self, request: ToNode, timeout: float | None = None) -> FromNode:
        """As ``Client.request``: a local node that is not there raises NodeNotFound before anything
        is sent (as ``otpy.connect`` does), one found dead while we wait NodeStale within 0.1 s."""
        if self._local:
            check_reachable(self.name)
        else:
            check_remote(request)
        request_id = next(self._ids)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        data = encode_request(request, request_id)
        try:  # a send with no connection waits (see Client.request): it shares the call's deadline
            await asyncio.wait_for(self._socket.send(data), limit)
        except TimeoutError:
            raise TimeoutError(f"node {self.name!r}: the request could not be sent within {limit} s") from None
        while (left := deadline - time.monotonic()) > 0:
            if await self._socket.poll(zmq_ms(min(left, WATCH_PERIOD if self._local else left)) + 1):
                reply = FROM_NODE.decode(await self._socket.recv())
                if reply.request_id in (request_id, 0):
                    return reply
            elif self._local and not node_alive(self.name):
                raise NodeStale(self.name)
        raise TimeoutError(f"node {self.name!r} did not answer within {limit} s")

    async def _ask(self, request: ToNode, take: Callable[[FromNode], Any]) -> Any:
        return take(await self.request(request))

    async def stop(self, *, timeout: float | None = 120.0) -> Outcome:
        reply = _stopping(await self.request(StopNode(0), timeout))
        if self._local:  # a remote node's pid is another host's
            await asyncio.to_thread(wait_gone, reply, timeout or 120.0)
        return Outcome("ok", pid=reply.pid)

    def close(self) -> None:
        self._socket.close()
        self._context.term()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
