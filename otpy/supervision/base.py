"""What both supervision machines decide the same way, written once.

``machine.StaticMachine`` and ``dynamic.DynamicMachine`` differ in how they start children (a
chain of starts in order, or one start at a time) and in what a restart bounces (the
strategy). Everything else is here: an exit and the restart decision table, the charge of a
restart to the intensity, retries, the supervisor's shutdown, and the checks of
``start_child``, and the one entry point ``handle``. A subclass supplies ``_boot``,
``_launched`` and ``_launch_failed`` (its starts), ``_command`` (its administrative calls),
``_restart_group`` (what a restart stops and starts), ``_not_restarted`` (what becomes of a
child its exit does not restart) and ``parallel_stop``.

A restart is recorded in the restart window (and may make the supervisor give up) unless
the exit was ``lost``: the child died because otpy's zygote died under it, which is not
the child's fault. A lost child is still restarted per the decision table (permanent and
transient, not temporary) and the strategy still applies (``one_for_all`` and
``rest_for_one`` bounce their groups as for a crash); only the charge is skipped
(``exit.charged``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from .children import Child, ChildTable
from .effects import (
    Answer, Boot, ChildExited, ChildRequest, Command, Effect, Event, Exit, LaunchFailed, Launched, Post,
    Report, Outcome, Retry, Stop, StopSupervisor,
)
from .exit import SHUTDOWN, ExitReason, charged, should_restart
from .intensity import RestartWindow
from ..specs.model import AnySpec, DynamicSupervisorSpec, SupervisorSpec
from ..specs.rules import significance_problem

Phase = Literal["new", "starting", "running", "terminated"]
StartPurpose = Literal["restart", "start"]  # a restart decided by the machine, or init / a call


@dataclass(slots=True)
class Starting:
    """Starts in progress: the ids still to start (the first is being launched), what they are
    for, and where the answer goes (a ``start_child`` or ``restart_child`` call)."""

    purpose: Literal["init", "restart", "start_child", "restart_child"]
    pending: deque[str]
    reply_to: object = None


class BaseMachine:
    parallel_stop = False  # how the supervisor's own shutdown stops its children

    def __init__(self, spec: SupervisorSpec | DynamicSupervisorSpec, children: tuple[AnySpec, ...] = ()) -> None:
        self.spec = spec
        self.children = ChildTable(children)
        self.window = RestartWindow(spec.max_restarts, spec.max_seconds)
        self.phase: Phase = "new"
        self._chain: Starting | None = None

    # --- the one entry point --------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        """The effects of ``event`` at ``now`` (seconds of a monotonic clock, read by the caller)."""
        if self.phase == "terminated":
            return refused(event)
        match event:
            case Boot():
                return self._boot()
            case Launched(id, incarnation, pid):
                return self._launched(id, incarnation, pid)
            case LaunchFailed(id, reason):
                return self._launch_failed(id, reason)
            case ChildExited(id, incarnation, reason):
                return self._child_exited(id, incarnation, reason, now)
            case Retry(id, token):
                return self._retry(id, token, now)
            case StopSupervisor():
                return self._terminate(SHUTDOWN)
            case Command(request, reply_to):
                return self._command(request, reply_to)
        raise TypeError(f"unknown event {event!r}")

    # --- queries (read directly: they change nothing) --------------------------------------

    @property
    def order(self) -> list[str]:
        return self.children.order

    def running_in_reverse(self, ids: list[str] | None = None) -> tuple[str, ...]:
        return self.children.running_in_reverse(ids)

    def starting_for(self, id: str) -> StartPurpose | None:
        """Why ``id`` is about to be started by the starts in progress (None: it is not).

        Between the ``Launch`` and its outcome the table says ``stopped``; a query answered
        then shows the child ``restarting`` or ``starting`` instead (``Supervisor.children_info``).
        """
        chain = self._chain
        if chain is None or id not in chain.pending:
            return None
        return "restart" if chain.purpose == "restart" else "start"

    # --- exits, restarts, retries -------------------------------------------------------------

    def _child_exited(self, id: str, incarnation: int, reason: ExitReason, now: float) -> list[Effect]:
        child = self.children.take_exit(id, incarnation) if self.phase == "running" else None
        if child is None:
            return []  # an exit during start-up or shutdown, or of an incarnation no longer current
        exited = Report("exited", id, str(reason))
        if should_restart(child.spec.restart, reason):
            return [exited] + self._restart(id, now, reason)
        return [exited] + self._not_restarted(child)

    def _retry(self, id: str, token: int, now: float) -> list[Effect]:
        if self.phase != "running" or not self.children.is_due(id, token):
            return []  # a Retry of an earlier run of restarts
        return self._restart(id, now)

    def _restart(self, id: str, now: float, reason: ExitReason | None = None) -> list[Effect]:
        """Restart ``id`` per the strategy; ``reason`` is its exit (None for a Retry)."""
        if (gave_up := self._charge(id, now, reason)) is not None:
            return [gave_up] + self._terminate(SHUTDOWN)
        self.children[id].restarts += 1
        return [Report("restarting", id)] + self._restart_group(id)

    def _charge(self, id: str, now: float, reason: ExitReason | None) -> Report | None:
        """Count the restart of ``id`` toward intensity, unless its exit was not its fault (``lost``).

        A Retry (``reason`` None) always counts: it is a new attempt after a failed start.
        Returns the ``gave_up`` report when the intensity is exceeded, else None.
        """
        if reason is not None and not charged(reason):
            return None
        if self.window.record(now):
            return None
        return Report("gave_up", id, self.window.exceeded(id))

    def _restart_failed(self, id: str, reason: str) -> list[Effect]:
        """OTP's try_again: mark it restarting and retry through the inbox, so a stop request
        is served between attempts. Each retry counts toward intensity."""
        return [Report("start_failed", id, reason), Post(self.children.set_restarting(id))]

    # --- stops ------------------------------------------------------------------------------

    def _terminate(self, reason: ExitReason) -> list[Effect]:
        """Stop every running child (last started first) and exit with ``reason``."""
        self.phase = "terminated"
        self._chain = None
        return self._stops(self.children.running_in_reverse()) + [Exit(reason)]

    def _stops(self, ids: tuple[str, ...]) -> list[Effect]:
        """``Stop`` the running children ``ids`` (none: no effect), marking them stopped first."""
        return [Stop(self.children.set_stopped(ids), parallel=self.parallel_stop)] if ids else []

    # --- administration ---------------------------------------------------------------------

    def _start_refusal(self, spec: AnySpec) -> Outcome | None:
        """Why ``start_child(spec)`` is refused before anything starts, or None."""
        if (problem := significance_problem(spec, self.spec)) is not None:
            return Outcome("invalid", detail=problem)
        return self.children.start_refusal(spec)

    # --- what a subclass decides --------------------------------------------------------------

    def _boot(self) -> list[Effect]:
        raise NotImplementedError

    def _launched(self, id: str, incarnation: int, pid: int | None) -> list[Effect]:
        raise NotImplementedError

    def _launch_failed(self, id: str, reason: str) -> list[Effect]:
        raise NotImplementedError

    def _command(self, request: ChildRequest, reply_to: object) -> list[Effect]:
        raise NotImplementedError

    def _restart_group(self, id: str) -> list[Effect]:
        raise NotImplementedError

    def _not_restarted(self, child: Child) -> list[Effect]:
        raise NotImplementedError


def no_child(id: str) -> Outcome:
    return Outcome("not_found", detail=f"no child {id!r}")


def refused(event: Event) -> list[Effect]:
    """What a terminated supervisor answers: a command gets ``not_found``; the rest is ignored."""
    if isinstance(event, Command) and event.reply_to is not None:
        return [Answer(event.reply_to, Outcome("not_found", detail="the supervisor is not running"))]
    return []
