"""Calls to the agents of a node on another host: ``RemoteCaller(endpoint, keys)``.

A node with ``control_tcp = "tcp://HOST:PORT"`` serves calls on the port after it (its call
gateway, ``node.call_gateway``), CURVE only, for the clients whose public key it authorized
(the same keys as ``--endpoint``/``--keys``). A script on any machine::

    with RemoteCaller("tcp://10.0.0.2:7000", keys="~/otpy-keys") as caller:
        caller.call("greeter", {"name": "Ada"})          # {'text': 'hi, Ada'}

``endpoint`` is the node's ``control_tcp``; ``keys`` a folder with the node's ``server.key`` and
one client ``NAME.key_secret`` (``otpy keys new``). ``call`` does the I/O on the calling thread
(one DEALER per thread); ``submit``/``acall`` on one background thread. The gateway makes the
local call on the agent's node, so drain notices, the resend-once of a call refused while
draining and the typed errors are a local call's (``NoSuchAgent``, ``AgentCrashed``,
``CallTimeout``, ``Overloaded``, ``RemoteError``, ...). Of its own this side adds
``NodeUnreachable``: the link to the node broke while the call was on it, or the node refused
this client's key; such a call may have run, and is never sent again (not even with
``retries``). A node that never answers (down, unreachable, or a client it does not know)
gives ``CallTimeout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import os
import queue
import threading
import time
from typing import Any, Callable, Mapping

import msgspec
import zmq
from zmq.utils.monitor import recv_monitor_message

from .call_book import BlockingResult
from .call_engine import call_limits_problem, fail_future, resolve_future
from .codec import MAX_CALL_BYTES, MAX_DEPTH, WireError, decode, encode
from .curve import connect_curve
from .errors import (AgentCrashed, BadRequest, CallError, CallTimeout, NoSuchAgent, NodeUnreachable, Overloaded,
                     RemoteError, Unencodable)
from .protocol import ENCODER, first_unencodable
from .remote_protocol import FROM_GATEWAY, RemoteCall, RemoteFailed, RemoteReply, calls_endpoint

__all__ = ["RemoteCaller"]

HEARTBEAT_IVL_MS = 1000  # a link that carries nothing for HEARTBEAT_TIMEOUT_MS is taken as broken
HEARTBEAT_TIMEOUT_MS = 3000
RECONNECT_IVL_MS = 100  # ZeroMQ's first reconnect after a link breaks, doubled up to RECONNECT_IVL_MAX_MS
RECONNECT_IVL_MAX_MS = 5000
_EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def encode_inputs(inputs: Mapping[str, Any]) -> bytes:
    """The msgpack map of ``inputs``, checked as a local call's (``call_messages.encode_call``):
    ``Unencodable`` names the input that cannot be sent, or says the call is too big."""
    try:
        for name in inputs:
            if not isinstance(name, str):
                raise WireError("input names must be str")
        data = encode(ENCODER, inputs if type(inputs) is dict else dict(inputs), MAX_DEPTH - 1)
    except WireError as exc:
        raise Unencodable(f"input {first_unencodable(dict(inputs))!r} cannot be sent: {exc}") from None
    if len(data) > MAX_CALL_BYTES - 4096:  # the agent's socket would drop it
        raise Unencodable(f"the call is {len(data)} bytes, over the limit of {MAX_CALL_BYTES - 4096}")
    return data


def error_of(failed: RemoteFailed, label: str) -> CallError:
    """The typed error of a gateway's answer (the local call's on the agent's node)."""
    message = failed.message
    match failed.kind:
        case "no_such_agent":
            return NoSuchAgent(message, agent=label)
        case "crashed":
            return AgentCrashed(message, agent=label)
        case "timeout":
            return CallTimeout(message, agent=label)
        case "overloaded":
            return Overloaded(message, agent=label)
        case "raised":
            return RemoteError(message, agent=label, error_type=failed.error_type, remote_traceback=failed.traceback)
        case "unencodable":
            return Unencodable(message, agent=label)
        case "bad_request":
            return BadRequest(message, agent=label)
        case "stopping":
            return NodeUnreachable(message, agent=label)
        case _:
            return CallError(message, agent=label)


