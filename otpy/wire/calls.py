"""Calls to agents: a ``Caller`` sends ``Call`` messages straight to an agent's ROUTER socket.

Each agent (a program child) binds ``agent_endpoint(node, child_id)``; a replacement
process binds the same address. A ``Caller`` keeps one DEALER per agent, connected on the
first call, and one background I/O thread that owns every socket: ``call``, ``acall`` and
``submit`` hand it the call and wait on a ``concurrent.futures.Future``::

    with Caller("hello") as caller:
        caller.call("greeter", {"name": "Ada"})          # {'text': 'hi, Ada'}

While an agent restarts, calls queue in its DEALER (``IMMEDIATE`` off) and go out when the
replacement binds; a socket monitor sees the connection break and fails the calls that
were in flight on it with ``AgentCrashed``. Every call has a deadline (``CallTimeout``);
a reply whose call id is no longer awaited is dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import zmq
from zmq.utils.monitor import recv_monitor_message

from .call_messages import AgentDraining, encode_call, error_of, read_reply
from .errors import AgentCrashed, CallError, CallTimeout, NoSuchAgent
from .protocol import DRAIN_NOTICE, CallFailed, Reply
from ..host.runtime_dir import agent_endpoint, agent_socket_path
from .codec import MAX_CALL_BYTES, Complaints

RECONNECT_IVL_MS = 2
_complain = Complaints(lambda line: print(line, file=sys.stderr, flush=True))
_MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED


# --- the caller ---------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Pending:
    agent: str
    inputs: dict[str, Any]
    timeout: float
    attempts_left: int
    future: concurrent.futures.Future
    payload: bytes = b""
    call_id: int = 0
    deadline: float = 0.0


@dataclass(slots=True, eq=False)
class _Link:
    """One agent's DEALER and what is on it: sent while connected (in flight) or queued."""

    agent: str
    dealer: zmq.Socket
    monitor: zmq.Socket
    connected: bool = False
    draining: bool = False  # the agent sent its drain notice: new calls go on a new link
    in_flight: set[int] = field(default_factory=set)
    queued: set[int] = field(default_factory=set)


