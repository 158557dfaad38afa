"""Hardening of the supervision decisions, without processes: the cost of the restart window,
exits that are not the child's fault (``lost``), what a child is shown as between events,
and the dynamic supervisor's parallel stops."""

from __future__ import annotations

import math

from otpy._intensity import RestartWindow


# --- the restart window costs O(1) amortized per restart --------------------------------------


class _CountedSecond(int):
    """A whole second that counts every comparison made with it (the window's only work)."""

    comparisons = 0

    def __sub__(self, other):
        return _CountedSecond(int(self) - int(other))

    def _count(op):
        def compare(self, other):
            _CountedSecond.comparisons += 1
            return op(int(self), int(other))
        return compare

    __lt__ = _count(int.__lt__)
    __le__ = _count(int.__le__)
    __gt__ = _count(int.__gt__)
    __ge__ = _count(int.__ge__)
    del _count


class _Now(float):
    """A clock reading whose whole second (``math.floor``) is a ``_CountedSecond``."""

    def __floor__(self):
        return _CountedSecond(math.floor(float(self)))


def _comparisons_to_record(stamps: list[float], max_seconds: int) -> int:
    window = RestartWindow(max_restarts=len(stamps) + 1, max_seconds=max_seconds)
    _CountedSecond.comparisons = 0
    for now in stamps:
        assert window.record(_Now(now))
    return _CountedSecond.comparisons


class TestWindowCost:
    """OTP's add_restart filters its whole list on every restart: O(restarts in the window).
    With a high intensity that is milliseconds per restart (6.5 ms at 100k stamps); the
    window here pops expired stamps from the left, so n restarts cost O(n) in all."""

    N = 2000

    def test_restarts_within_one_window_cost_constant_work_each(self):
        # Every stamp stays in the window: the old list filter compared each one each time
        # (n²/2 = 2 million comparisons); popping from the left compares once per restart.
        assert _comparisons_to_record([0.5] * self.N, max_seconds=5) <= 2 * self.N

    def test_a_sliding_window_pops_each_stamp_once(self):
        # Ten restarts a second for five minutes, 5 s window: about 50 stamps held at a time.
        stamps = [i / 10 for i in range(self.N)]
        assert _comparisons_to_record(stamps, max_seconds=5) <= 3 * self.N

    def test_the_semantics_are_otps_add_restart(self):
        # Whole seconds; kept while >= now - max_seconds; more than max_restarts gives up.
        window = RestartWindow(max_restarts=2, max_seconds=5)
        assert [window.record(t) for t in (0.9, 5.0, 5.99)] == [True, True, False]  # 0 is kept at 5
        window = RestartWindow(max_restarts=2, max_seconds=5)
        assert [window.record(t) for t in (0.9, 5.0, 6.0)] == [True, True, True]  # 0 is dropped at 6
        assert len(window) == 2
        assert RestartWindow(max_restarts=0, max_seconds=5).record(0.0) is False
