"""The Linux process attributes every otpy process sets (``prctl``)."""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Callable, NamedTuple

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


class ProcStat(NamedTuple):
    """What ``/proc/<pid>/stat`` says of a process: enough to tell a dead or reused pid."""

    state: str  # "R", "S", ..., "Z" (a zombie: dead, not reaped yet)
    start_time: int  # clock ticks after boot: a reused pid has another one
    exit_code: int  # a zombie's wait status (Linux 3.5+), else 0


def proc_stat(pid: int) -> ProcStat | None:
    """``pid``'s state, start time and exit code (fields 3, 22, 52), or None if it is gone.

    Raises OSError when it cannot tell (out of fds: ``EMFILE``): not knowing is not "gone"."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        fields = os.read(fd, 4096).rsplit(b")", 1)[1].split()
        return ProcStat(fields[0].decode(), int(fields[19]), int(fields[49]) if len(fields) > 49 else 0)
    except (ProcessLookupError, IndexError, ValueError):
        return None  # it died as we read
    finally:
        os.close(fd)


def children_of(pid: int) -> set[int]:
    """``pid``'s children now, zombies included (empty if it is gone): one read for them all.

    Linux may miss a child that is created or exits during the read: what is missing here
    needs another look (``proc_stat``), what is listed was its child."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return {int(p) for p in f.read().split()}
    except (OSError, ValueError):
        return set()


def has_image(pid: int) -> bool:
    """Whether ``pid`` still has its program image: one ``readlink``, about a third of the
    cost of reading its stat. A zombie (or a process well into its exit) has none; so has a
    process whose ``exe`` we may not read (setuid): then ``proc_stat`` decides."""
    try:
        os.readlink(f"/proc/{pid}/exe")
        return True
    except OSError:
        return False


def kill_group(pgid: int) -> None:
    """SIGKILL every process in the process group ``pgid`` (a child's pid)."""
    if pgid > 0:
        signal_quietly(os.killpg, pgid, signal.SIGKILL)


def signal_quietly(send: Callable[[int, int], None], target: int, sig: int) -> None:
    """``send(target, sig)``, nothing if the target is gone or not ours."""
    try:
        send(target, sig)
    except (ProcessLookupError, PermissionError):
        pass
