"""The worker: what runs inside a program child, from ``setup`` to READY to ``teardown``.

The zygote forks, prepares the child's fds and environment, then calls ``run(spec)``; it
never returns. The child speaks to the node through the notify pipe on fd 3, one line each:

``READY``            setup is done; the node's ``spawn`` returns
``FAILED <why>``     setup raised; the child then exits with status 1
``EXIT shutdown``    the program asked for a clean exit (``exit_shutdown()``)

``serve`` is the part that runs between READY and shutdown. Today it only waits for
SIGTERM; the ZeroMQ call loop replaces it. SIGTERM reaches it as ``ShutdownRequested``,
raised in the main thread; a signal also writes a byte to ``signal_fd()`` (Python's
wakeup fd), so a loop that polls that fd never sleeps through one.

This module also holds the Linux process attributes (``prctl``) every otpy process sets.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import traceback
from typing import NoReturn

from ._program import Program, instantiate
from ._specs import ChildSpec

NOTIFY_FD = 3


# --- process attributes (Linux prctl) -----------------------------------------------------

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {value}): {os.strerror(errno)}")


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Get ``sig`` when the parent dies; exit now if it already has (the fork/prctl race)."""
    _prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent_pid:
        os._exit(1)


def become_subreaper() -> None:
    """Orphaned descendants of this process are reparented to it, not to init."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


# --- the worker ---------------------------------------------------------------------------


class ShutdownRequested(BaseException):
    """Raised in the worker's main thread when SIGTERM arrives during ``serve``."""


def run(spec: ChildSpec) -> NoReturn:
    """Set the program up, report READY, serve until SIGTERM, tear down, die by SIGTERM."""
    try:
        program = _start(spec)
        try:
            _catch_sigterm()
            _notify("READY")
            serve(program, spec)
        except ShutdownRequested:
            _teardown(program)
            _die_by(signal.SIGTERM)
        _teardown(program)
        _exit(0)
    except BaseException:
        traceback.print_exc()
        _exit(1)


def serve(program: Program, spec: ChildSpec) -> None:
    """Serve the program until shutdown. Today: wait for SIGTERM (``ShutdownRequested``).

    A SIGTERM the program chose to ignore (``SIG_IGN`` in setup) never ends the wait: the
    node then kills the child once its ``shutdown`` time is up.
    """
    while True:
        select.select([signal_fd()], [], [])  # not signal.pause(): it can miss a signal
        _drain(signal_fd())


def signal_fd() -> int:
    """A fd that becomes readable when a signal with a Python handler arrives."""
    return _signal_fd


def exit_shutdown() -> NoReturn:
    """Exit now, cleanly: the node records the reason ``shutdown`` (no restart if transient)."""
    _notify("EXIT shutdown")
    _exit(0)


def _start(spec: ChildSpec) -> Program:
    """The program, set up; on any error report FAILED and exit with status 1."""
    try:
        program = instantiate(spec.program)
    except BaseException as exc:
        fail(f"cannot instantiate {spec.program!r}: {_describe(exc)}")
    try:
        program.setup(spec.args, config={})
    except BaseException as exc:
        fail(f"setup raised {_describe(exc)}")
    return program


def fail(why: str) -> NoReturn:
    """Report ``FAILED <why>`` to the node (with the traceback on stderr) and exit with status 1."""
    if sys.exc_info()[0] is not None:
        traceback.print_exc()
    _notify(f"FAILED {why}")
    _exit(1)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())


def _notify(line: str) -> None:
    try:
        os.write(NOTIFY_FD, line.encode() + b"\n")
    except OSError:
        pass  # the node is gone; the parent-death signal follows


_signal_fd = -1


def _catch_sigterm() -> None:
    """SIGTERM raises ShutdownRequested, unless the program set its own disposition."""
    global _signal_fd
    _signal_fd, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_shutdown)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _raise_shutdown(signum, frame) -> NoReturn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # teardown runs once
    raise ShutdownRequested


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
