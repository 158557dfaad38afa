"""Restart delay and backoff: how long a restart waits (``ChildSpec.restart_delay``).

OTP restarts at once, and so does a child whose ``restart_delay`` is 0 (the default). Above
0, the n-th restart in a row waits ``restart_delay * 2**(n-1)`` seconds, at most
``restart_delay_max``. The row (``Child.streak``) starts again once an incarnation has stayed
up ``restart_delay_max`` seconds (its exit is then the first of a new row, as pm2 resets its
exponential backoff after 30 s up), and whenever anything but a restart starts the child
(``base.BaseMachine._started``). A ``lost`` exit (the zygote died, not the child's fault)
restarts at once and leaves the row as it is. Supervisors have no delay.

Pure, like the machines: the clock is the caller's ``now``.

>>> from otpy.specs.model import ChildSpec
>>> from otpy.supervision.children import Child
>>> from otpy.supervision.exit import ExitReason
>>> child = Child(ChildSpec(id="a", command=("x",), restart_delay=1.0, restart_delay_max=8.0), since=0.0)
>>> crash = ExitReason(kind="crashed", code=1)
>>> [next_delay(child, 1.0, crash) for _ in range(5)]
[1.0, 2.0, 4.0, 8.0, 8.0]
>>> next_delay(child, 9.0, crash)  # up for 9 s >= 8 s: a new row
1.0
"""

from __future__ import annotations

from .children import Child
from .exit import ExitReason, charged

MAX_DOUBLINGS = 64  # 2**64 times any delay is above any cap: no float overflow on a long row


def next_delay(child: Child, now: float, reason: ExitReason | None) -> float:
    """How long the restart of ``child`` at ``now`` waits (0: at once), counting it in its row;
    ``reason`` is its exit (None: a retry of a failed start, the next restart of the row)."""
    delay = getattr(child.spec, "restart_delay", 0.0)  # workers only: supervisors restart at once
    if delay <= 0 or (reason is not None and not charged(reason)):
        return 0.0
    cap = child.spec.restart_delay_max
    if reason is not None and child.since is not None and now - child.since >= cap:
        child.streak = 0  # it stayed up long enough: this exit starts a new row
    child.streak += 1
    return min(delay * 2.0 ** min(child.streak - 1, MAX_DOUBLINGS), cap)


def describe(delay: float, n: int) -> str:
    """The detail of a ``restart_delayed`` event: ``restart in 4 s (3rd restart in a row)``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"restart in {delay:g} s ({n}{suffix} restart in a row)"
