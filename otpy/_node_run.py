"""A node's run: the one tag every process of one run of a node carries, and the sweep by it.

Each start of a node picks a new run id; its zygote and every process below it inherit
``OTPY_NODE_RUN=<id>`` in their environment (a ``setsid`` grandchild too: the environment
is inherited whatever the process group or parent). When a run is over (its zygote died,
or the node died and a new run of the same node starts), whatever still carries its id is
killed: that is the last net under process groups, the parent-death signal and the
zygote's subreaper, and it can never touch another node, or another run of this one.

>>> new_run_id() != new_run_id()
True
"""

from __future__ import annotations

import os
import signal
import uuid

RUN_VAR = "OTPY_NODE_RUN"
_NEEDLE_PREFIX = RUN_VAR.encode() + b"="


def new_run_id() -> str:
    return uuid.uuid4().hex


def processes_of_run(run_id: str, *, spare: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Pids of this user's processes whose environment carries ``OTPY_NODE_RUN=<run_id>``."""
    needle = _NEEDLE_PREFIX + run_id.encode()
    me, uid, found = os.getpid(), os.getuid(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in spare or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone meanwhile, or not readable
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_run(run_id: str, *, spare: frozenset[int] | set[int] = frozenset(), rounds: int = 10) -> list[int]:
    """SIGKILL every process of the run (but ``spare`` and this process); returns the pids.

    Rounds go on until a scan finds nothing (a process may fork while the scan runs).
    Zombies are not waited for here: their parent (or init) reaps them.
    """
    killed: list[int] = []
    for _ in range(rounds):
        pids = [pid for pid in processes_of_run(run_id, spare=spare) if pid not in killed or _alive(pid)]
        pids = [pid for pid in pids if not _zombie(pid)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            if pid not in killed:
                killed.append(pid)
    return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True
