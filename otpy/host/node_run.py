"""A node's run: the one tag every process of one run of a node carries, and the sweep by it.

Each start of a node picks a new run id; its zygote and every process below it inherit
``OTPY_NODE_RUN=<id>`` in their environment (a ``setsid`` grandchild too: the environment
is inherited whatever the process group or parent). When a run is over (its zygote died,
or the node died and a new run of the same node starts), whatever still carries its id is
killed: that is the last net under process groups, the parent-death signal and the
zygote's subreaper, and it can never touch another node, or another run of this one.

One run at a time: the node holds ``flock`` on its runtime FOLDER itself (a directory fd)
for its whole life. The kernel drops the lock when the node's process dies, however it dies,
so "the folder's lock is free" is the proof that no node of that name runs in that runtime
folder (a different runtime folder is a different namespace). Deleting or replacing a file in
the folder changes nothing to that. ``node.lock`` only holds the record ``<pid> <run id>
<folder's real path>``: who holds the lock, and, once free, which run is over and may be
swept; a record naming another folder (a copy) or a live pid is never swept.

>>> new_run_id() != new_run_id()
True
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from .runtime_dir import RuntimeDirError, read_private, write_private

RUN_VAR = "OTPY_NODE_RUN"
LOCK_NAME = "node.lock"
_NEEDLE_PREFIX = RUN_VAR.encode() + b"="
# A probe (``lock_holder``) holds the lock shared for microseconds; a start retries this long
# before it takes that probe for a running node.
_TAKE_PATIENCE = 0.25


class AlreadyRunning(Exception):
    """The lock is held: a node of that name runs in that runtime folder. ``pid``: its process (0 if unknown)."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.pid = pid


class RunLock:
    """This process's hold on a node's folder: taken by ``take``, dropped by ``release`` (or death)."""

    def __init__(self, fd: int, path: Path, run_id: str, previous_run: str | None) -> None:
        self.fd = fd
        self.path = path  # the record, node.lock
        self.run_id = run_id
        self.previous_run = previous_run  # the run recorded before this one: over, safe to sweep

    @classmethod
    def take(cls, folder: Path, run_id: str) -> "RunLock":
        """Lock ``folder`` and record this process and ``run_id`` in ``node.lock``; else AlreadyRunning."""
        fd = _lock_exclusive(folder)
        path = folder / LOCK_NAME
        try:
            previous = _sweepable_run(folder)
            write_private(path, f"{os.getpid()} {run_id} {_real(folder)}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path, run_id, previous)

    def release(self) -> None:
        """Drop the lock (the record stays: it names the run that is now over). Idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_holder(folder: Path) -> int | None:
    """The pid of the node holding ``folder``'s lock, 0 if held but not recorded (or the record is
    unreadable), None if free. Takes the lock shared, without waiting, and drops it at once: a
    question, not a claim."""
    try:
        fd = _open_folder(folder)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _recorded_pid(folder)
        return None
    finally:
        os.close(fd)


def sweep_dead_run(folder: Path, leftovers: list[Path]) -> bool:
    """For a node whose process died: kill what its run left, remove ``leftovers`` and the record.

    Done under the lock, so no start of the node can interleave; False (nothing done) when
    a node holds the lock after all.
    """
    try:
        lock = RunLock.take(folder, new_run_id())
    except AlreadyRunning:
        return False
    try:
        if lock.previous_run:
            kill_run(lock.previous_run)
        remove_leftovers([*leftovers, lock.path])
    finally:
        lock.release()
    return True


def _open_folder(folder: Path) -> int:
    """A read-only fd of the folder itself (never through a symlink): what the lock is taken on."""
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _lock_exclusive(folder: Path) -> int:
    """An fd of ``folder`` locked exclusively, or AlreadyRunning once ``_TAKE_PATIENCE`` has passed
    (a probe holds the lock shared for microseconds: that is not a node)."""
    fd = _open_folder(folder)
    deadline = time.monotonic() + _TAKE_PATIENCE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise AlreadyRunning(_recorded_pid(folder)) from None
            time.sleep(0.01)
        except BaseException:
            os.close(fd)
            raise


class Record(NamedTuple):
    """What ``node.lock`` says: the node's pid, its run id, and the folder it was written for."""

    pid: int
    run_id: str
    folder: str


def _read_record(folder: Path) -> Record | None:
    """The record in ``folder/node.lock``; None when absent or malformed; RuntimeDirError when
    ``node.lock`` is not a regular file (a symlink, a FIFO, a folder)."""
    data = read_private(folder / LOCK_NAME, 4096)
    fields = (data or b"").decode(errors="replace").rstrip("\n").split(" ", 2)
    if len(fields) != 3 or not fields[0].isdigit() or not fields[1]:
        return None
    return Record(int(fields[0]), fields[1], fields[2])


def _recorded_pid(folder: Path) -> int:
    """The holder's pid as recorded, 0 when unknown: a probe of a live node never fails on its record."""
    try:
        record = _read_record(folder)
    except RuntimeDirError:
        return 0
    return record.pid if record is not None and record.folder == _real(folder) else 0


def _sweepable_run(folder: Path) -> str | None:
    """The run the record names, if it may be swept: written for this folder (not a copy of another
    node's record) by a node whose process is dead (or by this process: its run is over, we hold the lock).
    Called under the lock."""
    record = _read_record(folder)
    if record is None or record.folder != _real(folder) or (record.pid != os.getpid() and _alive(record.pid)):
        return None
    return record.run_id


def _real(folder: Path) -> str:
    return os.path.realpath(folder)


def remove_leftovers(paths: list[Path]) -> None:
    """Remove the node's sockets (``host.runtime_dir.node_sockets``): at the end of its stop, and at its
    start once it holds the lock, so no socket file outlives the node that bound it."""
    for path in paths:
        _remove(path)


def _remove(path: Path) -> None:
    """Remove a file or a folder's files (one level: sockets), whichever ``path`` is; nothing if absent."""
    try:
        if path.is_dir() and not path.is_symlink():
            for entry in path.iterdir():
                entry.unlink(missing_ok=True)
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def new_run_id() -> str:
    return uuid.uuid4().hex


def processes_of_run(run_id: str, *, spare: frozenset[int] | set[int] = frozenset(),
                     tags: tuple[str, ...] = ()) -> list[int]:
    """Pids of this user's processes whose environment carries ``OTPY_NODE_RUN=<run_id>``, and
    every ``NAME=VALUE`` of ``tags`` too (a zygote generation: ``processes.linux``)."""
    needles = {_NEEDLE_PREFIX + run_id.encode(), *(tag.encode() for tag in tags)}
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
        if needles <= set(environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def kill_run(run_id: str, *, spare: frozenset[int] | set[int] = frozenset(), rounds: int = 10,
             tags: tuple[str, ...] = ()) -> list[int]:
    """SIGKILL every process of the run (but ``spare`` and this process; with ``tags``, only
    those whose environment carries them too); returns the pids.

    Rounds go on until a scan finds nothing (a process may fork while the scan runs).
    Zombies are not waited for here: their parent (or init) reaps them.
    """
    killed: list[int] = []
    for _ in range(rounds):
        pids = [pid for pid in processes_of_run(run_id, spare=spare, tags=tags) if pid not in killed or _alive(pid)]
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
