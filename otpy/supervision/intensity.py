"""Restart intensity: OTP's sliding window of restart timestamps, with the clock read outside.

A supervisor may restart at most ``max_restarts`` times in any ``max_seconds`` window.
Timestamps are whole seconds of a monotonic clock, as in OTP's ``add_restart/3``
(``erlang:monotonic_time(second)``): an entry exactly ``max_seconds`` old still counts.

>>> window = RestartWindow(max_restarts=1, max_seconds=5)
>>> window.record(now=100.2), window.record(now=103.9)
(True, False)
>>> RestartWindow(max_restarts=1, max_seconds=5).record(now=0.0)
True

An entry exactly ``max_seconds`` old is kept; one a second older is dropped:

>>> window = RestartWindow(max_restarts=1, max_seconds=5)
>>> window.record(now=10.0), window.record(now=15.9), len(window)
(True, False, 2)
>>> window = RestartWindow(max_restarts=1, max_seconds=5)
>>> window.record(now=10.0), window.record(now=16.0), len(window)
(True, True, 1)

OTP filters the whole list on every restart; here the stamps are kept oldest first in a
deque and only the expired ones are popped from the left, so a restart costs O(1) amortized
whatever the window holds (a supervisor with a high intensity may hold many stamps). That
relies on ``now`` never decreasing, which a monotonic clock guarantees.
"""

from __future__ import annotations

import math
from collections import deque


class RestartWindow:
    """The restart log of one supervisor (shared by all its children, not kept per child)."""

    __slots__ = ("max_restarts", "max_seconds", "_stamps")

    def __init__(self, max_restarts: int, max_seconds: int) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._stamps: deque[int] = deque()  # whole seconds, oldest first

    def record(self, now: float) -> bool:
        """Count one restart at ``now`` (seconds). False when the intensity is exceeded."""
        second = math.floor(now)
        oldest_kept = second - self.max_seconds
        stamps = self._stamps
        while stamps and stamps[0] < oldest_kept:
            stamps.popleft()
        stamps.append(second)
        return len(stamps) <= self.max_restarts

    def exceeded(self, child_id: str) -> str:
        """Why a supervisor gives up, naming the child whose restart went over the limit."""
        return (f"child {child_id!r} exceeded the restart intensity "
                f"({self.max_restarts} restarts in {self.max_seconds} s)")

    def __len__(self) -> int:
        return len(self._stamps)

    def __repr__(self) -> str:
        return f"RestartWindow({len(self._stamps)}/{self.max_restarts} in {self.max_seconds}s)"
