"""The vocabulary of the supervision state machines: events in, effects out.

These are in-process values, not wire messages (those live in ``_protocol``). A machine
(``_machine.StaticMachine``, ``_dynamic.DynamicMachine``) takes one event and returns the
effects to carry out; the shell (``_supervisor``) carries them out in order. A ``Spawn``
is always the last effect of a batch: its outcome (``SpawnOk``/``SpawnFailed``) is fed back
at once, before anything else in the supervisor's inbox, because OTP's supervisor is
blocked while it starts a child.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .exit import ExitReason
from ..specs.model import AnySpec


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Init:
    """Start every child in order (the supervisor's ``init``)."""


@dataclass(frozen=True, slots=True)
class SpawnOk:
    id: str
    ref: int  # identifies this incarnation; a later exit names it
    pid: int | None


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A child ended without being asked to (a crash, a voluntary exit, a signal from outside)."""

    id: str
    ref: int
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class Retry:
    """A restart that failed, tried again (posted by the supervisor to its own inbox).

    ``token`` names the failed attempt it follows: a Retry left queued from an earlier run of
    restarts (the child was terminated and started again meanwhile) no longer matches and is
    ignored, so two chains of retries never run side by side.
    """

    id: str
    token: int = 0


@dataclass(frozen=True, slots=True)
class StopSupervisor:
    """Stop every child and exit with reason ``shutdown`` (asked by the parent or ``stop``)."""


@dataclass(frozen=True, slots=True)
class StartChild:
    spec: AnySpec
    ref: object = None  # the reply slot


@dataclass(frozen=True, slots=True)
class StartFromTemplate:
    template: str
    id: str
    args: dict[str, Any] = field(default_factory=dict)
    ref: object = None


@dataclass(frozen=True, slots=True)
class TerminateChild:
    id: str
    ref: object = None


@dataclass(frozen=True, slots=True)
class RestartChild:
    id: str
    ref: object = None


@dataclass(frozen=True, slots=True)
class DeleteChild:
    id: str
    ref: object = None


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """Replace a running child's program by ``target`` under the same id, make-before-break."""

    id: str
    target: AnySpec
    ref: object = None


Event = (
    Init | SpawnOk | SpawnFailed | ChildExited | Retry | StopSupervisor
    | StartChild | StartFromTemplate | TerminateChild | RestartChild | DeleteChild | Reconfigure
)


# --- effects ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start this child and report ``SpawnOk``/``SpawnFailed`` back.

    ``replacing``: the child is running; start the new incarnation beside it (``Swap`` follows).
    """

    spec: AnySpec
    replacing: bool = False


@dataclass(frozen=True, slots=True)
class Swap:
    """Make the incarnation started with ``Spawn(replacing=True)`` current; stop the old one."""

    id: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop these children per their shutdown spec and wait until each is dead.

    ``parallel=False``: one at a time in the order given (reverse start order).
    ``parallel=True``: all signalled at once (dynamic supervisors).
    """

    ids: tuple[str, ...]
    parallel: bool = False


@dataclass(frozen=True, slots=True)
class Post:
    """Put an event on the supervisor's own inbox, behind whatever is waiting there."""

    event: Event


@dataclass(frozen=True, slots=True)
class Reply:
    ref: object
    result: "Result"


@dataclass(frozen=True, slots=True)
class Report:
    """Something worth logging and publishing on the events socket."""

    kind: Literal["restarting", "gave_up", "auto_shutdown", "start_failed", "exited", "reconfiguring"]
    child: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Exit:
    """The supervisor is done: every child is stopped. ``error`` is set when ``init`` failed."""

    reason: ExitReason
    error: str | None = None


Effect = Spawn | Swap | Stop | Post | Reply | Report | Exit


# --- results of administrative calls (OTP's outcomes) ---------------------------------------

Outcome = Literal[
    "ok", "already_started", "already_present", "running", "restarting", "not_found",
    "max_children", "start_failed", "not_supported", "invalid",
]


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    pid: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"
