"""What Linux says of other processes: their state and start time, their children, whether
they still have an image; and how to kill a process group quietly. (The attributes a process
sets on itself, ``prctl``, are in ``host/prctl``.)"""

from __future__ import annotations

import os
import signal
from typing import Callable, NamedTuple

from ..host.node_run import kill_run


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


GENERATION_VAR = "OTPY_ZYGOTE"  # which zygote generation of the run a process descends from


def kill_generation(run_id: str, generation: str, *, spare: frozenset[int] = frozenset(), rounds: int = 10) -> list[int]:
    """SIGKILL every process of this user (but ``spare`` and this process) whose environment
    carries both ``OTPY_NODE_RUN=<run_id>`` and ``OTPY_ZYGOTE=<generation>``: what one zygote
    of the run and everything below it left, sparing the other generations' processes."""
    return kill_run(run_id, spare=spare, rounds=rounds, tags=(f"{GENERATION_VAR}={generation}",))