class _Call:
    __slots__ = ("agent", "label", "inputs", "timeout", "attempts_left", "future", "call_id", "deadline",
                 "on_wire")

    def __init__(self, agent: str, label: str, inputs: bytes, timeout: float, retries: int, future: Any) -> None:
        self.agent, self.label, self.inputs, self.timeout = agent, label, inputs, timeout
        self.attempts_left, self.future = retries, future
        self.call_id, self.deadline, self.on_wire = 0, 0.0, False


class _Link:
    """One DEALER to a node's gateway (owned by one thread) and the calls on it."""

    def __init__(self, owner: "RemoteCaller", stop: int | None) -> None:
        self.owner = owner
        self.stop = stop
        self.calls: dict[int, _Call] = {}
        self.deadlines: list[tuple[float, int]] = []
        self.poller = zmq.Poller()
        if stop is not None:
            self.poller.register(stop, zmq.POLLIN)
        self.dealer = self.monitor = None
        self._open()

    def _open(self) -> None:
        context = self.owner._context_()
        try:
            dealer = context.socket(zmq.DEALER)
        except zmq.ZMQError as exc:
            raise Overloaded(f"cannot open a socket to {self.owner.endpoint}: {exc}") from None
        dealer.linger = 0
        dealer.setsockopt(zmq.IMMEDIATE, 0)
        dealer.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        dealer.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        dealer.setsockopt(zmq.MAXMSGSIZE, MAX_CALL_BYTES + 65536)
        dealer.setsockopt(zmq.IPV6, 1)
        try:
            connect_curve(dealer, self.owner.keys)
            monitor = dealer.get_monitor_socket(_EVENTS)
        except (OSError, ValueError, zmq.ZMQError) as exc:
            dealer.close(linger=0)
            raise NodeUnreachable(f"cannot reach node {self.owner.endpoint}: {exc}") from None
        try:
            dealer.connect(self.owner.gateway)
        except zmq.ZMQError as exc:  # never left half made: the context's term() would wait for it
            dealer.disable_monitor()
            monitor.close(linger=0)
            dealer.close(linger=0)
            raise NodeUnreachable(f"cannot reach node {self.owner.endpoint}: {exc}") from None
        self.monitor = monitor
        self.dealer, self.connected = dealer, False
        self.poller.register(dealer, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def _drop_socket(self) -> None:
        if self.dealer is None:
            return  # dropped already (refused): the next call opens another
        for sock in (self.dealer, self.monitor):
            self.poller.unregister(sock)
        try:
            self.dealer.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.dealer.close(linger=0)
        self.dealer = self.monitor = None

    # --- the owner's calls -------------------------------------------------------------------

    def start(self, call: _Call) -> None:
        call.call_id = self.owner._new_id()
        call.deadline = time.monotonic() + call.timeout
        data = ENCODER.encode(RemoteCall(call_id=call.call_id, agent=call.agent, inputs=msgspec.Raw(call.inputs),
                                         timeout=call.timeout))
        if self.dealer is None:
            try:
                self._open()  # the node refused the last one: try again, at the pace of the calls
            except CallError as exc:
                fail_future(call.future, type(exc)(str(exc), agent=call.label))
                return
        elif self.monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._events()  # a break already reported must not fail this call
        try:
            self.dealer.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
        except zmq.Again:
            fail_future(call.future, Overloaded(f"{len(self.calls)} calls already wait for node {self.owner.endpoint}",
                                          agent=call.label))
            return
        call.on_wire = self.connected
        self.calls[call.call_id] = call
        heapq.heappush(self.deadlines, (call.deadline, call.call_id))

    def wait(self, call: _Call) -> None:
        while not call.future.done():
            for sock, _ in self.poller.poll(self.poll_timeout_ms()):
                if sock == self.stop:
                    return
                self.handle(sock)
            self.expire()

    def handle(self, sock: Any) -> None:
        if sock is self.dealer:
            self._replies()
        elif sock is self.monitor:
            self._events()

    def poll_timeout_ms(self) -> int | None:
        if not self.deadlines:
            return None
        return min(2**31 - 1, max(0, int((self.deadlines[0][0] - time.monotonic()) * 1000) + 1))

    def expire(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, call_id = heapq.heappop(self.deadlines)
            if (call := self.calls.pop(call_id, None)) is not None:
                self._end(call, CallTimeout(f"no reply from {call.label!r} within {call.timeout} s", agent=call.label))
        if not self.calls:
            self.deadlines.clear()

    def close(self, error: str) -> None:
        calls, self.calls = self.calls, {}
        for call in calls.values():
            fail_future(call.future, CallError(error, agent=call.label))
        self._drop_socket()

    # --- what comes back ---------------------------------------------------------------------

    def _replies(self) -> None:
        dealer = self.dealer
        while True:
            try:
                data = dealer.recv(zmq.NOBLOCK)  # bytes: cheaper than a zmq.Frame for the usual small reply
            except zmq.Again:
                return
            try:
                message = decode(FROM_GATEWAY, data)
            except WireError:
                continue  # nobody can be told: its call times out
            call = self.calls.pop(message.call_id, None)
            if call is None:
                continue  # a late answer: its call ended
            match message:
                case RemoteReply(outputs=outputs):
                    resolve_future(call.future, outputs)
                case RemoteFailed() as failed:
                    self._end(call, error_of(failed, call.label))
            if dealer is not self.dealer or not dealer.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return  # nothing more waits (cheaper to ask than to get zmq.Again)

    def _events(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
                for call in self.calls.values():
                    call.on_wire = True
            elif event == zmq.EVENT_DISCONNECTED:
                self.connected = False
                self._lost([c for c in self.calls.values() if c.on_wire],
                           f"the link to node {self.owner.endpoint} broke during the call (it may have run)")
            elif event & (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self._lost(list(self.calls.values()),
                           f"node {self.owner.endpoint} refused this client (is its public key authorized there, "
                           f"and server.key the node's?)")
                # what waited in its queue never goes out, and nothing reconnects until a call needs
                # it: a refused key does not knock again and again while the caller is idle
                self._drop_socket()
                return

    def _lost(self, calls: list[_Call], why: str) -> None:
        for call in calls:
            del self.calls[call.call_id]
            fail_future(call.future, NodeUnreachable(why, agent=call.label))

    def _end(self, call: _Call, error: CallError) -> None:
        """A retryable error with attempts left: again, as a new call; otherwise the call fails."""
        if error.retryable and call.attempts_left > 0 and not call.future.done():
            call.attempts_left -= 1
            self.start(call)
        else:
            fail_future(call.future, error)


class RemoteCaller:
    """Calls the agents of the node serving ``endpoint`` (its ``control_tcp``), with the client key
    pair and the node's public key in ``keys``. Thread-safe; close it (or use ``with``) when done."""

    def __init__(self, endpoint: str, keys: str | os.PathLike, *, name: str = "") -> None:
        """``name``: the node's, shown in errors (``AGENT@NAME``). ValueError: a bad endpoint or a
        keys folder that lacks something (``curve.client_keys_problem``)."""
        from .curve import client_keys_problem

        self.endpoint = endpoint
        self.gateway = calls_endpoint(endpoint)
        self.keys = os.path.expanduser(os.fspath(keys))
        if (problem := client_keys_problem(self.keys)) is not None:
            raise ValueError(problem)
        self.name = name
        self._ids = itertools.count(1)
        self._new_id = self._ids.__next__
        self._lock = threading.Lock()
        self._left = threading.Condition(self._lock)
        self._context: zmq.Context | None = None
        self._own = threading.local()
        self._links: dict[_Link, threading.Thread] = {}
        self._busy: set[_Link] = set()
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def label(self, agent: str) -> str:
        """How errors name ``agent`` of this node: ``AGENT@NODE`` (``AGENT`` without a ``name``)."""
        return f"{agent}@{self.name}" if self.name else agent

    def call(self, agent: str, inputs: Mapping[str, Any] | None = None, *, timeout: float = 5.0,
             retries: int = 0, label: str | None = None) -> dict[str, Any]:
        """Call ``agent`` of the node and wait for its outputs (at most ``timeout`` s per attempt;
        ``retries``: attempts again after a retryable error). ``label``: the name errors give."""
        call = self._new(agent, inputs, timeout, retries, BlockingResult(), label)
        link = self._enter(call.label)
        try:
            link.start(call)
            link.wait(call)
        finally:
            self._leave(link)
        if not call.future.done():
            raise CallError("the caller is closed", agent=call.label)
        return call.future.result()

    def submit(self, agent: str, inputs: Mapping[str, Any] | None = None, *, timeout: float = 5.0,
               retries: int = 0, label: str | None = None) -> concurrent.futures.Future:
        """Send a call without waiting; the Future gives the outputs or raises a ``CallError``."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            call = self._new(agent, inputs, timeout, retries, future, label)
        except CallError as exc:
            future.set_exception(exc)
            return future
        with self._lock:
            if self._closed:
                future.set_exception(CallError("the caller is closed", agent=call.label))
                return future
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name=f"otpy-remote-{self.gateway}")
                self._thread.start()
            self._commands.put(call)
        os.eventfd_write(self._wake, 1)
        return future

    async def acall(self, agent: str, inputs: Mapping[str, Any] | None = None, *, timeout: float = 5.0,
                    retries: int = 0, label: str | None = None) -> dict[str, Any]:
        """``call`` for asyncio code."""
        return await asyncio.wrap_future(self.submit(agent, inputs, timeout=timeout, retries=retries, label=label))

    def close(self) -> None:
        """Fail the calls still waiting (``CallError``), close the sockets, stop the I/O thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            idle = [link for link in self._links if link not in self._busy]
            for link in idle:
                del self._links[link]
        os.eventfd_write(self._stop, 1)
        with self._left:
            self._left.wait_for(lambda: not self._busy)
        if thread is not None:
            self._commands.put(None)
            os.eventfd_write(self._wake, 1)
            thread.join()
        for link in idle:
            link.close("the caller is closed")
        if self._context is not None:
            self._context.term()
        os.close(self._stop)
        os.close(self._wake)

    def __enter__(self) -> "RemoteCaller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- inside ------------------------------------------------------------------------------

    def _new(self, agent: str, inputs: Mapping[str, Any] | None, timeout: float, retries: int, future: Any,
             label: str | None) -> _Call:
        if problem := call_limits_problem(timeout, retries):
            raise ValueError(problem)
        label = label or self.label(agent)
        if self._closed:
            raise CallError("the caller is closed", agent=label)
        if not isinstance(agent, str) or not agent:
            raise NoSuchAgent(f"no agent {agent!r}: expected an agent's id", agent=label)
        return _Call(agent, label, encode_inputs(inputs or {}), float(timeout), retries, future)

    def _context_(self) -> zmq.Context:
        if self._context is None:
            try:
                self._context = zmq.Context(io_threads=1)
            except zmq.ZMQError as exc:
                raise Overloaded(f"cannot start ZeroMQ: {exc}") from None
        return self._context

    def _enter(self, label: str) -> _Link:
        link = self._own.__dict__.get("link")
        with self._lock:
            if self._closed:
                raise CallError("the caller is closed", agent=label)
            if link is None:
                link = self._own.link = _Link(self, self._stop)
                self._links[link] = threading.current_thread()
                for old in [old for old, thread in self._links.items() if not thread.is_alive()]:
                    del self._links[old]
                    old.close("the caller is closed")
            self._busy.add(link)
        return link

    def _leave(self, link: _Link) -> None:
        with self._lock:
            closing = self._closed and self._links.pop(link, None) is not None
            if not closing:
                self._busy.discard(link)
        if closing:
            try:
                link.close("the caller is closed")
            finally:
                with self._left:
                    self._busy.discard(link)
                    self._left.notify_all()

    def _run(self) -> None:
        try:
            with self._lock:
                link = _Link(self, None)
        except CallError as exc:  # no socket at all: every call sent here fails so, until close
            self._fail_commands(exc)
            return
        link.poller.register(self._wake, zmq.POLLIN)
        running = True
        try:
            while running:
                for sock, _ in link.poller.poll(link.poll_timeout_ms()):
                    if sock == self._wake:
                        os.eventfd_read(self._wake)
                        running = self._take_commands(link.start)
                    else:
                        link.handle(sock)
                link.expire()
        finally:
            link.close("the caller is closed")


    def _fail_commands(self, error: CallError) -> None:
        poller = zmq.Poller()
        poller.register(self._wake, zmq.POLLIN)
        running = True
        while running:
            poller.poll()
            os.eventfd_read(self._wake)
            running = self._take_commands(
                lambda call: fail_future(call.future, type(error)(str(error), agent=call.label)))

    def _take_commands(self, handle: Callable[["_Call"], None]) -> bool:
        """Hand each call waiting in the queue to ``handle``; False once ``close`` asked to stop."""
        while True:
            try:
                call = self._commands.get_nowait()
            except queue.Empty:
                return True
            if call is None:
                return False
            handle(call)
