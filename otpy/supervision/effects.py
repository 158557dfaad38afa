"""The vocabulary of the supervision machines: events in, effects out.

These are in-process values, never sent anywhere; the wire's messages live in
``wire/protocol.py`` and no name here is one of theirs, except where a wire request is carried
as it is (``Command``). A machine (``machine.StaticMachine``, ``dynamic.DynamicMachine``) takes
one event and returns the effects to carry out; the shell (``node/supervisor.Supervisor``)
carries them out in order. A ``Launch`` is always the last effect of a batch: its outcome
(``Launched``/``LaunchFailed``) is fed back at once, before anything else in the supervisor's
inbox, because OTP's supervisor is blocked while it starts a child.

One name per fact:

=================  ===============================================================================
``Boot``           event: start every child in order (OTP's ``init``)
``Launched``       event: a ``Launch`` worked; the child runs as a new incarnation
``LaunchFailed``   event: a ``Launch`` did not
``ChildExited``    event: an incarnation ended without being asked to
``Retry``          event: try a failed restart again (posted by the machine to its own inbox)
``RestartDue``     event: a delayed restart's time has come (``restart_delay``: an ``After`` fired)
``StopSupervisor`` event: stop every child and exit ``shutdown``
``Reconcile``      event: make the children match the variables now (``reconcile``), in one
                   ``phase``: ``make`` (replacements and starts), ``break`` (stops) or
                   ``all`` (both); answer an ``Outcome`` whose ``changes`` say what was done
``Command``        event: an administrative request, and where its answer goes. The request is
                   the wire's own message (``ChildRequest``: ``StartChild``, ``StartFromTemplate``,
                   ``TerminateChild``, ``RestartChild``, ``DeleteChild``, ``Reconfigure``), so a
                   request keeps one type from the control socket to the machine
``Launch``         effect: start this child (its spec resolved with the variables now), answer
                   ``Launched`` or ``LaunchFailed``
``Replace``        effect: the replacement launched for a ``Reconfigure`` becomes the child
``Stop``           effect: stop these children and wait until each is dead
``Post``           effect: put an event on the supervisor's own inbox
``After``          effect: put an event on the supervisor's own inbox once ``delay`` seconds passed
``Answer``         effect: answer a ``Command`` with the wire's ``Outcome`` (``otpy.Result``)
``Report``         effect: an event for the log and the events socket (``wire.protocol.EventKind``)
``Exit``           effect: the supervisor is done
=================  ===============================================================================

Two words for what ``ref`` used to mean: an ``incarnation`` numbers one start of a child (an
exit names the incarnation it ends, so the exit of an older one is recognised as stale);
``reply_to`` is where a ``Command``'s ``Answer`` goes (the shell's future).

One word for how a ``Reconfigure`` (or a reconcile's change of a running child) is carried
out: the *replacement*. The replacement is
launched beside the running child (``Launch(spec, replacement=True)``); once it runs,
``Replace(id)`` makes it the child, and the incarnation it replaced is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .exit import ExitReason
from ..specs.model import AnySpec
from ..wire import protocol as wire
from ..wire.protocol import EventKind, Outcome  # Outcome: the answer to a Command (otpy.Result)

# The requests a supervisor answers itself: each names a child (or carries its spec).
ChildRequest = (
    wire.StartChild | wire.StartFromTemplate | wire.TerminateChild | wire.RestartChild | wire.DeleteChild
    | wire.Reconfigure
)
# A reconcile's steps in two phases: ``make`` the replacements and starts (start order), then
# ``break``: the stops (reverse order); ``all``: both, one after the other.
ReconcilePhase = Literal["make", "break", "all"]


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Boot:
    """Start every child in order (the supervisor's ``init``)."""


@dataclass(frozen=True, slots=True)
class Launched:
    id: str
    incarnation: int  # a later exit of this start names it
    pid: int | None


@dataclass(frozen=True, slots=True)
class LaunchFailed:
    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A child ended without being asked to (a crash, a voluntary exit, a signal from outside)."""

    id: str
    incarnation: int
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
class RestartDue:
    """A delayed restart of ``id`` (its ``restart_delay``) is due: restart it now, with its group.

    ``token`` names the wait it ends, as a ``Retry``'s does: a timer left from a wait that was
    since ended (``terminate_child``, the child started by a group restart, deleted) is stale
    and ignored.
    """

    id: str
    token: int = 0


@dataclass(frozen=True, slots=True)
class StopSupervisor:
    """Stop every child and exit with reason ``shutdown`` (asked by the parent or ``stop``)."""


@dataclass(frozen=True, slots=True)
class Command:
    """An administrative request; its ``Answer`` goes to ``reply_to``."""

    request: ChildRequest
    reply_to: object = None


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Make the children match what the variables say now (the node changed them), only the
    steps of ``phase``; the ``Answer`` to ``reply_to`` is an ``Outcome`` whose ``changes``
    list what was done."""

    reply_to: object = None
    phase: ReconcilePhase = "all"


Event = Boot | Launched | LaunchFailed | ChildExited | Retry | RestartDue | StopSupervisor | Command | Reconcile


# --- effects ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Launch:
    """Start this child and feed ``Launched``/``LaunchFailed`` back.

    ``replacement``: the child is running; start its replacement beside it (``Replace`` follows).
    """

    spec: AnySpec
    replacement: bool = False


@dataclass(frozen=True, slots=True)
class Replace:
    """The replacement launched for ``id`` becomes the child; stop the incarnation it replaced."""

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
class After:
    """Put ``event`` on the supervisor's own inbox in ``delay`` seconds (a timer, never a sleep:
    the supervisor serves its inbox meanwhile). A timer still pending when the supervisor
    exits is cancelled."""

    delay: float
    event: Event


@dataclass(frozen=True, slots=True)
class Answer:
    reply_to: object
    result: Outcome


@dataclass(frozen=True, slots=True)
class Report:
    """Something worth logging and publishing on the events socket."""

    kind: EventKind
    child: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Exit:
    """The supervisor is done: every child is stopped. ``error`` is set when ``init`` failed."""

    reason: ExitReason
    error: str | None = None


Effect = Launch | Replace | Stop | Post | After | Answer | Report | Exit
