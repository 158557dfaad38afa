"""The worker: what runs inside a program child, from ``setup`` to READY to ``teardown``.

The zygote forks, prepares the child's fds and environment, then calls ``run(spec)``; it
never returns. The child speaks to the node through the notify pipe on fd 3, one line each:

``READY``            setup is done; the node's ``spawn`` returns
``FAILED <why>``     setup raised; the child then exits with status 1
``EXIT shutdown [TERM]``  the program asked for a clean exit (``exit_shutdown(term)``)

Before READY the worker binds the agent's ROUTER socket (``AgentServer``, ``_agent_socket``)
at ``agent_endpoint(node, child_id)``; ``serve`` is its call loop, between READY and shutdown.
SIGTERM sets a flag and writes a byte to ``signal_fd()`` (Python's wakeup fd), which the
loop polls, so it never sleeps through one. Then the agent drains: calls already taken are
answered, new ones get ``draining`` (the caller resends them to the next holder of the name),
and once the socket is quiet the program's ``teardown`` runs and the process dies by SIGTERM.

Configuration: when the node has a variable registry (its agent socket file exists) and this
child is not the registry, ``_start`` asks it to ``resolve`` the child's configuration along
its scope chain (``OTPY_CHILD_ID``, then ``OTPY_SUPERVISORS``) and passes it to ``setup``.
After READY a ``ConfigWatcher`` thread subscribes to the registry's changes. When one changes
the child's resolved configuration, a program with ``on_config(config)`` gets it, run by a
call thread in turn with the calls; a program without it drains like on SIGTERM, tears down
and exits with status ``EXIT_CONFIG_CHANGED`` (75), so that its supervisor restarts it with
the new values (a ``crashed`` exit: it counts toward restart intensity).
"""

from __future__ import annotations

import os
import queue
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, NoReturn

import zmq

from .one_call import decode_call, limits, rss_mib, run_call
from .program import Program, instantiate
from ..wire.protocol import DRAIN_NOTICE, ENCODER, Call, CallFailed
from .call_socket import bound_router, context as agent_context, rebind
from ..wire.connections import AgentConnectionCap, connection_cap
from ..wire.codec import MAX_CALL_BYTES, Complaints, Frames, call_id_of, describe, trim_memory
from .registry_link import ConfigWatcher, has_registry, resolve
from ..specs.model import ChildSpec

NOTIFY_FD = 3
EXIT_CONFIG_CHANGED = 75  # a program without on_config exits so, to be restarted with new values


# --- the worker ---------------------------------------------------------------------------


class ShutdownRequested(BaseException):
    """Raised in the worker's main thread when SIGTERM arrives during ``serve``."""


def run(spec: ChildSpec) -> NoReturn:
    """Set the program up, bind its call socket, report READY, serve calls until SIGTERM,
    tear down, die by SIGTERM."""
    try:
        program, config = _start(spec)
        try:
            _catch_sigterm()
            agent = _bind(program, spec)
            _notify("READY")
            if agent is not None:
                agent.add_thread()  # after READY, while the first caller is on its way
            if config and agent is not None:
                ConfigWatcher(program, agent, config, _registry, request_config_restart).start()
            serve(agent)
        except ShutdownRequested:
            _teardown(program)
            if _config_changed:
                _exit(EXIT_CONFIG_CHANGED)
            _die_by(signal.SIGTERM)
        _teardown(program)
        _exit(0)
    except BaseException:
        traceback.print_exc()
        _exit(1)


def serve(agent: AgentServer | None) -> None:
    """Serve calls until shutdown (``ShutdownRequested``); without a node, just wait for it.

    A SIGTERM the program chose to ignore (``SIG_IGN`` in setup) never ends the wait: the
    node then kills the child once its ``shutdown`` time is up.
    """
    if agent is not None:
        agent.serve(signal_fd(), _drain)
    while not _shutdown_requested:
        select.select([signal_fd()], [], [])  # not signal.pause(): it can miss a signal
        _drain(signal_fd())
    raise ShutdownRequested


def _bind(program: Program, spec: ChildSpec) -> AgentServer | None:
    """The agent's call socket, bound before READY so that a call right after READY works."""
    node = os.environ.get("OTPY_NODE")
    if not node:
        return None  # not run by a node: nobody can call it
    try:
        concurrency, max_queue = limits(program, spec.args)
    except ValueError as exc:
        fail(str(exc))
    try:
        sockets = bound_router(node, spec.id)
        return AgentServer(program, sockets, concurrency, max_queue, spec.max_rss,
                           rebind=lambda: rebind(sockets[1], node, spec.id))
    except Exception as exc:
        fail(f"cannot bind the call socket: {_describe(exc)}")


def signal_fd() -> int:
    """A fd that becomes readable when a signal with a Python handler arrives."""
    return _signal_fd


def exit_shutdown(term: str = "") -> NoReturn:
    """Exit now, cleanly: the node records the reason ``shutdown`` (no restart if transient),
    with ``term`` as its detail (OTP's ``{shutdown, Term}``)."""
    _notify(" ".join(["EXIT shutdown", *term.split()]))
    _exit(0)


