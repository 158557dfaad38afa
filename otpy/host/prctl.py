"""The Linux process attributes every otpy process sets on itself (``prctl``): the zygote,
and every child it forks before the child becomes a worker or a command."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
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


def process_name() -> str:
    """This thread's name as ``ps`` shows it (``comm``)."""
    with open("/proc/thread-self/comm") as f:
        return f.read().rstrip("\n")


def set_process_name(name: str) -> None:
    """Set ``comm`` (at most 15 bytes kept): what ``ps -o comm`` and ``top`` show."""
    if _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_NAME): {os.strerror(errno)}")
