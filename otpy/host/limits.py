"""The process limits a node raises for itself before it starts a tree."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("otpy")


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, once per process.

    libzmq aborts the whole process (not an error) when it cannot get an fd; a node with
    many agents and clients needs more than the usual soft 1024.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.debug("otpy: cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    else:
        log.debug("otpy: open files limit raised from %d to %d", soft, target)


def _nr_open() -> int:
    """The kernel's cap on a process's fds (what an unlimited hard limit means in practice)."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20