def _start(spec: ChildSpec) -> tuple[Program, dict[str, Any]]:
    """The program, set up with its resolved configuration; on any error report FAILED, exit 1."""
    try:
        program = instantiate(spec.program)
    except BaseException as exc:
        fail(f"cannot instantiate {spec.program!r}: {_describe(exc)}")
    config = _resolve_config(spec.id)
    try:
        program.setup(spec.args, config=config)
    except BaseException as exc:
        fail(f"setup raised {_describe(exc)}")
    return program, config


_registry: str | None = None  # this worker's node, if it has a registry


def _resolve_config(child_id: str) -> dict[str, Any]:
    global _registry
    _registry = has_registry()
    if _registry is None:
        return {}
    try:
        return resolve(_registry, child_id, agent_context())
    except BaseException as exc:
        fail(f"cannot resolve the configuration of {child_id!r} from the registry: {_describe(exc)}")


_config_changed = False  # set by the ConfigWatcher of a program without on_config


def request_config_restart() -> None:
    """Drain and end like on SIGTERM, but exit with EXIT_CONFIG_CHANGED (the supervisor restarts us)."""
    global _shutdown_requested, _config_changed
    _config_changed = _shutdown_requested = True
    try:
        os.write(_signal_write_fd, b"\0")  # wakes the serving loop
    except OSError:
        pass


def fail(why: str) -> NoReturn:
    """Report ``FAILED <why>`` to the node (with the traceback on stderr) and exit with status 1."""
    if sys.exc_info()[0] is not None:
        traceback.print_exc()
    _notify(f"FAILED {why}")
    _exit(1)


def _describe(exc: BaseException) -> str:
    """``_wire.describe``, long enough for a FAILED line."""
    return describe(exc, limit=4000)


def _notify(line: str) -> None:
    try:
        os.write(NOTIFY_FD, line.encode() + b"\n")
    except OSError:
        pass  # the node is gone; the parent-death signal follows


_signal_fd = -1
_signal_write_fd = -1


def _catch_sigterm() -> None:
    """SIGTERM raises ShutdownRequested, unless the program set its own disposition."""
    global _signal_fd, _signal_write_fd
    _signal_fd, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _signal_write_fd = write_end
    signal.set_wakeup_fd(write_end)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _note_shutdown)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


_shutdown_requested = False


def _note_shutdown(signum, frame) -> None:
    """SIGTERM: the serving loop sees the flag when the wakeup fd wakes it (never mid-operation)."""
    global _shutdown_requested, _config_changed
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # teardown runs once
    _shutdown_requested = True
    _config_changed = False  # asked to stop: the end is a shutdown, not a restart for new values


def _teardown(program: Program) -> None:
    try:
        program.teardown()
    except BaseException:
        traceback.print_exc()
        _exit(1)


def _die_by(sig: int) -> NoReturn:
    """End with ``sig`` in the wait status, so the node reads the reason from it."""
    _flush()
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)


def _exit(code: int) -> NoReturn:
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


# --- the agent's call loop ----------------------------------------------------------------

QUIET_MS = 10  # a shutting-down agent exits once its socket was quiet this long
MAX_PEERS = 4096  # callers remembered for the drain notice
EXIT_MAX_RSS = 76  # the exit status of an agent that went over its max_rss (abnormal: restarted)

CONFIG_DRAIN_S = 0.05  # ending for new values: at most this long answering ``draining`` once idle


