"""What the kernel and the disk say of a hot standby (``processes.standby``), asked at its take-over:
whether its process can serve (``unusable``: dead, dying, stopped), whether its program's source
files changed since it imported them (``changed``), and its private memory (``private_kib``)."""

from __future__ import annotations

import os
import select
from typing import Any

PF_EXITING = 0x4  # /proc/PID/stat field 9 (flags): the process is in its exit
SIGKILL_BIT = 1 << (9 - 1)  # SIGKILL in /proc/PID/status's SigPnd / ShdPnd masks


def unusable(child: Any) -> str:
    """Why the kernel says a standby cannot take over ("" if it can): dead (its pidfd is
    readable, it is a zombie), gone (reaped: its pid may be reused), dying (a SIGKILL pending,
    or in its exit), or stopped. The zygote's report of a death comes one hop later: it is not
    waited for."""
    pid = child.pid
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return "gone"
    try:
        exited = bool(select.select([pidfd], [], [], 0)[0])
        fields = _read(f"/proc/{pid}/stat").rpartition(b")")[2].split()
        status = _read(f"/proc/{pid}/status")
    except OSError:
        return "gone"
    finally:
        os.close(pidfd)
    try:
        state, flags, start_time = fields[0].decode(), int(fields[6]), int(fields[19])
        pending = _mask(status, b"\nSigPnd:") | _mask(status, b"\nShdPnd:")
    except (IndexError, ValueError):
        return "gone"
    if child.start_time is not None and start_time != child.start_time:
        return "gone"
    if exited or state in "ZXx":
        return "dead"
    if pending & SIGKILL_BIT or flags & PF_EXITING:
        return "dying"
    if state in "Tt":
        return "stopped"
    return ""


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def _mask(status: bytes, key: bytes) -> int:
    """A signal mask of ``/proc/PID/status`` (hex), by its ``key`` (ValueError if it is not there)."""
    start = status.index(key) + len(key)
    return int(status[start:status.index(b"\n", start)], 16)


def changed(sources: list[tuple[str, int, int]]) -> str:
    """Why the program's code changed on disk since the standby's fork ("" if it did not):
    the zygote's own check (``processes.sources``), made here."""
    for path, mtime, size in sources:
        try:
            info = os.stat(path)
        except OSError:
            return f"{path} is gone"
        if (info.st_mtime_ns, info.st_size) != (mtime, size):
            return f"{path} changed"
    return ""


def private_kib(pid: int) -> int:
    """``Private_Clean + Private_Dirty`` of ``pid`` in kB (0 if it cannot be read)."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return total
