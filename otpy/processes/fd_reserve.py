"""A reserve of file descriptors, so that running out of fds cannot starve restarts.

A node's fds are shared by everything in its process: client connections on the control
socket (ZeroMQ opens one per peer), the events socket, three pipes per live child (notify,
stdout, stderr: the node keeps their read ends). A flood of connections can take every fd up
to ``RLIMIT_NOFILE``; a restart then fails in
``os.pipe2`` with ``EMFILE`` exactly when it matters. The process manager therefore holds a
few fds open on ``/dev/null`` from the start. When making a child's pipes (or starting a
zygote) fails with ``EMFILE``/``ENFILE``, it gives the reserve back, tries once more, and
takes back what it can afterwards (a live child keeps 3 fds, so a reserve shrinks by 3 per
spawn made while the process is out of fds; the next spawns take it back as fds are freed).
When even the reserve is not enough, the spawn fails like any start failure (``StartFailed``
with the errno text), and nothing is left open.

>>> reserve = FdReserve(2)
>>> reserve.fill(); len(reserve)
2
>>> reserve.call(lambda: "made")
'made'
>>> reserve.release(); len(reserve)
0
"""

from __future__ import annotations

import errno
import os
from typing import Callable, TypeVar

T = TypeVar("T")
RESERVE_SIZE = 12  # three spawns' worth once out of fds: a spawn takes 6 fds at once (three pipes), keeps 3
OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE})


class FdReserve:
    """Fds held on ``/dev/null``, given back when the process runs out of fds."""

    def __init__(self, size: int = RESERVE_SIZE) -> None:
        self.size = size
        self._fds: list[int] = []

    def __len__(self) -> int:
        return len(self._fds)

    def fill(self) -> None:
        """Take fds until the reserve is full, or none is left to take."""
        while len(self._fds) < self.size:
            try:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def release(self) -> None:
        """Give every reserved fd back to the process."""
        while self._fds:
            os.close(self._fds.pop())

    def call(self, make: Callable[[], T]) -> T:
        """``make()``; if it runs out of fds, once more with the reserve given back.

        ``make`` must leave nothing open when it raises. Its last ``OSError`` is raised.
        """
        try:
            return make()
        except OSError as exc:
            if exc.errno not in OUT_OF_FDS or not self._fds:
                raise
        self.release()
        try:
            return make()
        finally:
            self.fill()


def pipes(count: int) -> list[tuple[int, int]]:
    """``count`` close-on-exec pipes, or ``OSError`` with none of them left open."""
    made: list[tuple[int, int]] = []
    try:
        for _ in range(count):
            made.append(os.pipe2(os.O_CLOEXEC))
    except OSError:
        for read, write in made:
            os.close(read)
            os.close(write)
        raise
    return made