class AgentServer:
    """The agent's ROUTER socket and its call loop.

    The main thread owns the socket: it takes calls, answers ``overloaded`` when
    ``concurrency`` calls run and ``max_queue`` wait, and sends the replies. ``concurrency``
    threads run ``forward`` in arrival order; each hands its encoded reply back through a
    queue and an eventfd the loop polls.
    """

    def __init__(self, program: Program, sockets: tuple[zmq.Context, zmq.Socket], concurrency: int,
                 max_queue: int, max_rss: float | None = None, rebind: Callable[[], None] | None = None) -> None:
        self.program = program
        self.max_rss = max_rss
        self.capacity = concurrency + max_queue
        self.taken = 0  # calls accepted and not answered yet: running or waiting
        self.draining = False  # shutting down: no new calls
        self.peers: dict[bytes, None] = {}  # callers served, oldest first: told when draining starts
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.context, self.router = sockets  # the router is bound already
        self.concurrency = concurrency
        self.threads = 0  # call threads start after READY (the first) and with jobs: READY does not wait
        self.threads_lock = threading.Lock()  # jobs come from the loop and from the config watcher
        self.rebind = rebind
        self.cap: AgentConnectionCap | None = None  # made in serve, after READY

    def put_job(self, job) -> None:
        self.add_thread()
        self.jobs.put(job)

    def add_thread(self) -> None:
        """One more call thread, up to ``concurrency``."""
        with self.threads_lock:
            if self.threads < self.concurrency:
                threading.Thread(target=self._run_calls, daemon=True, name=f"otpy-call-{self.threads}").start()
                self.threads += 1

    def serve(self, signal_fd: int, drain: Callable[[int], None]) -> NoReturn:
        poller = zmq.Poller()
        for what in (self.router, self.wake, signal_fd):
            poller.register(what, zmq.POLLIN)
        if self.rebind is not None:  # a flood of connections must not abort the agent (EMFILE)
            self.cap = AgentConnectionCap(self.router, connection_cap(1), self.rebind, _complain)
            poller.register(self.cap.monitor, zmq.POLLIN)
        while not _shutdown_requested:
            self._handle(poller.poll(), signal_fd, drain)
        self._finish(poller, signal_fd, drain)
        raise ShutdownRequested

    def _handle(self, ready, signal_fd: int, drain: Callable[[int], None]) -> None:
        for what, _ in ready:
            if what is self.router:
                self._take_calls()
            elif what == self.wake:
                self._send_replies()
            elif self.cap is not None and what is self.cap.monitor:
                self.cap.on_events()
            else:
                drain(signal_fd)  # a SIGTERM woke us: its handler set _shutdown_requested

    def _finish(self, poller, signal_fd: int, drain: Callable[[int], None]) -> None:
        """Shutting down: answer the calls already taken; answer new ones ``draining``, so their
        callers resend them to whoever holds this agent's name next (a Reconfigure's target, a
        restarted incarnation). Done once nothing is left and the socket was quiet ``QUIET_MS``."""
        self.draining = True
        notice = ENCODER.encode(CallFailed(call_id=DRAIN_NOTICE, kind="draining",
                                           message="the agent is shutting down; call again"))
        for peer in self.peers:
            self.router.send_multipart([peer, notice])
        idle_since = None
        while True:
            ready = poller.poll(QUIET_MS)
            if self.taken == 0:
                if not ready:
                    return
                # Ending for a restart with new values, nothing is left to answer: a caller that
                # keeps resending to this name (it is still ours until we exit) must not keep us.
                idle_since = idle_since or time.monotonic()
                if _config_changed and time.monotonic() - idle_since > CONFIG_DRAIN_S:
                    return
            else:
                idle_since = None
            self._handle(ready, signal_fd, drain)

    def _take_calls(self) -> None:
        while True:
            try:
                frames = Frames(self.router.recv(zmq.NOBLOCK, copy=False), 2, MAX_CALL_BYTES)
            except zmq.Again:
                return
            try:
                frames.read(self.router)  # the rest is here already: a message arrives whole
                self._take(frames)
            except Exception as exc:  # whatever a message does, only its sender loses: the loop goes on
                _complain(f"otpy: a call message was dropped: {_describe(exc)}")

    def _take(self, frames: Frames) -> None:
        if frames.count != 2:  # not [peer, payload]: not from a Caller; still answered, at once
            message = f"expected one frame, got {frames.count - 1}"
            _complain(f"otpy: refused a call message: {message}")
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
                self.put_job((peer, call))
            case CallFailed() as failed:
                _complain(f"otpy: refused a call message: {failed.message}")
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
            self.taken -= 1
            self.router.send_multipart([peer, reply], copy=False)
        if self.max_rss is not None and (rss := rss_mib()) > self.max_rss:
            print(f"otpy: RSS {rss:.1f} MiB is over max_rss {self.max_rss:g} MiB: exiting to be restarted",
                  file=sys.stderr, flush=True)
            if self.cap is not None:
                self.cap.close()  # term() waits for every socket of the context, its monitor's too
            self.router.close(linger=100)  # the replies just sent still leave (term waits for them)
            self.context.term()
            _exit(EXIT_MAX_RSS)

    def _run_calls(self) -> None:
        while True:
            peer, call = self.jobs.get()
            if peer is None:  # not a call: a new configuration for on_config (ConfigWatcher)
                _deliver_config(self.program, call)
                continue
            try:
                reply = _reply_to(self.program, call)
            except BaseException:  # not even the fallback encoded: the caller still hears of it
                reply = ENCODER.encode(CallFailed(call_id=call.call_id, kind="raised", error_type="CallError",
                                                  message="the call failed in otpy"))
            self.replies.put((peer, reply))
            os.eventfd_write(self.wake, 1)


def _reply_to(program: Program, call: Call) -> bytes:
    """``run_call``, and whatever goes wrong there still answers the caller: a call thread that
    died would leave the agent shown running and never answering again."""
    try:
        return run_call(program, call)
    except BaseException as exc:
        return ENCODER.encode(CallFailed(call_id=call.call_id, kind="raised", error_type="CallError",
                                         message=f"the call failed in otpy: {describe(exc)}"))


_complain = Complaints(lambda line: print(line, file=sys.stderr, flush=True))


def _deliver_config(program: Program, config: dict[str, Any]) -> None:
    """``on_config(config)``; if it raises, the child crashes (exit 1) and restarts with the new values."""
    try:
        program.on_config(config)
    except BaseException:
        traceback.print_exc()
        _exit(1)
