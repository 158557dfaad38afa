"""What both supervision machines decide the same way, written once.

``machine.StaticMachine`` and ``dynamic.DynamicMachine`` differ in what they start at boot,
in what a restart bounces (the strategy) and in their administrative calls. Everything else
is here: chains of starts (one ``Launch`` at a time, in order), an exit and the restart
decision table, the charge of a restart to the intensity, retries, the supervisor's shutdown,
the checks of ``start_child``, the replacement of a running child (``Reconfigure``), the
``Reconcile`` with the variables, and the one entry point ``handle``. A subclass supplies
``_boot``, ``_command`` (its administrative calls), ``_restart_group`` (what a restart stops
and starts), ``_not_restarted`` (what becomes of a child its exit does not restart),
``_templates`` (whose replicas it keeps) and ``parallel_stop``.

Variables: the table keeps each child's DECLARED spec; every start resolves it with
``resolve`` (the node's ``BoundValues.resolve``) at that moment and launches the result. A
spec that cannot be resolved is a failed start; a child whose resolved ``enabled`` is false is
not started at all (init, a group restart and a retry skip it) and is kept stopped and
``disabled``.

A restart is recorded in the restart window (and may make the supervisor give up) unless
the exit was ``lost``: the child died because otpy's zygote died under it, which is not
the child's fault. A lost child is still restarted per the decision table (permanent and
transient, not temporary) and the strategy still applies (``one_for_all`` and
``rest_for_one`` bounce their groups as for a crash); only the charge is skipped
(``exit.charged``).

Restart delay (``ChildSpec.restart_delay``, 0 by default: OTP's restart at once; the rule is
``backoff.next_delay``). A delayed restart is charged NOW, at the exit, as OTP charges it (over
the intensity: give up at once, never after a wait), and the strategy's stops happen now;
only its starts wait: the child is marked ``restarting`` with ``restart_at`` and the machine
asks for a timer, ``After(delay, RestartDue(id, token))``. When it comes back the group is
started as the strategy says then (as OTP's ``try_again_restart`` does). An operator's stop of
the waiting child (``terminate_child``; a reload's removal is one) ends the wait and starts its
stopped bystanders at once (``_stop_by_operator``): nothing is left to wait for.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple

import msgspec

from . import backoff, reconcile
from .children import Child, ChildTable
from .effects import (
    After, Answer, Boot, ChildExited, ChildRequest, Command, Effect, Event, Exit, Launch, LaunchFailed, Launched,
    Post, Reconcile, ReconcilePhase, Replace, Report, Outcome, RestartDue, Retry, Stop, StopSupervisor,
)
from .exit import SHUTDOWN, ExitReason, charged, should_restart
from .intensity import RestartWindow
from ..specs.bindings import UnboundValue
from ..specs.model import AnySpec, Bound, ChildSpec, DynamicSupervisorSpec, SupervisorSpec
from ..specs.rules import reconfigure_problems, significance_problem
from ..wire.protocol import Change

Phase = Literal["new", "starting", "running", "terminated"]
StartPurpose = Literal["restart", "start"]  # a restart decided by the machine, or init / a call
Resolver = Callable[[AnySpec], AnySpec]  # a declared spec -> the spec it runs now (raises UnboundValue)


def unresolved(spec: AnySpec) -> AnySpec:
    """The resolver of a supervisor with no variables: a spec runs as declared."""
    return spec


@dataclass(slots=True)
class Starting:
    """Starts in progress: the ids still to start (the first is being launched), what they are
    for, and where the answer goes (a ``start_child`` or ``restart_child`` call)."""

    purpose: Literal["init", "restart", "start_child", "restart_child", "reconcile"]
    pending: deque[str]
    reply_to: object = None


class _Replacement(NamedTuple):
    """The replacement being launched for a running child: its new declared spec, and where
    the answer goes (a ``Reconfigure``'s ``reply_to``), or ``reconciling``: a reconcile's step."""

    id: str
    spec: AnySpec
    reply_to: object
    reconciling: bool = False


@dataclass(slots=True)
class _Reconciling:
    """A reconcile in progress: the steps left (the first is under way), what is done."""

    steps: deque[reconcile.Step]
    reply_to: object
    done: list[Change] = field(default_factory=list)


class BaseMachine:
    parallel_stop = False  # how the supervisor's own shutdown stops its children

    def __init__(self, spec: SupervisorSpec | DynamicSupervisorSpec, children: tuple[AnySpec, ...] = (),
                 resolve: Resolver = unresolved) -> None:
        self.spec = spec
        self.children = ChildTable(children)
        self.window = RestartWindow(spec.max_restarts, spec.max_seconds)
        self.phase: Phase = "new"
        self.resolve = resolve
        self._chain: Starting | None = None
        self._launching: AnySpec | None = None  # the resolved spec of the Launch under way
        self._replacement: _Replacement | None = None
        self._reconciling: _Reconciling | None = None
        self._now = 0.0  # the clock of the event being handled
        self._deferring: After | None = None  # set while a delayed restart's group is decided

    # --- the one entry point --------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        """The effects of ``event`` at ``now`` (seconds of a monotonic clock, read by the caller)."""
        if self.phase == "terminated":
            return refused(event)
        self._now = now
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
            case RestartDue(id, token):
                return self._restart_due(id, token)
            case StopSupervisor():
                return self._terminate(SHUTDOWN)
            case Command(request, reply_to):
                return self._command(request, reply_to)
            case Reconcile(reply_to, phase):
                return self._reconcile(reply_to, phase)
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

    def restart_dues(self) -> dict[str, float]:
        """When (this machine's clock) a delayed restart will start each child it will: the
        child waiting for it, or a stopped bystander of its group."""
        return self.children.restart_dues()

    def restart_due(self, id: str) -> float | None:
        return self.children.restart_dues().get(id)

    def plan(self) -> list[Change]:
        """What a ``Reconcile`` now would do, without doing it (a dry run): the whole plan,
        ``make`` steps then ``break`` steps."""
        return [step.change for step in self._plan("all")]

    def _plan(self, phase: ReconcilePhase) -> list[reconcile.Step]:
        return reconcile.plan(self.children.values(), self.resolve, self.spec.id, self._templates(),
                              getattr(self.spec, "max_children", None), phase)

    # --- chains of starts: one Launch at a time, each of the spec resolved now --------------

    def _begin(self, purpose, ids, reply_to=None, before: list[Effect] | None = None) -> list[Effect]:
        if purpose == "restart" and (timer := self._deferring) is not None:
            # A delayed restart: the strategy's stops (``before``) now, its starts when due.
            self.children[timer.event.id].group = tuple(ids)
            return (before or []) + [timer]
        self._chain = Starting(purpose, deque(ids), reply_to)
        return (before or []) + self._next_start()

    def _next_start(self) -> list[Effect]:
        chain = self._chain
        assert chain is not None
        effects: list[Effect] = []
        while chain.pending:
            id = chain.pending[0]
            launch = self._launch(id)
            if isinstance(launch, Launch):
                return effects + [launch]
            if launch is not None:  # its spec cannot be resolved: a failed start
                return effects + self._launch_failed(id, launch)
            chain.pending.popleft()  # disabled: kept, stopped, never started
            if chain.purpose == "start_child":
                effects.append(Answer(chain.reply_to, Outcome("ok")))  # OTP's {ok, undefined}
            elif chain.purpose == "reconcile":  # switched off since the plan: nothing to do
                assert self._reconciling is not None
                self._reconciling.steps.popleft()
        self._chain = None
        if chain.purpose == "init":
            self.phase = "running"
        elif chain.purpose == "reconcile":
            return effects + self._reconcile_next()
        return effects

    def _launch(self, id: str, replacement: AnySpec | None = None) -> Launch | str | None:
        """The ``Launch`` of ``id`` (of its ``replacement`` spec) as resolved now; the reason
        when it cannot be resolved; None when it is disabled (marked so, not started)."""
        child = self.children[id]
        try:
            resolved = self.resolve(replacement if replacement is not None else child.spec)
        except UnboundValue as exc:
            return str(exc)
        if not reconcile.enabled(resolved):
            if replacement is None:
                child.disabled = True
            return None
        self._launching = resolved
        return Launch(resolved, replacement=replacement is not None)

    def _disabled_now(self, id: str) -> bool:
        """Whether ``id`` resolves now to a disabled spec (one that cannot be resolved is not:
        its start fails, naming the variable)."""
        resolved = reconcile.try_resolve(self.resolve, self.children[id].spec)
        return resolved is not None and not reconcile.enabled(resolved)

    def _launched(self, id: str, incarnation: int, pid: int | None) -> list[Effect]:
        running, self._launching = self._launching, None
        if self._replacement is not None:
            return self._replaced(id, incarnation, pid, running)
        chain = self._chain
        assert chain is not None and chain.pending and chain.pending[0] == id, (chain, id)
        chain.pending.popleft()
        self.children.set_running(id, incarnation, pid, running=running)
        self._started(id, restart=chain.purpose == "restart")
        effects: list[Effect] = []
        if chain.purpose in ("start_child", "restart_child"):
            effects.append(Answer(chain.reply_to, Outcome("ok", pid=pid)))
        elif chain.purpose == "reconcile":
            self._reconcile_done(pid)
        return effects + self._next_start()

    def _launch_failed(self, id: str, reason: str) -> list[Effect]:
        self._launching = None
        if self._replacement is not None:
            replacement, self._replacement = self._replacement, None  # the child runs on, untouched
            if replacement.reconciling:
                return self._reconcile_failed(id, reason)
            return [Answer(replacement.reply_to, Outcome("start_failed", detail=reason))]
        chain, self._chain = self._chain, None
        assert chain is not None and chain.pending and chain.pending[0] == id, (chain, id)
        match chain.purpose:
            case "init":
                # Tear down what started, in reverse order; later children never start.
                self.phase = "terminated"
                return [
                    Report("start_failed", id, reason),
                    *self._stops(self.running_in_reverse()),
                    Exit(ExitReason(kind="failed", detail=f"failed_to_start_child {id}: {reason}"),
                         error=f"failed to start child {id!r}: {reason}"),
                ]
            case "restart":
                return self._restart_failed(id, reason)
            case "start_child":
                self.children.delete(id)  # the spec of a child that failed to start is discarded
                return [Answer(chain.reply_to, Outcome("start_failed", detail=reason))]
            case "restart_child":
                return [Answer(chain.reply_to, Outcome("start_failed", detail=reason))]
            case "reconcile":
                return self._reconcile_failed(id, reason)
        raise AssertionError(chain.purpose)

    # --- a replacement: a running child replaced make-before-break ----------------------------

    def _reconfigure(self, id: str, target: AnySpec, reply_to) -> list[Effect]:
        """An operator's ``Reconfigure``: ``target`` (same id) becomes the child's declared spec.
        Never charged to the intensity, never bounces a sibling."""
        child = self.children.get(id)
        if child is None:
            return [Answer(reply_to, no_child(id))]
        if child.state != "running":
            return [Answer(reply_to, Outcome(child.state, detail=f"child {id!r} is {child.state}, not running"))]
        if problems := reconfigure_problems(id, target, self.spec):  # the node's own rule: same id, a valid spec
            return [Answer(reply_to, Outcome("invalid", detail="; ".join(problems)))]
        return self._replace(id, target, reply_to)

    def _replace(self, id: str, declared: AnySpec, reply_to, reconciling: bool = False) -> list[Effect]:
        """Launch ``declared`` (resolved now) beside the running ``id``; ``Replace`` follows."""
        self._replacement = _Replacement(id, declared, reply_to, reconciling)
        launch = self._launch(id, replacement=declared)
        if isinstance(launch, Launch):
            return [Report("reconfiguring", id), launch]
        if launch is None:
            reason = f"child {id!r}: its replacement has enabled false; set it true to run it"
            if not reconciling:
                self._replacement = None
                return [Answer(reply_to, Outcome("invalid", detail=reason))]
            launch = reason
        return self._launch_failed(id, launch)

    def _replaced(self, id: str, incarnation: int, pid: int | None, running: AnySpec | None) -> list[Effect]:
        replacement, self._replacement = self._replacement, None
        assert replacement is not None and replacement.id == id, (replacement, id)
        # The replaced incarnation's exit is stale from here on: the replacement is the child.
        self.children.set_running(id, incarnation, pid, running=running, spec=replacement.spec)
        self._started(id, restart=False)
        if replacement.reconciling:  # a reconcile's step: stop the old one, go on
            self._reconcile_done(pid)
            return [Replace(id)] + self._reconcile_next()
        # The replacement serves the name from here on: answer now, then stop the one it replaced.
        return [Answer(replacement.reply_to, Outcome("ok", pid=pid)), Replace(id)]

    # --- reconcile: the children made to match the variables now -------------------------------

    def _reconcile(self, reply_to, phase: ReconcilePhase) -> list[Effect]:
        if self.phase != "running":
            return [Answer(reply_to, Outcome("ok"))]
        self._reconciling = _Reconciling(deque(self._plan(phase)), reply_to)
        return self._reconcile_next()

    def _reconcile_next(self) -> list[Effect]:
        """Carry out the next step: a start or a replacement (its outcome comes back as an
        event), else every stop left at once, then the answer."""
        job = self._reconciling
        assert job is not None
        if job.steps and job.steps[0].action in ("start", "replace"):
            step = job.steps[0]
            if step.action == "replace":
                return self._replace(step.id, self.children[step.id].spec, None, reconciling=True)
            if step.refusal is not None:  # fails untried: a new replica above max_children
                return self._reconcile_failed(step.id, step.refusal)
            if step.new is not None:
                self.children.save(step.new)
            return self._begin("reconcile", [step.id])
        # The steps left are stops, in reverse start order.
        effects = self._stops(tuple(step.id for step in job.steps if self.children[step.id].state == "running"))
        for step in job.steps:
            if step.action == "remove":
                self.children.set_stopped((step.id,))  # also ends a restarting replica's retries
                self.children.delete(step.id)
            else:
                self.children[step.id].disabled = True
            job.done.append(step.change)
        self._reconciling = None
        return effects + [Answer(job.reply_to, Outcome("ok", changes=job.done))]

    def _reconcile_done(self, pid: int | None) -> None:
        job = self._reconciling
        assert job is not None
        step = job.steps.popleft()
        job.done.append(msgspec.structs.replace(step.change, pid=pid))

    def _reconcile_failed(self, id: str, reason: str) -> list[Effect]:
        """The first failed start or replacement ends the reconcile: what is done stays done
        (the node undoes it by restoring the values and reconciling again)."""
        job, self._reconciling = self._reconciling, None
        assert job is not None
        step = job.steps[0]
        if step.new is not None:
            self.children.delete(id)  # a replica that never ran is not kept (if it was saved)
        detail = f"child {id!r} (under {self.spec.id!r}): {reason}"
        return [Report("start_failed", id, reason),
                Answer(job.reply_to, Outcome("start_failed", detail=detail, changes=job.done))]

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
        if self._disabled_now(id):  # switched off meanwhile: no more attempts, none charged
            self.children.set_stopped((id,))
            self.children[id].disabled = True
            return []
        return self._restart(id, now)

    def _restart(self, id: str, now: float, reason: ExitReason | None = None) -> list[Effect]:
        """Restart ``id`` per the strategy; ``reason`` is its exit (None for a Retry). Charged
        now, even when its ``restart_delay`` makes the starts wait (``_delayed``)."""
        if (gave_up := self._charge(id, now, reason)) is not None:
            return [gave_up] + self._terminate(SHUTDOWN)
        self.children[id].restarts += 1
        delay = backoff.next_delay(self.children[id], now, reason)
        if delay > 0:
            return self._delayed(id, now, delay)
        return [Report("restarting", id)] + self._restart_group(id)

    def _delayed(self, id: str, now: float, delay: float) -> list[Effect]:
        """Wait ``delay`` seconds before the starts of the restart of ``id``: it is marked
        restarting (a ``RestartDue`` may end its wait), the strategy's stops happen now."""
        timer = After(delay, self.children.set_waiting(id, now + delay))
        self._deferring = timer
        try:
            effects = self._restart_group(id)  # its _begin("restart") returns the stops and the timer
        finally:
            self._deferring = None
        return [Report("restart_delayed", id, backoff.describe(delay, self.children[id].streak))] + effects

    def _restart_due(self, id: str, token: int) -> list[Effect]:
        """A delayed restart's time has come: start the group (its strategy's, now), uncharged
        (it was charged at the exit). A stale timer (its wait ended meanwhile) is ignored."""
        if self.phase != "running" or not self.children.is_due(id, token):
            return []
        if self._disabled_now(id):  # switched off meanwhile: not started, as a retry's
            self.children.set_stopped((id,))
            self.children[id].disabled = True
            return []
        return [Report("restarting", id)] + self._restart_group(id)

    def _started(self, id: str, restart: bool) -> None:
        """Note when ``id`` started (its backoff's reset counts from there); any start but a
        restart ends its row of restarts."""
        child = self.children[id]
        child.since = self._now
        if not restart:
            child.streak = 0

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
        self._chain = self._replacement = self._reconciling = None
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

    def _stop_by_operator(self, id: str) -> list[Effect]:
        """An operator stops ``id`` (``terminate_child``; a reload that removes it does so too):
        its stop if it runs, its wait or retries ended. A delayed restart it was waiting for
        held its stopped bystanders (one_for_all / rest_for_one): with the child out of the
        group nothing is left to wait for, so they start at once, as the restart (uncharged,
        it was charged at the exit). One rule for every way a waiting child is stopped."""
        child = self.children[id]
        held = self.children.held_by_wait(id)
        effects = self._stops((id,)) if child.state == "running" else []
        self.children.set_stopped((id,))  # also ends a restarting child's retries or wait
        if held and self.phase == "running" and self._chain is None:
            effects += [Report("restarting", held[0])] + self._begin("restart", list(held))
        return effects

    def _restart_child(self, id: str, reply_to) -> list[Effect]:
        """OTP's ``restart_child``: start a stopped child again (a dynamic supervisor: only a
        replica an operator terminated); a disabled one is refused, naming its variable."""
        child = self.children.get(id)
        if child is None:
            return [Answer(reply_to, no_child(id))]
        if child.state != "stopped":
            return [Answer(reply_to, Outcome(child.state, pid=child.pid))]
        if (refusal := disabled_refusal(child, self.resolve)) is not None:
            return [Answer(reply_to, refusal)]
        return self._begin("restart_child", [id], reply_to=reply_to)

    # --- what a subclass decides --------------------------------------------------------------

    def _boot(self) -> list[Effect]:
        raise NotImplementedError

    def _command(self, request: ChildRequest, reply_to: object) -> list[Effect]:
        raise NotImplementedError

    def _restart_group(self, id: str) -> list[Effect]:
        raise NotImplementedError

    def _not_restarted(self, child: Child) -> list[Effect]:
        raise NotImplementedError

    def _templates(self) -> dict[str, ChildSpec] | None:
        """The templates whose ``replicas`` a reconcile keeps (a dynamic supervisor's)."""
        return None


def disabled_refusal(child: Child, resolve: Resolver) -> Outcome | None:
    """Why an operator cannot start ``child``: its ``enabled`` resolves false now (the answer
    says by which variable, and what to set), or None."""
    resolved = reconcile.try_resolve(resolve, child.spec)
    if resolved is None or reconcile.enabled(resolved):
        return None
    bound = child.spec.enabled if isinstance(child.spec, ChildSpec) else None
    if isinstance(bound, Bound):
        why = f"by variable {bound.variable} (false); set {bound.variable} to true to start it"
    else:
        why = "by its spec (enabled = false); set enabled = true in its spec to start it"
    return Outcome("invalid", detail=f"child {child.id!r} is disabled {why}")


def no_child(id: str) -> Outcome:
    return Outcome("not_found", detail=f"no child {id!r}")


def refused(event: Event) -> list[Effect]:
    """What a terminated supervisor answers: a command gets ``not_found``; the rest is ignored."""
    if isinstance(event, Command) and event.reply_to is not None:
        return [Answer(event.reply_to, Outcome("not_found", detail="the supervisor is not running"))]
    return []
