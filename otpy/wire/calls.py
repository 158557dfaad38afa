"""Calls to agents: a ``Caller`` sends ``Call`` messages straight to an agent's ROUTER socket.

Each agent (a program child) binds ``agent_endpoint(node, child_id)``; a replacement
process binds the same address. A ``Caller`` keeps, per thread that does socket I/O, one
DEALER per agent, connected on the first call::

    with Caller("hello") as caller:
        caller.call("greeter", {"name": "Ada"})          # {'text': 'hi, Ada'}

``call`` does the I/O on the calling thread (no hand-off); ``submit`` and ``acall`` hand the
call to one background I/O thread and wait on a ``concurrent.futures.Future``. Both run the
same engine (``call_engine.CallEngine``) and the same rules (``call_book.CallBook``): while an
agent restarts, calls queue in its DEALER (``IMMEDIATE`` off) and go out when the replacement
binds; a socket monitor sees the connection break and fails the calls that were in flight on
it with ``AgentCrashed``; a drain notice moves the name to a new connection and a call the
agent refused while draining is sent again there. Every call has a deadline
(``CallTimeout``); a reply whose call id is no longer awaited is dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import queue
import sys
import threading
from typing import Any, Mapping

import zmq

from ..host.runtime_dir import agent_socket_path
from .call_book import BlockingResult, Pending
from .call_engine import CallEngine
from .call_messages import encode_call
from .codec import Complaints
from .errors import CallError, NoSuchAgent

_complain = Complaints(lambda line: print(line, file=sys.stderr, flush=True))


def _closed_error(pending: Pending) -> CallError:
    return CallError("the caller is closed", agent=pending.agent)


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
        self._own = threading.local()  # this thread's engine, for ``call``
        self._own_engines: list[CallEngine] = []
        self._closed = False

    # --- the public calls -----------------------------------------------------------------

    def submit(self, agent_id: str, inputs: Mapping[str, Any] | None = None, *,
               timeout: float = 5.0, retries: int = 0) -> concurrent.futures.Future:
        """Send a call without waiting; the Future gives the outputs or raises a ``CallError``."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            pending = self._pending(agent_id, inputs, timeout, retries, future)
        except CallError as exc:
            future.set_exception(exc)
            return future
        self._post(pending)
        return future

    def call(self, agent_id: str, inputs: Mapping[str, Any] | None = None, *,
             timeout: float = 5.0, retries: int = 0) -> dict[str, Any]:
        """Call ``agent_id`` and wait for its outputs (at most ``timeout`` s per attempt).

        The calling thread does the I/O itself, on an engine of its own: no thread hand-off.
        """
        if self._closed:
            raise CallError("the caller is closed", agent=agent_id)
        pending = self._pending(agent_id, inputs, timeout, retries, BlockingResult())
        engine = self._own_engine()
        engine.start(pending)
        engine.wait(pending)
        return pending.future.result()

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
        for engine in self._own_engines:
            engine.close(_closed_error)
        if self._context is not None:
            self._context.term()
        os.close(self._wake)

    def __enter__(self) -> "Caller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the caller's side -----------------------------------------------------------------

    def _pending(self, agent_id: str, inputs: Mapping[str, Any] | None, timeout: float, retries: int,
                 future: Any) -> Pending:
        """A new call, checked: ``NoSuchAgent`` and ``Unencodable`` are raised here, at once."""
        self._check_agent(agent_id)
        inputs = dict(inputs or {})
        call_id = next(self._ids)
        return Pending(agent_id, inputs, timeout, retries, future, encode_call(call_id, inputs), call_id)

    def _check_agent(self, agent_id: str) -> None:
        if agent_id in self._known:
            return
        if "/" in agent_id or not agent_socket_path(self.node, agent_id).exists():
            raise NoSuchAgent(f"node {self.node!r} has no agent {agent_id!r}", agent=agent_id)
        self._known.add(agent_id)

    def _context_(self) -> zmq.Context:
        """The context of every engine (made on first use; the lock is held)."""
        if self._closed:
            raise CallError("the caller is closed")
        if self._context is None:
            self._context = zmq.Context(io_threads=1)
        return self._context

    def _own_engine(self) -> CallEngine:
        engine = self._own.__dict__.get("engine")
        if engine is None:
            with self._lock:
                engine = CallEngine(self._context_(), self.node, self._ids.__next__)
                self._own_engines.append(engine)
            self._own.engine = engine
        return engine

    def _post(self, pending: Pending) -> None:
        with self._lock:
            if self._closed:
                pending.future.set_exception(_closed_error(pending))
                return
            if self._thread is None:
                engine = CallEngine(self._context_(), self.node, self._ids.__next__)
                self._thread = threading.Thread(target=_IOThread(self, engine).run, daemon=True,
                                                name=f"otpy-caller-{self.node}")
                self._thread.start()
            self._commands.put(pending)
        os.eventfd_write(self._wake, 1)


class _IOThread:
    """The background thread of ``submit``/``acall``: takes calls from the queue, runs an engine."""

    def __init__(self, caller: Caller, engine: CallEngine) -> None:
        self.caller = caller
        self.engine = engine
        engine.poller.register(caller._wake, zmq.POLLIN)
        self.running = True

    def run(self) -> None:
        engine, wake = self.engine, self.caller._wake
        try:
            while self.running:
                try:
                    for socket, _ in engine.poller.poll(engine.poll_timeout_ms()):
                        if socket == wake:
                            os.eventfd_read(wake)
                            self._take_commands()
                        else:
                            engine.handle(socket)
                    engine.expire()
                    engine.retire_idle()
                except Exception as exc:  # a bug here must not leave every later call hanging
                    _complain(f"otpy: the caller's I/O thread of {self.caller.node!r} carried on after "
                              f"{type(exc).__name__}: {exc}")
        finally:
            engine.close(_closed_error)

    def _take_commands(self) -> None:
        while True:
            try:
                pending = self.caller._commands.get_nowait()
            except queue.Empty:
                return
            if pending is None:
                self.running = False
                return
            self.engine.start(pending)