class Caller:
    """Calls the agents of node ``node``. Thread-safe; close it (or use ``with``) when done."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._ids = itertools.count(1)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._known: set[str] = set()  # agents whose socket file was seen
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._context: zmq.Context | None = None
        self._own = threading.local()  # this thread's links, for ``call`` (no hand-off)
        self._own_links: list[_Link] = []
        self._closed = False

    # --- the public calls -----------------------------------------------------------------

    def submit(self, agent_id: str, inputs: Mapping[str, Any] | None = None, *,
               timeout: float = 5.0, retries: int = 0) -> concurrent.futures.Future:
        """Send a call without waiting; the Future gives the outputs or raises a ``CallError``."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._check_agent(agent_id)
            inputs = dict(inputs or {})
            call_id = next(self._ids)
            payload = encode_call(call_id, inputs)
        except CallError as exc:
            future.set_exception(exc)
            return future
        self._post(_Pending(agent_id, inputs, timeout, retries, future, payload, call_id))
        return future

    def call(self, agent_id: str, inputs: Mapping[str, Any] | None = None, *,
             timeout: float = 5.0, retries: int = 0) -> dict[str, Any]:
        """Call ``agent_id`` and wait for its outputs (at most ``timeout`` s per attempt).

        The calling thread does the I/O itself, on a DEALER of its own: no thread hand-off.
        """
        if self._closed:
            raise CallError("the caller is closed", agent=agent_id)
        self._check_agent(agent_id)
        inputs = dict(inputs or {})
        for attempts_left in range(retries, -1, -1):
            deadline = time.monotonic() + timeout
            while True:
                call_id = next(self._ids)
                link = self._own_link(agent_id)
                try:
                    return _call_on(link, call_id, encode_call(call_id, inputs), max(0.0, deadline - time.monotonic()))
                except AgentDraining:  # not run: send it again, on a new connection, in the same attempt
                    self._renew_own_link(agent_id)
                except CallError as error:
                    if not error.retryable or attempts_left == 0:
                        raise
                    break
        raise AssertionError("unreachable")

    async def acall(self, agent_id: str, inputs: Mapping[str, Any] | None = None, *,
                    timeout: float = 5.0, retries: int = 0) -> dict[str, Any]:
        """``call`` for asyncio code."""
        return await asyncio.wrap_future(self.submit(agent_id, inputs, timeout=timeout, retries=retries))

    def close(self) -> None:
        """Fail the calls still waiting (``CallError``), close the sockets, stop the I/O thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._commands.put(None)
            os.eventfd_write(self._wake, 1)
            thread.join()
        for link in self._own_links:
            _close_link(link)
        if self._context is not None:
            self._context.term()
        os.close(self._wake)

    def __enter__(self) -> "Caller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the caller's side of the hand-off --------------------------------------------------

    def _check_agent(self, agent_id: str) -> None:
        if agent_id in self._known:
            return
        if "/" in agent_id or not agent_socket_path(self.node, agent_id).exists():
            raise NoSuchAgent(f"node {self.node!r} has no agent {agent_id!r}", agent=agent_id)
        self._known.add(agent_id)

    def _context_(self) -> zmq.Context:
        with self._lock:
            if self._closed:
                raise CallError("the caller is closed")
            if self._context is None:
                self._context = zmq.Context(io_threads=1)
            return self._context

    def _own_link(self, agent_id: str) -> _Link:
        links = self._own.__dict__.setdefault("links", {})
        if (link := links.get(agent_id)) is None:
            link = links[agent_id] = _open_link(self._context_(), self.node, agent_id)
            with self._lock:
                self._own_links.append(link)
        return link

    def _renew_own_link(self, agent_id: str) -> None:
        """The agent's name now belongs to a new process: connect again, the old link is done."""
        link = self._own.__dict__["links"].pop(agent_id)
        with self._lock:
            self._own_links.remove(link)
        _close_link(link)

    def _post(self, pending: _Pending) -> None:
        with self._lock:
            if self._closed:
                pending.future.set_exception(CallError("the caller is closed", agent=pending.agent))
                return
            if self._thread is None:
                if self._context is None:
                    self._context = zmq.Context(io_threads=1)
                self._thread = threading.Thread(target=_IOLoop(self).run, daemon=True,
                                                name=f"otpy-caller-{self.node}")
                self._thread.start()
            self._commands.put(pending)
        os.eventfd_write(self._wake, 1)


