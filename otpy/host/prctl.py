"""The Linux process attributes every otpy process sets on itself: the zygote, and every child
it forks before the child becomes a worker or a command.

The parent-death signal and the subreaper are ``prctl`` calls no library wraps; the title
``ps`` and ``top`` show is ``setproctitle``'s (``set_title``). setproctitle writes the title
over the process's argv, and by default over its environment too, which would blank
``/proc/PID/environ``: otpy's sweeps by run id (``host.node_run``) and the zygote's orphan
check read it. So the zygote calls ``prepare_titles`` first thing: titles then stay within
the argv it was started with (``TITLE_ROOM``: the zygote's launcher pads its argv to that),
and every child forked from it inherits that setting.
"""

from __future__ import annotations

import ctypes
import os
import signal

import setproctitle

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
TITLE_ROOM = 160  # bytes of argv a title may take: "otpy: " and the longest node name and id (64 each)


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


def prepare_titles() -> None:
    """Make titles leave ``/proc/PID/environ`` intact, before the first title is set.

    setproctitle reads ``SPT_NOENV`` once, when it first finds the argv area; the variable is
    removed again at once, so that no child inherits it.
    """
    had = os.environ.get("SPT_NOENV")
    os.environ["SPT_NOENV"] = "1"
    try:
        setproctitle.getproctitle()
    finally:
        if had is None:
            del os.environ["SPT_NOENV"]
        else:
            os.environ["SPT_NOENV"] = had


def set_title(title: str, short: str) -> None:
    """What ``ps`` (args), ``top -c`` and htop show: ``title``; what ``ps -o comm``, ``top`` and
    ``pgrep`` see: ``short``, at most 15 bytes (the kernel's ``comm``)."""
    setproctitle.setproctitle(title)
    setproctitle.setthreadtitle(short)  # the calling thread: the main one, whose comm is the process's
