"""Restart intensity: OTP's sliding window of restart timestamps, with the clock read outside.

A supervisor may restart at most ``max_restarts`` times in any ``max_seconds`` window.
Timestamps are whole seconds of a monotonic clock, as in OTP's ``add_restart/3``
(``erlang:monotonic_time(second)``): an entry exactly ``max_seconds`` old still counts.

>>> window = RestartWindow(max_restarts=1, max_seconds=5)
>>> window.record(now=100.2), window.record(now=103.9)
(True, False)
>>> RestartWindow(max_restarts=1, max_seconds=5).record(now=0.0)
True
"""

from __future__ import annotations

import math


class RestartWindow:
    """The restart log of one supervisor (shared by all its children, not kept per child)."""

    __slots__ = ("max_restarts", "max_seconds", "_stamps")

    def __init__(self, max_restarts: int, max_seconds: int) -> None:
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self._stamps: list[int] = []

    def record(self, now: float) -> bool:
        """Count one restart at ``now`` (seconds). False when the intensity is exceeded."""
        second = math.floor(now)
        self._stamps = [s for s in self._stamps if s >= second - self.max_seconds]
        self._stamps.append(second)
        return len(self._stamps) <= self.max_restarts

    def exceeded(self, child_id: str) -> str:
        """Why a supervisor gives up, naming the child whose restart went over the limit."""
        return (f"child {child_id!r} exceeded the restart intensity "
                f"({self.max_restarts} restarts in {self.max_seconds} s)")

    def __len__(self) -> int:
        return len(self._stamps)

    def __repr__(self) -> str:
        return f"RestartWindow({len(self._stamps)}/{self.max_restarts} in {self.max_seconds}s)"
