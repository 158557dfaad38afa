"""What a child the zygote forked does first, to become a program's worker or a command.

Before the program or command runs: its own process group, the parent-death signal,
default signal handling, ``/dev/null`` on fd 0, the stdout pipe on fd 1, the stderr pipe on
fd 2 (the node reads them apart: ``"out"`` and ``"err"``), the notify pipe on fd 3, no other fd, ``OTPY_*`` plus the spec's and request's environment, its cwd.

A spare does the request-free part ahead (``run_spare``): it detaches, warms up its call
socket (``WarmSocket``) and waits for its request on its control socket; then it is that
request's child like one forked for it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
from typing import Callable, NoReturn

from .call_socket import WarmSocket
from .notify import NOTIFY_FD, fail
from .worker import Worker
from ..host.prctl import die_with_parent, set_title
from ..wire.zygote_protocol import TO_ZYGOTE, Spawn

MAX_MESSAGE = 1 << 18  # a message on the zygote's sockets (a spawn request)
MAX_FD = os.sysconf("SC_OPEN_MAX")
ERROR_FD = 4  # in a command child: close-on-exec, says why there is no exec
SPARE_NAME = "otpy-spare"  # a spare's comm while it waits (its title: ``otpy: NODE spare``)
CHILD_FDS = ("notify", "stdout", "stderr")  # the write ends a spawn request carries, in this order


class Bootstrap:
    """A forked child's first steps. ``zygote_pid``: its parent (the parent-death signal);
    ``devnull``: the zygote's open ``/dev/null``."""

    def __init__(self, zygote_pid: int, devnull: int, stale: Callable[[], str] = lambda: "") -> None:
        self.zygote_pid = zygote_pid
        self.devnull = devnull
        self.stale = stale  # the zygote's check of its program sources: why they changed on disk, or ""

    def run_program(self, request: Spawn, notify: int, out: int, err: int) -> NoReturn:
        try:
            self._attach(request, notify, out, err)
            self._detach(exec_=False)
            _take_title(request.spec.id)
        except Exception as exc:
            fail(f"cannot start the child: {exc}")
        sys.stdout.reconfigure(line_buffering=True)
        Worker(request.spec, standby=request.standby, stale=self.stale).run()

    def run_spare(self, control: socket.socket) -> NoReturn:
        """A spare: detached and warmed up ahead, it gets its request (and fds) from the zygote,
        then runs like a program forked for it. The zygote closing ``control`` ends it."""
        control = socket.socket(fileno=_above(control.detach(), ERROR_FD))
        self.devnull = _above(self.devnull, ERROR_FD)
        _close_all_but(control.fileno(), self.devnull)
        for placeholder in (NOTIFY_FD, ERROR_FD):  # the warm-up's fds must go above these
            os.dup2(self.devnull, placeholder)
        self._detach(exec_=False)
        node = os.environ.get("OTPY_NODE")
        set_title(f"otpy: {node} spare", SPARE_NAME)
        warm = WarmSocket(node) if node else None
        data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, len(CHILD_FDS))
        control.close()
        if not data:  # retired
            if warm is not None:
                warm.forget()
            os._exit(0)
        request = TO_ZYGOTE.decode(data)
        try:
            _take_title(request.spec.id)
            self._attach(request, *fds, warm=True)
        except Exception as exc:
            fail(f"cannot start the child: {exc}")
        sys.stdout.reconfigure(line_buffering=True)
        Worker(request.spec, warm, standby=request.standby, stale=self.stale).run()

    def exec_command(self, request: Spawn, notify: int, out: int, err: int, error: int) -> NoReturn:
        argv = list(request.spec.command or ())
        try:
            self._attach(request, notify, out, err, error)
            self._detach(exec_=True)
        except Exception as exc:
            _write_error(str(exc))
        try:
            if not argv:
                raise ValueError("empty command")
            os.execvpe(argv[0], argv, os.environ)
        except OSError as exc:
            _write_error(f"[Errno {exc.errno}] {exc.strerror}: {argv[0]!r}")
        except BaseException as exc:
            _write_error(f"{type(exc).__name__}: {exc}")

    def _detach(self, exec_: bool) -> None:
        """What makes a fork a child of its own: its process group, the parent-death signal,
        default signal handling."""
        os.setpgid(0, 0)
        die_with_parent(self.zygote_pid)
        _reset_signals(exec_)

    def _attach(self, request: Spawn, notify: int, out: int, err: int, error: int = -1, *,
                warm: bool = False) -> None:
        """What makes it this request's child: fds 0-4, no other fd, environment, cwd. Its fds
        first, so that later errors can be reported.

        ``warm``: a spare's, whose ZeroMQ fds (above 4) stay open; only the fds the hand-over
        brought are closed, and the placeholders it kept on 3 and 4.
        """
        spec = request.spec
        given = (notify, out, err, error, self.devnull)
        notify, out, err, error, devnull = moved = tuple(_above(fd, ERROR_FD) for fd in given)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.dup2(notify, NOTIFY_FD)
        if error >= 0:
            os.dup2(error, ERROR_FD, inheritable=False)
        if warm:
            for fd in {*given, *moved, ERROR_FD} - {-1, 0, 1, 2, NOTIFY_FD}:
                os.close(fd)
        else:
            os.closerange(ERROR_FD + 1 if error >= 0 else ERROR_FD, MAX_FD)
        os.environ.update({"OTPY_CHILD_ID": spec.id, "OTPY_NOTIFY_FD": str(NOTIFY_FD),
                           "OTPY_INCARNATION": str(os.getpid())})
        os.environ.update(spec.env)
        os.environ.update(request.env)
        if spec.cwd:
            os.chdir(spec.cwd)


def _take_title(child_id: str) -> None:
    """What ``ps`` and ``top`` show for a program child: ``otpy: NODE/ID``, and its id as ``comm``.
    (A command's exec replaces both with its own command line.)"""
    set_title(f"otpy: {os.environ.get('OTPY_NODE')}/{child_id}", child_id)


def _above(fd: int, highest: int) -> int:
    """``fd``, moved above ``highest`` if it is one of the fds the child's dup2s overwrite."""
    return fd if fd < 0 or fd > highest else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, highest + 1)


def _close_all_but(*keep: int) -> None:
    """Close every fd above 2 but ``keep``."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)


def _write_error(text: str) -> NoReturn:
    """In a command child: tell the zygote, through the error pipe, why there is no exec."""
    os.write(ERROR_FD, text.encode(errors="replace"))
    os._exit(127)


def _reset_signals(exec_: bool) -> None:
    """What a fresh process has: Python's own defaults for a worker, SIG_DFL for a command."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the zygote's own handler is not the child's
    if exec_:
        for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
    else:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
