"""The agent's call loop: its ROUTER socket, between READY and the end of the drain.

SIGTERM (or a restart for new values: ``Shutdown``) makes the agent drain: calls already
taken are answered, new ones get ``draining`` (the caller resends them to the next holder of
the name), and once the socket is quiet the loop returns.

With ``concurrency = 1`` (the default) the loop's thread, the main thread that ran ``setup()``,
runs each call itself, in arrival order, however many wait: a call is read, run and answered
with no thread hand-off, and ``forward`` and ``on_config`` always run on that one thread (a
sqlite3 connection or a ``threading.local`` made in ``setup`` works under any load). While one
runs longer than a tick, the ``call_guard.RunGuard``'s thread serves the socket (takes the next
calls, answers ``overloaded`` and ``draining``, sends the drain notice on a SIGTERM at once,
even while the call is inside C code: ``Shutdown.drain``). With more, ``concurrency`` call
threads run them.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, NoReturn

import zmq

from .call_guard import RunGuard
from .config_refused import ConfigRefused
from .notify import EXIT_MAX_RSS, exit_now
from .one_call import decode_call, rss_mib, run_call
from .program import Program
from .shutdown import Shutdown
from ..wire.codec import MAX_CALL_BYTES, Complaints, Frames, call_id_of, describe, trim_memory
from ..wire.connections import AgentConnectionCap, connection_cap
from ..wire.protocol import DRAIN_NOTICE, ENCODER, Call, CallFailed, ConfigCheck, ConfigSync, Reply

QUIET_MS = 10  # a shutting-down agent exits once its socket was quiet this long
MAX_PEERS = 4096  # callers remembered for the drain notice
RSS_DRAIN_S = 0.1  # over max_rss: at most this long answering ``draining`` before exiting
CONFIG_DRAIN_S = 0.05  # ending for new values: at most this long answering ``draining`` once idle


class CallJob(NamedTuple):
    """A call taken from ``peer``, for a call thread (or the loop's, ``backlog``) to run. A tuple:
    one is made per call, and a frozen dataclass costs ~4x as much to make."""

    peer: zmq.Frame
    call: Call


@dataclass(frozen=True, slots=True)
class NewConfig:
    """A new configuration for ``on_config``, run by a call thread in turn with the calls;
    ``done(config, refused)`` once it returned (``refused``: why it raised ``ConfigRefused``, or
    None; the config watcher: a ``ConfigSync`` waits for it)."""

    config: dict[str, Any]
    done: Callable[[dict[str, Any]], None] | None = None


class CallServer:
    """The agent's ROUTER socket and its call loop.

    The main thread owns the socket: it takes calls, answers ``overloaded`` when
    ``concurrency`` calls run and ``max_queue`` wait, and sends the replies. With
    ``concurrency = 1`` it runs the calls too (``backlog``, ``guard``: see the module's
    docstring); otherwise ``concurrency`` threads run ``forward`` in arrival order, each
    handing its encoded reply back through a queue and an eventfd the loop polls.
    """

    def __init__(self, program: Program, context: zmq.Context, router: zmq.Socket, shutdown: Shutdown, *,
                 concurrency: int, max_queue: int, max_rss: float | None = None,
                 rebind: Callable[[], None] | None = None) -> None:
        self.program = program
        self.context, self.router = context, router  # the router is bound already
        self.shutdown = shutdown
        self.max_rss = max_rss
        self.capacity = concurrency + max_queue
        self.taken = 0  # calls accepted and not answered yet: running or waiting
        self.draining = False  # shutting down: no new calls
        self.peers: dict[bytes, None] = {}  # callers served, oldest first: told when draining starts
        self.jobs: queue.SimpleQueue[CallJob | NewConfig] = queue.SimpleQueue()
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.concurrency = concurrency
        # concurrency 1: the calls taken and the new configurations, in turn, run by the loop's thread
        self.inline = concurrency == 1
        self.backlog: deque[CallJob | NewConfig] = deque()
        self.configs: queue.SimpleQueue[NewConfig] = queue.SimpleQueue()  # from other threads, for the backlog
        self.guard = RunGuard(self._serve_during_call) if self.inline else None
        self.threads = 0  # call threads start after READY (the first) and with jobs: READY does not wait
        self.threads_lock = threading.Lock()  # jobs come from the loop and from the config watcher
        self.rebind = rebind
        self.cap: AgentConnectionCap | None = None  # made in serve, after READY
        self.complain = Complaints(lambda line: print(line, file=sys.stderr, flush=True))
        # The config watcher (``registry_link.ConfigWatcher``): its ``sync`` answers a ConfigSync
        # (resolve again, return once the program runs it), its ``check`` a ConfigCheck; None when
        # the child has no configuration to follow.
        self.watcher: Any = None

    def new_config(self, config: dict[str, Any], done: Callable[..., None] | None = None) -> None:
        """Hand ``config`` to ``on_config``, in turn with the calls; then ``done(config, refused)``."""
        if self.inline:
            self.configs.put(NewConfig(config, done))
            os.eventfd_write(self.wake, 1)  # the loop moves it to the backlog
        else:
            self.put_job(NewConfig(config, done))

    def put_job(self, job: CallJob | NewConfig) -> None:
        self._add_call_thread()
        self.jobs.put(job)

    def add_thread(self) -> None:
        """One more call thread, up to ``concurrency`` (with ``concurrency = 1``: the guard's)."""
        if self.guard is not None:
            self.guard.start()
            return
        self._add_call_thread()

    def _add_call_thread(self) -> None:
        with self.threads_lock:
            if self.threads < self.concurrency:
                threading.Thread(target=self._run_calls, daemon=True, name=f"otpy-call-{self.threads}").start()
                self.threads += 1

    def serve(self) -> None:
        """Serve calls until the end is requested, then drain; return once drained."""
        poller = zmq.Poller()
        for what in (self.router, self.wake, self.shutdown.fd):
            poller.register(what, zmq.POLLIN)
        if self.rebind is not None:  # a flood of connections must not abort the agent (EMFILE)
            self.cap = AgentConnectionCap(self.router, connection_cap(1), self.rebind, self.complain)
            poller.register(self.cap.monitor, zmq.POLLIN)
        if self.guard is not None:
            self.guard.start()  # (``add_thread`` started it already when run by the worker)
        while not self.shutdown.requested:
            self._handle(poller.poll(0 if self.backlog else None))
            if self.backlog:
                self._run_next()
        self._finish(poller)

    def _handle(self, ready) -> None:
        for what, _ in ready:
            if what is self.router:
                self._take_calls()
            elif what == self.wake:
                self._send_replies()
            elif self.cap is not None and what is self.cap.monitor:
                self.cap.on_events()
            else:
                self.shutdown.drain()  # a SIGTERM woke us: its handler set ``requested``
                if self.shutdown.requested:
                    self._start_draining()

    def _start_draining(self) -> None:
        """No new calls from now on; the callers seen last are told (once)."""
        if self.draining:
            return
        self.draining = True
        notice = ENCODER.encode(CallFailed(call_id=DRAIN_NOTICE, kind="draining",
                                           message="the agent is shutting down; call again"))
        for peer in self.peers:
            self.router.send_multipart([peer, notice])

    def _finish(self, poller) -> None:
        """Shutting down: answer the calls already taken; answer new ones ``draining``, so their
        callers resend them to whoever holds this agent's name next (a Reconfigure's target, a
        restarted incarnation). Done once nothing is left and the socket was quiet ``QUIET_MS``."""
        self._start_draining()
        idle_since = None
        while True:
            ready = poller.poll(0 if self.backlog else QUIET_MS)
            if self.taken == 0:
                if not ready:
                    return
                # Ending for a restart with new values, nothing is left to answer: a caller that
                # keeps resending to this name (it is still ours until we exit) must not keep us.
                idle_since = idle_since or time.monotonic()
                if self.shutdown.for_new_config and time.monotonic() - idle_since > CONFIG_DRAIN_S:
                    return
            else:
                idle_since = None
            self._handle(ready)
            if self.backlog:
                self._run_next()

    def _take_calls(self) -> None:
        router = self.router
        while True:
            try:
                frames = Frames(router.recv(zmq.NOBLOCK, copy=False), 2, MAX_CALL_BYTES)
            except zmq.Again:
                return
            try:
                frames.read(router)  # the rest is here already: a message arrives whole
                self._take(frames)
            except Exception as exc:  # whatever a message does, only its sender loses: the loop goes on
                self.complain(f"otpy: a call message was dropped: {describe(exc, limit=4000)}")
            if not router.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # not a recv raising Again: half the cost
                return

    def _take(self, frames: Frames) -> None:
        if frames.count != 2:  # not [peer, payload]: not from a Caller; still answered, at once
            message = f"expected one frame, got {frames.count - 1}"
            self.complain(f"otpy: refused a call message: {message}")
            payload = frames.kept[1].buffer if len(frames.kept) > 1 else b""
            self._answer(frames.kept[0], CallFailed(call_id=call_id_of(payload), kind="bad_request", message=message))
            return
        peer, payload = frames.kept
        match decode_call(payload.buffer):
            case Call() as call if self.draining:
                self._answer(peer, CallFailed(call_id=call.call_id, kind="draining",
                                              message="the agent is shutting down; call again"))
            case Call() as call if self.taken >= self.capacity:
                self._answer(peer, CallFailed(call_id=call.call_id, kind="overloaded",
                                              message=f"{self.taken} calls taken, the most it holds"))
            case Call() as call:
                self.taken += 1
                self._remember(peer.bytes)
                if self.inline:
                    self.backlog.append(CallJob(peer, call))
                else:
                    self.put_job(CallJob(peer, call))
            case ConfigCheck(call_id=call_id, overlay=overlay) if not self.draining and self.taken < self.capacity:
                self.taken += 1  # answered through the replies, like a ConfigSync
                threading.Thread(target=self._answer_config, args=(peer, call_id, "check", overlay), daemon=True,
                                 name="otpy-config-check").start()
            case ConfigSync(call_id=call_id) | ConfigCheck(call_id=call_id) if self.draining:
                self._answer(peer, CallFailed(call_id=call_id, kind="draining", message="the agent is shutting down"))
            case ConfigSync(call_id=call_id) | ConfigCheck(call_id=call_id) if self.taken >= self.capacity:
                self._answer(peer, CallFailed(call_id=call_id, kind="overloaded",
                                              message=f"{self.taken} calls taken, the most it holds"))
            case ConfigSync(call_id=call_id):
                self.taken += 1  # answered through the replies, like a call: a drain waits for it
                threading.Thread(target=self._answer_config, args=(peer, call_id, "sync"), daemon=True,
                                 name="otpy-config-sync").start()
            case CallFailed() as failed:
                self.complain(f"otpy: refused a call message: {failed.message}")
                self._answer(peer, failed)  # call_id 0 when none could be read: only raw sockets send such
                if len(payload) > MAX_CALL_BYTES // 16:
                    trim_memory()  # what its decoding took goes back to the system

    def _remember(self, peer: bytes) -> None:
        """The callers to tell when draining starts: the ``MAX_PEERS`` seen last."""
        self.peers.pop(peer, None)
        self.peers[peer] = None
        if len(self.peers) > MAX_PEERS:
            del self.peers[next(iter(self.peers))]

    def _answer(self, peer, message) -> None:
        self.router.send_multipart([peer, ENCODER.encode(message)], copy=False)

    def _send_replies(self) -> None:
        os.eventfd_read(self.wake)
        while True:
            try:
                peer, reply = self.replies.get_nowait()
            except queue.Empty:
                break
            if reply is None:
                continue  # the call thread ran an on_config
            self.taken -= 1
            self.router.send_multipart([peer, reply], copy=False)
        if self.inline:
            while True:
                try:
                    self.backlog.append(self.configs.get_nowait())
                except queue.Empty:
                    break
        else:
            self._check_rss()  # (concurrency 1: after each call, in ``_run_next``)

    def _check_rss(self) -> None:
        if self.max_rss is not None and (rss := rss_mib()) > self.max_rss:
            print(f"otpy: RSS {rss:.1f} MiB is over max_rss {self.max_rss:g} MiB: exiting to be restarted",
                  file=sys.stderr, flush=True)
            self._exit_over_rss()

    def _exit_over_rss(self) -> NoReturn:
        """Exit to be restarted, the call that crossed ``max_rss`` answered already. The calls
        taken and not begun never run here: they are answered ``draining`` (their callers resend
        them to the next holder of the name), as are the calls still in the socket and those
        arriving for a moment; the callers seen get the drain notice. (Calls running on other
        call threads, with ``concurrency`` over 1, end with the process.)"""
        self._start_draining()
        for job in self._not_begun():
            if isinstance(job, CallJob):
                self.taken -= 1
                self._answer(job.peer, CallFailed(call_id=job.call.call_id, kind="draining",
                                                  message="the agent is restarting (over max_rss)"))
        deadline = time.monotonic() + RSS_DRAIN_S
        while time.monotonic() < deadline and self.router.poll(QUIET_MS, zmq.POLLIN):
            self._take_calls()  # answered ``draining``
        if self.cap is not None:
            self.cap.close()  # term() waits for every socket of the context, its monitor's too
        self.router.close(linger=100)  # the replies just sent still leave (term waits for them)
        # The process ends now: a thread polling a socket of this context (the config watcher)
        # raises ContextTerminated, which is no news to report.
        threading.excepthook = lambda args: None
        self.context.term()
        exit_now(EXIT_MAX_RSS)

    def _not_begun(self) -> list[CallJob | NewConfig]:
        """The jobs taken that no thread has begun, taken away from the call threads."""
        jobs = list(self.backlog)
        self.backlog.clear()
        while True:
            try:
                jobs.append(self.jobs.get_nowait())
            except queue.Empty:
                return jobs

    def _run_next(self) -> None:
        """Run the backlog's next call (or ``on_config``) on this thread, the guard serving the
        socket meanwhile if it lasts; send its reply."""
        job = self.backlog.popleft()
        reply = None
        self.guard.begin()
        try:
            match job:
                case CallJob(peer, call):
                    reply = _reply_to(self.program, call)
                case NewConfig(config, done):
                    refused = _deliver_config(self.program, config)
                    if done is not None:
                        done(config, refused)
        finally:
            self.guard.end()
        if reply is not None:
            self.taken -= 1
            self.router.send(peer, zmq.SNDMORE, copy=False)  # send_multipart's checks, without its loop
            self.router.send(reply, copy=False)
            self._check_rss()

    def _serve_during_call(self, give_back: int) -> None:
        """The guard's thread, holding the socket while a call runs: serve it until ``give_back``."""
        poller = zmq.Poller()
        for what in (give_back, self.router, self.wake, self.shutdown.fd):
            poller.register(what, zmq.POLLIN)
        if self.cap is not None:
            poller.register(self.cap.monitor, zmq.POLLIN)
        while True:
            try:
                ready = poller.poll()
                if any(what == give_back for what, _ in ready):
                    os.eventfd_read(give_back)
                    return
                self._handle(ready)  # a SIGTERM: ``Shutdown.drain`` reads it, the drain starts now
            except Exception as exc:  # a bug here must not end the guard: the loop's thread waits for it
                self.complain(f"otpy: the call guard carried on after {describe(exc)}")
                if isinstance(exc, zmq.ZMQError):
                    return  # the socket or the context is gone: the loop's thread finds out

    def _answer_config(self, peer, call_id: int, what: str, overlay: dict[str, dict[str, Any]] | None = None) -> None:
        """A ConfigSync's (``what`` "sync") or a ConfigCheck's ("check") answer, on a thread of its
        own: a sync may wait for ``on_config``, which runs in turn with the calls (with
        ``concurrency = 1``, on the loop's thread); a check is the program's ``check_config`` over the
        configuration as it would be. Without a config watcher: ``unchanged``, ``unchecked``."""
        try:
            if self.watcher is None:
                state = "unchanged" if what == "sync" else "unchecked"
            else:
                state = self.watcher.sync() if what == "sync" else self.watcher.check(overlay)
            reply = ENCODER.encode(Reply(call_id=call_id, outputs={"config": state}))
        except BaseException as exc:
            reply = ENCODER.encode(CallFailed(call_id=call_id, kind="raised", error_type="CallError",
                                              message=f"the configuration {what} failed in otpy: {describe(exc)}"))
        self.replies.put((peer, reply))
        os.eventfd_write(self.wake, 1)

    def _run_calls(self) -> None:
        """A call thread: each job's reply (or, for an ``on_config``, None) goes back to the loop."""
        while True:
            match self.jobs.get():
                case CallJob(peer, call):
                    reply = _reply_to(self.program, call)
                    self.replies.put((peer, reply))
                case NewConfig(config, done):
                    refused = _deliver_config(self.program, config)
                    if done is not None:
                        done(config, refused)
                    self.replies.put((None, None))
            os.eventfd_write(self.wake, 1)


def _reply_to(program: Program, call: Call) -> bytes:
    """``run_call``, and whatever goes wrong there still answers the caller: a call thread that
    died would leave the agent shown running and never answering again."""
    try:
        return run_call(program, call)
    except BaseException as exc:
        try:
            return ENCODER.encode(CallFailed(call_id=call.call_id, kind="raised", error_type="CallError",
                                             message=f"the call failed in otpy: {describe(exc)}"))
        except BaseException:  # not even the fallback encoded: the caller still hears of it
            return ENCODER.encode(CallFailed(call_id=call.call_id, kind="raised", error_type="CallError",
                                             message="the call failed in otpy"))


def _deliver_config(program: Program, config: dict[str, Any]) -> str | None:
    """``on_config(config)``: None once it returned; why, if it raised ``ConfigRefused`` (the
    program runs its old values: the node undoes the write). Any other exception crashes the
    child (exit 1), which restarts with the new values."""
    try:
        program.on_config(config)
    except ConfigRefused as exc:
        why = str(exc) or type(exc).__name__
        print(f"otpy: on_config refused the new values: {why}; the program runs the ones it had",
              file=sys.stderr, flush=True)
        return why
    except BaseException:
        traceback.print_exc()
        exit_now(1)
    return None
