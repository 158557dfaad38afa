"""Exit reasons: how an OS process's end maps onto OTP's, and whether it is restarted.

This is the only place where wait statuses become reasons.

==========================  ===========  ============================
how the process ended       reason       class
==========================  ===========  ============================
exit status 0               normal       clean
killed by SIGTERM           shutdown     clean
reported ``shutdown [T]``   shutdown     clean (the program asked; T is {shutdown, T})
killed by SIGKILL           killed       abnormal
non-zero status             crashed      abnormal (keeps the code)
any other signal            crashed      abnormal (keeps the signal)
never got READY             failed       abnormal (a failed start)
lost with otpy's zygote     lost         abnormal, not charged (see below)
==========================  ===========  ============================

And the decision table (OTP's ``do_restart/3``):

==========  ==========  ==========
restart     clean       abnormal
==========  ==========  ==========
permanent   restart     restart
transient   no          restart
temporary   no          no
==========  ==========  ==========

``lost`` is otpy's, not OTP's: the child was killed because a process of otpy's own died
under it (the zygote, its parent; ``ExitReason(kind="lost", detail="the zygote died")``).
It is abnormal for the table above (permanent and transient children are restarted,
temporary ones are not) and the strategy applies as for any restart, but the restart is
not recorded in the supervisor's restart window: a fault of the runtime is not the
children's, and charging it would make a supervisor with more children than
``max_restarts`` give up each time the zygote dies (``charged`` below).

>>> should_restart("transient", ExitReason(kind="lost")), charged(ExitReason(kind="lost"))
(True, False)
>>> charged(ExitReason(kind="killed", signal=9))
True
"""

from __future__ import annotations

import os
import signal
from typing import Literal

import msgspec

from ..specs.model import RestartType

ReasonKind = Literal["normal", "shutdown", "killed", "crashed", "failed", "lost"]


class ExitReason(msgspec.Struct, frozen=True, kw_only=True):
    kind: ReasonKind
    code: int | None = None
    signal: int | None = None
    detail: str | None = None

    @property
    def clean(self) -> bool:
        return self.kind in ("normal", "shutdown")

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            text = f"{self.kind} ({name})"
        elif self.code is not None and self.kind != "normal":
            text = f"{self.kind} (exit status {self.code})"
        else:
            text = self.kind
        return f"{text}: {self.detail}" if self.detail else text


NORMAL = ExitReason(kind="normal", code=0)
SHUTDOWN = ExitReason(kind="shutdown")


def from_wait_status(status: int, reported: str | None = None) -> ExitReason:
    """Classify a ``waitpid`` status. A reason the child reported itself wins over the status:
    ``shutdown`` or ``shutdown TERM`` (OTP's ``{shutdown, Term}``: clean, ``TERM`` the detail)."""
    word, _, term = (reported or "").partition(" ")
    if word == "shutdown":
        reported, term = "shutdown", term.strip() or None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if reported == "shutdown":
            return ExitReason(kind="shutdown", signal=sig, detail=term)
        if sig == signal.SIGTERM:
            return ExitReason(kind="shutdown", signal=sig)
        if sig == signal.SIGKILL:
            return ExitReason(kind="killed", signal=sig)
        return ExitReason(kind="crashed", signal=sig)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    if reported == "shutdown":
        return ExitReason(kind="shutdown", code=code, detail=term)
    if code == 0:
        return NORMAL
    return ExitReason(kind="crashed", code=code)


def should_restart(restart: RestartType, reason: ExitReason) -> bool:
    """OTP's decision: permanent always, transient only after an abnormal exit, temporary never."""
    match restart:
        case "permanent":
            return True
        case "transient":
            return not reason.clean
        case "temporary":
            return False


def charged(reason: ExitReason) -> bool:
    """Whether restarting after ``reason`` counts toward the supervisor's restart intensity.

    Every exit does but ``lost``: a child killed by the death of otpy's own zygote did
    nothing wrong, and the intensity limits children that keep failing, not the runtime.
    """
    return reason.kind != "lost"