class _IOLoop:
    """The I/O thread: owns the context and every socket; resolves the futures."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.context = caller._context
        self.poller = zmq.Poller()
        self.poller.register(caller._wake, zmq.POLLIN)
        self.links: dict[str, _Link] = {}
        self.by_socket: dict[zmq.Socket, tuple[str, _Link]] = {}
        self.pending: dict[int, _Pending] = {}
        self.deadlines: list[tuple[float, int]] = []
        self.running = True

    def run(self) -> None:
        try:
            while self.running:
                try:
                    for what, _ in self.poller.poll(self._poll_timeout_ms()):
                        self._handle(what)
                    self._expire(time.monotonic())
                except Exception as exc:  # a bug here must not leave every later call hanging
                    _complain(f"otpy: the caller's I/O thread of {self.caller.node!r} carried on after "
                              f"{type(exc).__name__}: {exc}")
        finally:
            self._shut()

    def _handle(self, what) -> None:
        if what == self.caller._wake:
            os.eventfd_read(self.caller._wake)
            self._take_commands()
            return
        match self.by_socket.get(what):  # None: a link retired earlier in this round
            case ("dealer", link):
                self._receive_replies(link)
                self._retire_if_idle(link)
            case ("monitor", link):
                self._receive_events(link)
                self._retire_if_idle(link)

    def _poll_timeout_ms(self) -> int | None:
        if not self.deadlines:
            return None
        return max(0, int((self.deadlines[0][0] - time.monotonic()) * 1000) + 1)

    # --- sending ----------------------------------------------------------------------------

    def _take_commands(self) -> None:
        while True:
            try:
                pending = self.caller._commands.get_nowait()
            except queue.Empty:
                return
            if pending is None:
                self.running = False
                return
            self._send(pending)

    def _send(self, pending: _Pending, link: _Link | None = None) -> None:
        """Send ``pending``; ``link`` given: a resend of a call the agent did not run (same deadline)."""
        resend = link is not None
        if link is None and (current := self.links.get(pending.agent)) is not None:
            self._receive_replies(current)  # a drain notice waiting there moves the name to a new link
        try:
            link = link or self.links.get(pending.agent) or self._connect(pending.agent)
        except CallError as error:
            _fail(pending.future, error)
            return
        self._receive_events(link)  # a disconnect already reported must not fail this call
        self.pending[pending.call_id] = pending
        if not resend:
            pending.deadline = time.monotonic() + pending.timeout
            heapq.heappush(self.deadlines, (pending.deadline, pending.call_id))
        (link.in_flight if link.connected else link.queued).add(pending.call_id)
        link.dealer.send(pending.payload, copy=False)

    def _renew(self, old: _Link) -> _Link:
        """A draining agent: new calls go on a new connection (to the name's next holder); the
        old link stays until the calls still on it are answered or lost (whoever read from it
        retires it after: it may still be reading)."""
        if self.links.get(old.agent) is old:
            self._connect(old.agent)
        return self.links[old.agent]

    def _retire_if_idle(self, link: _Link) -> None:
        if self.links.get(link.agent) is not link and not link.in_flight and not link.queued:
            for socket in (link.dealer, link.monitor):
                self.poller.unregister(socket)
                del self.by_socket[socket]
            _close_link(link)

    def _connect(self, agent: str) -> _Link:
        link = self.links[agent] = _open_link(self.context, self.caller.node, agent)  # NoSuchAgent: nothing kept
        self.by_socket[link.dealer] = ("dealer", link)
        self.by_socket[link.monitor] = ("monitor", link)
        self.poller.register(link.dealer, zmq.POLLIN)
        self.poller.register(link.monitor, zmq.POLLIN)
        return link

    # --- receiving --------------------------------------------------------------------------

    def _receive_replies(self, link: _Link) -> None:
        while True:
            message = _next_reply(link)
            if message is None:
                return
            if message.call_id == DRAIN_NOTICE:  # new calls go on a new link
                link.draining = True
                self._renew(link)
                continue
            pending = self._forget(message.call_id, link)
            if pending is None:
                continue  # a late reply: its call already ended
            match message:
                case Reply(outputs=outputs):
                    _resolve(pending.future, outputs)
                case CallFailed(kind="draining"):
                    self._send(pending, self._renew(link))  # not run: again, on a new connection
                case CallFailed() as failed:
                    self._fail_or_retry(pending, error_of(failed, link.agent))

    def _receive_events(self, link: _Link) -> None:
        while True:
            match _next_event(link):
                case None:
                    return
                case zmq.EVENT_CONNECTED:
                    link.connected = True
                    link.in_flight |= link.queued
                    link.queued.clear()
                case zmq.EVENT_DISCONNECTED:
                    self._receive_replies(link)  # replies that beat the disconnect still count
                    link.connected = False
                    self._crash_in_flight(link)

    def _crash_in_flight(self, link: _Link) -> None:
        crashed, link.in_flight = link.in_flight, set()
        for call_id in crashed:
            pending = self.pending.pop(call_id, None)
            if pending is not None:
                error = AgentCrashed(f"agent {link.agent!r} went down during the call", agent=link.agent)
                self._fail_or_retry(pending, error)

    # --- endings ----------------------------------------------------------------------------

    def _forget(self, call_id: int, link: _Link | None = None) -> _Pending | None:
        pending = self.pending.pop(call_id, None)
        if pending is not None:
            link = link or self.links.get(pending.agent)
            if link is not None:
                link.in_flight.discard(call_id)
                link.queued.discard(call_id)
        return pending

    def _expire(self, now: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            _, call_id = heapq.heappop(self.deadlines)
            pending = self._forget(call_id)
            if pending is not None:
                error = CallTimeout(f"no reply from {pending.agent!r} within {pending.timeout} s",
                                    agent=pending.agent)
                self._fail_or_retry(pending, error)

    def _fail_or_retry(self, pending: _Pending, error: CallError) -> None:
        if not error.retryable or pending.attempts_left <= 0 or pending.future.done():
            _fail(pending.future, error)
            return
        pending.attempts_left -= 1
        pending.call_id = next(self.caller._ids)
        pending.payload = encode_call(pending.call_id, pending.inputs)
        self._send(pending)

    def _shut(self) -> None:
        for pending in self.pending.values():
            _fail(pending.future, CallError("the caller is closed", agent=pending.agent))
        for link in self.links.values():
            _close_link(link)


def _open_link(context: zmq.Context, node: str, agent: str) -> _Link:
    """A DEALER to ``agent`` (queues while the agent is down) and the monitor of its connection."""
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    dealer.setsockopt(zmq.IMMEDIATE, 0)
    dealer.setsockopt(zmq.MAXMSGSIZE, MAX_CALL_BYTES)  # agents send no bigger reply
    monitor = dealer.get_monitor_socket(_MONITORED)
    link = _Link(agent, dealer, monitor)
    try:
        dealer.connect(agent_endpoint(node, agent))
    except zmq.ZMQError as exc:  # a path too long for AF_UNIX, ...: an open socket would hang Context.term()
        _close_link(link)
        raise NoSuchAgent(f"cannot connect to agent {agent!r} of node {node!r}: {exc}", agent=agent) from None
    return link


def _close_link(link: _Link) -> None:
    link.dealer.disable_monitor()
    link.monitor.close(linger=0)
    link.dealer.close(linger=0)


def _next_reply(link: _Link) -> Reply | CallFailed | None:
    """The next message waiting on the link's DEALER (undecodable ones are dropped), or None."""
    while True:
        try:
            frame = link.dealer.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        if (message := read_reply(frame.buffer)) is not None:
            return message


def _next_event(link: _Link) -> int | None:
    try:
        return recv_monitor_message(link.monitor, zmq.NOBLOCK)["event"]
    except zmq.Again:
        return None


def _call_on(link: _Link, call_id: int, payload: bytes, timeout: float) -> dict[str, Any]:
    """One attempt of a call, on the calling thread's own link."""
    poller = zmq.Poller()
    poller.register(link.dealer, zmq.POLLIN)
    poller.register(link.monitor, zmq.POLLIN)
    _own_reply(link, -1)  # drop late replies of earlier calls
    if link.draining:  # the agent is about to exit: not sent, so not run
        raise AgentDraining(f"agent {link.agent!r} is shutting down", agent=link.agent)
    while (event := _next_event(link)) is not None:  # a disconnect already reported must not fail this call
        link.connected = event == zmq.EVENT_CONNECTED
    in_flight = link.connected
    deadline = time.monotonic() + timeout
    link.dealer.send(payload, copy=False)
    while (left := deadline - time.monotonic()) > 0:
        ready = dict(poller.poll(int(left * 1000) + 1))
        if link.monitor in ready:
            while (event := _next_event(link)) is not None:
                if event == zmq.EVENT_CONNECTED:
                    link.connected = in_flight = True
                elif event == zmq.EVENT_DISCONNECTED:
                    link.connected = False
                    if (outputs := _own_reply(link, call_id)) is not None:
                        return outputs
                    if in_flight:
                        raise AgentCrashed(f"agent {link.agent!r} went down during the call", agent=link.agent)
        if link.dealer in ready and (outputs := _own_reply(link, call_id)) is not None:
            return outputs
    raise CallTimeout(f"no reply from {link.agent!r} within {timeout} s", agent=link.agent)


def _own_reply(link: _Link, call_id: int) -> dict[str, Any] | None:
    """The outputs of call ``call_id`` if its answer is waiting (a failure raises); others are late: dropped."""
    while (message := _next_reply(link)) is not None:
        match message:
            case CallFailed(call_id=found) if found == DRAIN_NOTICE:
                link.draining = True  # a call in flight is still answered; the next goes elsewhere
            case Reply(call_id=found, outputs=outputs) if found == call_id:
                return outputs
            case CallFailed(call_id=found) if found == call_id:
                raise error_of(message, link.agent)
    return None


def _resolve(future: concurrent.futures.Future, outputs: dict) -> None:
    if not future.done():
        try:
            future.set_result(outputs)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile


def _fail(future: concurrent.futures.Future, error: BaseException) -> None:
    if not future.done():
        try:
            future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass
