"""A node's run: the one tag every process of one run of a node carries, and the sweep by it.

Each start of a node picks a new run id; its zygote and every process below it inherit
``OTPY_NODE_RUN=<id>`` in their environment (a ``setsid`` grandchild too: the environment
is inherited whatever the process group or parent). When a run is over (its zygote died,
or the node died and a new run of the same node starts), whatever still carries its id is
killed: that is the last net under process groups, the parent-death signal and the
zygote's subreaper, and it can never touch another node, or another run of this one.

One run at a time: the node holds ``flock`` on ``node.lock`` in its runtime folder for its
whole life. The kernel drops the lock when the node's process dies, however it dies, so
"the lock is free" is the proof that no node of that name runs in that runtime folder (a
different runtime folder is a different namespace). The file records ``<pid> <run id>``:
who holds it, and, once free, which run is over and may be swept.

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
    """This process's hold on a node's ``node.lock``: taken by ``take``, dropped by ``release`` (or death)."""

    def __init__(self, fd: int, path: Path, run_id: str, previous_run: str | None) -> None:
        self.fd = fd
        self.path = path
        self.run_id = run_id
        self.previous_run = previous_run  # the run recorded before this one: over, safe to sweep

    @classmethod
    def take(cls, folder: Path, run_id: str) -> "RunLock":
        """Lock ``folder/node.lock`` and record this process and ``run_id``; else AlreadyRunning."""
        path = folder / LOCK_NAME
        fd = _lock_exclusive(path)
        try:
            previous = _read_record(fd)[1]
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {run_id}\n".encode(), 0)
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
    """The pid of the node holding ``folder/node.lock``, 0 if held but not recorded yet, None if free.

    Takes the lock shared, without waiting, and drops it at once: a question, not a claim.
    """
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_record(fd)[0]
        return None
    finally:
        os.close(fd)


def sweep_dead_run(folder: Path, leftovers: list[Path]) -> bool:
    """For a node whose process died: kill what its run left, remove ``leftovers`` and the lock.

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
        for path in leftovers:
            _remove(path)
        os.unlink(lock.path)  # a start waiting on this inode sees it unlinked and opens anew
    finally:
        lock.release()
    return True


def _lock_exclusive(path: Path) -> int:
    """An fd of ``path`` (created 0600) locked exclusively; the file is still the one at ``path``."""
    deadline = time.monotonic() + _TAKE_PATIENCE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_record(fd)[0]
            os.close(fd)
            if time.monotonic() >= deadline:
                raise AlreadyRunning(pid) from None
            time.sleep(0.01)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # unlinked by a sweep while we waited: lock the new file


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_record(fd: int) -> tuple[int, str | None]:
    """(pid, run id) recorded in a lock file; (0, None) when empty or unreadable."""
    fields = os.pread(fd, 200, 0).decode(errors="replace").split()
    if len(fields) != 2 or not fields[0].isdigit():
        return 0, None
    return int(fields[0]), fields[1]


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
