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
it with ``AgentCrashed``; after a drain notice, and for a call the agent refused while
draining (sent again, once), calls wait for the name's next holder. Every call has a
deadline (``CallTimeout``); a reply whose call id is no longer awaited is dropped; no send
blocks (a full queue, or no socket to be had: ``Overloaded``). Any thread may ``close``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import queue
import sys
import threading
from typing import TYPE_CHECKING, Any, Mapping

import zmq

from ..host.runtime_dir import agent_socket_path, existing_node_dir, read_private, runtime_root
from .call_book import BlockingResult, Pending
from .call_engine import CallEngine, call_limits_problem
from .call_messages import encode_call
from .codec import Complaints
from .errors import CallError, NodeUnreachable, NoSuchAgent, Overloaded

if TYPE_CHECKING:
    from .remote_cluster import ClusterSpec


def _closed_error(pending: Pending) -> CallError:
    return CallError("the caller is closed", agent=pending.agent)


class Caller:
    """Calls the agents of node ``node``, and ``AGENT@NODE`` of the other nodes of ``cluster``.
    Thread-safe; close it (or use ``with``) when done.

    ``cluster`` (``topology.cluster.load_cluster``): the nodes ``AGENT@NODE`` may name; by default
    the cluster of node ``node`` as it runs here (the ``[cluster]`` of its topology, which the
    node writes in its folder: so an agent's ``Caller(node)`` and ``otpy call`` reach them; read
    again when a reload rewrites it)."""

    def __init__(self, node: str, *, cluster: ClusterSpec | None = None) -> None:
        self.node = node
        self.cluster = cluster
        self._follows = cluster is None  # the node's file: read again whenever it changed
        self._seen: tuple[int, int, int] | None = None  # that file's (inode, mtime, size) as last read
        self._cluster_file = ""  # its path, made once (a str: os.stat's cheapest argument)
        self._remotes: dict[str, Any] = {}  # node name -> its RemoteCaller, made on the first call
        self._retired: list[Any] = []  # callers of nodes the file changed or dropped: closed with this one
        self._ids = itertools.count(1)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._known: set[str] = set()  # agents whose socket file was seen
        self._lock = threading.Lock()
        self._left = threading.Condition(self._lock)  # a thread left ``call`` (``close`` waits for it)
        self._thread: threading.Thread | None = None
        self._context: zmq.Context | None = None
        self._own = threading.local()  # this thread's engine, for ``call``
        self._own_engines: dict[CallEngine, threading.Thread] = {}  # open ones, by the thread owning each
        self._busy: set[CallEngine] = set()  # those whose thread is in ``call``: only it may close them
        self._stop: int | None = None  # readable once closing: wakes the threads waiting in ``call``
        self._closed = False
        self._complain = Complaints(lambda line: print(line, file=sys.stderr, flush=True))

    # --- the public calls -----------------------------------------------------------------

    def submit(self, agent_id: str, inputs: Mapping[str, Any] | None = None, *,
               timeout: float = 5.0, retries: int = 0) -> concurrent.futures.Future:
        """Send a call without waiting; the Future gives the outputs or raises a ``CallError``."""
        if type(agent_id) is str and "@" in agent_id:
            try:
                remote, agent_id = self._remote(agent_id)
            except CallError as exc:
                future = concurrent.futures.Future()
                future.set_exception(exc)
                return future
            if remote is not None:
                return remote.submit(agent_id, inputs, timeout=timeout, retries=retries, label=remote.label(agent_id))
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
        if type(agent_id) is str and "@" in agent_id:
            remote, agent_id = self._remote(agent_id)
            if remote is not None:
                return remote.call(agent_id, inputs, timeout=timeout, retries=retries, label=remote.label(agent_id))
        pending = self._pending(agent_id, inputs, timeout, retries, BlockingResult())
        engine = self._enter(agent_id)
        try:
            engine.start(pending)
            engine.wait(pending)
        finally:
            self._leave(engine)
        if not pending.future.done():  # ``close`` woke the wait
            raise _closed_error(pending)
        return pending.future.result()

    async def acall(self, agent_id: str, inputs: Mapping[str, Any] | None = None, *,
                    timeout: float = 5.0, retries: int = 0) -> dict[str, Any]:
        """``call`` for asyncio code."""
        return await asyncio.wrap_future(self.submit(agent_id, inputs, timeout=timeout, retries=retries))

    def close(self) -> None:
        """Fail the calls still waiting (``CallError``), close the sockets, stop the I/O thread.

        Any thread may close: a thread waiting in ``call`` is woken, gets ``CallError`` and
        closes its own sockets (ZeroMQ sockets belong to one thread); ``close`` waits for it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            idle = [engine for engine in self._own_engines if engine not in self._busy]
            for engine in idle:
                del self._own_engines[engine]
            remotes, self._remotes = list(self._remotes.values()) + self._retired, {}
        for remote in remotes:
            remote.close()
        if self._stop is not None:
            os.eventfd_write(self._stop, 1)
            with self._left:  # each closes its own sockets, before ``term`` (or its poll fails on ETERM)
                self._left.wait_for(lambda: not self._busy)
        if thread is not None:
            self._commands.put(None)
            os.eventfd_write(self._wake, 1)
            thread.join()
        for engine in idle:
            engine.close(_closed_error)
        if self._context is not None:
            self._context.term()
        os.close(self._wake)
        if self._stop is not None:
            os.close(self._stop)

    def __enter__(self) -> "Caller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the caller's side -----------------------------------------------------------------

    def _remote(self, agent_id: str) -> tuple[Any, str]:
        """``AGENT@NODE``: the caller of NODE (None for this node itself) and AGENT; ``NoSuchAgent``
        naming the cluster for a node it does not list."""
        agent, _, node = agent_id.rpartition("@")
        if node == self.node:
            return None, agent
        if self._follows:
            self._follow(agent_id)
        remote = self._remotes.get(node)
        if remote is not None:
            return remote, agent
        cluster = self.cluster
        entry = cluster.nodes.get(node) if cluster is not None else None
        if entry is None:
            why = f"no node {node!r} in the cluster {cluster.source}" if cluster is not None else \
                f"node {self.node!r} runs without a [cluster] (or give Caller(node, cluster=...))"
            raise NoSuchAgent(f"{agent_id!r}: {why}", agent=agent_id)
        from .remote_calls import RemoteCaller

        with self._lock:
            if self._closed:
                raise CallError("the caller is closed", agent=agent_id)
            if (remote := self._remotes.get(node)) is None:
                try:
                    remote = self._remotes[node] = RemoteCaller(entry.endpoint, entry.keys, name=node)
                except ValueError as exc:  # its keys folder lacks something (server.key, after the node's first start)
                    raise NodeUnreachable(f"{agent_id!r}: node {node!r} of {cluster.source}: {exc}",
                                          agent=agent_id) from None
        return remote, agent

    def _follow(self, agent_id: str) -> None:
        """The node's cluster as its file is now (a stat per call; ``otpy reload`` replaces the
        file whole): read again when it changed; callers of nodes whose entry changed or went are
        retired (their calls under way finish; they close with this caller)."""
        if not self._cluster_file:
            from .remote_cluster import CLUSTER_FILE  # only for AGENT@NODE

            try:
                self._cluster_file = str(runtime_root() / self.node / CLUSTER_FILE)
            except Exception as exc:  # RuntimeDirError: one line
                raise NoSuchAgent(f"{agent_id!r}: cannot read the cluster of node {self.node!r}: {exc}",
                                  agent=agent_id) from None
        try:
            st = os.stat(self._cluster_file)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:  # none: the node runs without a [cluster]
            seen = None
        if seen == self._seen and (seen is not None or self.cluster is None):
            return
        try:
            cluster = node_cluster(self.node)
        except ValueError as exc:
            raise NoSuchAgent(f"{agent_id!r}: {exc}", agent=agent_id) from None
        with self._lock:
            old = self.cluster.nodes if self.cluster is not None else {}
            new = cluster.nodes if cluster is not None else {}
            for name in [name for name in self._remotes if old.get(name) != new.get(name)]:
                self._retired.append(self._remotes.pop(name))
            self.cluster, self._seen = cluster, seen

    def _pending(self, agent_id: str, inputs: Mapping[str, Any] | None, timeout: float, retries: int,
                 future: Any) -> Pending:
        """A new call, checked: ``ValueError`` (a timeout or retries no call can have),
        ``NoSuchAgent`` and ``Unencodable`` are raised here, at once."""
        if problem := call_limits_problem(timeout, retries):
            raise ValueError(problem)
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
            try:
                self._context = zmq.Context(io_threads=1)
            except zmq.ZMQError as exc:  # EMFILE, ...
                raise Overloaded(f"the caller cannot start ZeroMQ: {exc}") from None
        return self._context

    def _enter(self, agent_id: str) -> CallEngine:
        """This thread's engine (made on first use), marked busy until ``_leave``: ``close`` leaves
        it to this thread."""
        engine = self._own.__dict__.get("engine")
        gone: list[CallEngine] = []
        with self._lock:
            if self._closed:
                raise CallError("the caller is closed", agent=agent_id)
            if engine is None:
                engine, gone = self._new_own_engine()
            self._busy.add(engine)
        for dead in gone:  # their threads ended: nobody else uses them
            dead.close(_closed_error)
        return engine

    def _new_own_engine(self) -> tuple[CallEngine, list[CallEngine]]:
        """A new engine for this thread (the lock is held), and the engines of threads that ended,
        taken off the list for the caller to close."""
        if self._stop is None:
            self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        engine = CallEngine(self._context_(), self.node, self._ids.__next__, stop=self._stop)
        gone = [old for old, thread in self._own_engines.items() if not thread.is_alive()]
        for old in gone:
            del self._own_engines[old]
        self._own_engines[engine] = threading.current_thread()
        self._own.engine = engine
        return engine, gone

    def _leave(self, engine: CallEngine) -> None:
        with self._lock:
            closing = self._closed and self._own_engines.pop(engine, None) is not None
            if not closing:
                self._busy.discard(engine)
        if closing:  # ``close`` came while this thread waited: it closes its own sockets, then ``close`` goes on
            try:
                engine.close(_closed_error)
            finally:
                with self._left:
                    self._busy.discard(engine)
                    self._left.notify_all()

    def _post(self, pending: Pending) -> None:
        with self._lock:
            if self._closed:
                pending.future.set_exception(_closed_error(pending))
                return
            if self._thread is None:
                try:
                    engine = CallEngine(self._context_(), self.node, self._ids.__next__)
                except CallError as error:
                    pending.future.set_exception(error)
                    return
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
                    self.caller._complain(f"otpy: the caller's I/O thread of {self.caller.node!r} carried on after "
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
            try:
                self.engine.start(pending)
            except Exception as exc:  # a bug: this call fails, the thread and the other calls go on
                self.caller._complain(f"otpy: a call to {pending.agent!r} failed in the caller: "
                                      f"{type(exc).__name__}: {exc}")
                self.engine.book.forget(pending.call_id)
                if not pending.future.done():
                    pending.future.set_exception(CallError(f"the call failed in the caller: {exc}",
                                                           agent=pending.agent))


def node_cluster(node: str) -> ClusterSpec | None:
    """The cluster node ``node`` runs with on this host (the file it writes in its folder when
    its topology has a ``[cluster]``), None when it has none; ValueError when it cannot be read."""
    from .remote_cluster import CLUSTER_FILE, MAX_CLUSTER_BYTES, decode_cluster  # only for AGENT@NODE

    try:
        folder = existing_node_dir(node)
        data = read_private(folder / CLUSTER_FILE, MAX_CLUSTER_BYTES) if folder is not None else None
        return decode_cluster(data) if data is not None else None
    except Exception as exc:  # RuntimeDirError, msgspec's errors: one line
        raise ValueError(f"cannot read the cluster of node {node!r}: {exc}") from None
