"""The static supervisor as a pure state machine: OTP's ``supervisor`` without the processes.

``StaticMachine.handle(event, now)`` returns the effects to carry out (``_effects``); it never
spawns, kills, sleeps or reads a clock. Children are an ordered table (OTP's ``{Ids, Db}``):
started in order, stopped in reverse order, ``rest_for_one`` splits the table at the dead
child. A child's state is one of three values: ``running`` (with a ref and pid), ``stopped``
(OTP's ``pid = undefined``: the spec is kept) and ``restarting`` (a failed restart waiting for
its retry on the supervisor's own inbox).

A restart is recorded in the restart window (and may make the supervisor give up) unless
the exit was ``lost``: the child died because otpy's zygote died under it, which is not
the child's fault. A lost child is still restarted per the decision table (permanent and
transient, not temporary) and the strategy still applies (``one_for_all`` and
``rest_for_one`` bounce their groups as for a crash); only the charge is skipped
(``_exit.charged``). Both machines share that rule (``charge`` below).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Literal

from .effects import (
    ChildExited, DeleteChild, Effect, Event, Exit, Init, Post, Reconfigure, Reply, Report, RestartChild,
    Result, Retry, Spawn, SpawnFailed, SpawnOk, StartChild, StartFromTemplate, Stop,
    StopSupervisor, TerminateChild,
)
from .exit import SHUTDOWN, ExitReason, charged, should_restart
from .intensity import RestartWindow
from ..specs.model import AnySpec, SupervisorSpec

ChildState = Literal["running", "stopped", "restarting"]
StartPurpose = Literal["restart", "start"]  # a restart decided by the machine, or init / a call


@dataclass(slots=True)
class Child:
    spec: AnySpec
    state: ChildState = "stopped"
    ref: int | None = None
    pid: int | None = None
    restarts: int = 0
    retry: int | None = None  # the token of the Retry now due, while restarting

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(slots=True)
class _Starting:
    """A chain of starts in progress: the ids still to start and what the chain is for."""

    purpose: Literal["init", "restart", "start_child", "restart_child"]
    pending: deque[str]
    reply: object = None


class StaticMachine:
    """Decisions of a ``one_for_one`` / ``one_for_all`` / ``rest_for_one`` supervisor."""

    def __init__(self, spec: SupervisorSpec) -> None:
        self.spec = spec
        self.order: list[str] = [child.id for child in spec.children]
        self.children: dict[str, Child] = {child.id: Child(child) for child in spec.children}
        self.window = RestartWindow(spec.max_restarts, spec.max_seconds)
        self.phase: Literal["new", "starting", "running", "stopping", "terminated"] = "new"
        self._chain: _Starting | None = None

    # --- the one entry point --------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        if self.phase == "terminated":
            return _refuse(event)
        match event:
            case Init():
                self.phase = "starting"
                return self._begin("init", self.order)
            case SpawnOk(id, ref, pid):
                return self._spawned(id, ref, pid)
            case SpawnFailed(id, reason):
                return self._spawn_failed(id, reason)
            case ChildExited(id, ref, reason):
                return self._child_exited(id, ref, reason, now)
            case Retry(id, token):
                child = self.children.get(id)
                if self.phase != "running" or not due(child, token):
                    return []
                return self._restart(id, now)
            case StopSupervisor():
                return self._terminate(SHUTDOWN)
            case StartChild(spec, ref):
                return self._start_child(spec, ref)
            case Reconfigure(ref=ref):
                return [Reply(ref, Result("not_supported", detail="reconfigure children of a dynamic supervisor"))]
            case StartFromTemplate(ref=ref):
                return [Reply(ref, Result("not_supported", detail="templates belong to dynamic supervisors"))]
            case TerminateChild(id, ref):
                return self._terminate_child(id, ref)
            case RestartChild(id, ref):
                return self._restart_child(id, ref)
            case DeleteChild(id, ref):
                return self._delete_child(id, ref)
        raise TypeError(f"unknown event {event!r}")

    # --- queries (read directly: they change nothing) --------------------------------------

    def running_in_reverse(self, ids: list[str] | None = None) -> tuple[str, ...]:
        ids = self.order if ids is None else ids
        return tuple(i for i in reversed(ids) if self.children[i].state == "running")

    def starting_for(self, id: str) -> StartPurpose | None:
        """Why ``id`` is about to be started by the chain in progress (None: it is not).

        Between the ``Spawn`` and its outcome the table says ``stopped``; a query answered
        then shows the child ``restarting`` or ``starting`` instead (``Supervisor.children_info``).
        """
        chain = self._chain
        if chain is None or id not in chain.pending:
            return None
        return "restart" if chain.purpose == "restart" else "start"

    # --- chains of starts -----------------------------------------------------------------

    def _begin(self, purpose, ids, reply=None, before: list[Effect] | None = None) -> list[Effect]:
        self._chain = _Starting(purpose, deque(ids), reply)
        return (before or []) + self._next_start()

    def _next_start(self) -> list[Effect]:
        chain = self._chain
        assert chain is not None
        if chain.pending:
            return [Spawn(self.children[chain.pending[0]].spec)]
        self._chain = None
        if chain.purpose == "init":
            self.phase = "running"
        return []

    def _spawned(self, id: str, ref: int, pid: int | None) -> list[Effect]:
        chain = self._chain
        assert chain is not None and chain.pending and chain.pending[0] == id, (chain, id)
        chain.pending.popleft()
        child = self.children[id]
        child.state, child.ref, child.pid = "running", ref, pid
        effects: list[Effect] = []
        if chain.purpose in ("start_child", "restart_child"):
            effects.append(Reply(chain.reply, Result("ok", pid=pid)))
        return effects + self._next_start()

    def _spawn_failed(self, id: str, reason: str) -> list[Effect]:
        chain = self._chain
        assert chain is not None and chain.pending and chain.pending[0] == id, (chain, id)
        self._chain = None
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
                # OTP's try_again: mark it restarting and retry through the inbox, so a stop
                # request is served between attempts. Each retry counts toward intensity.
                return [Report("start_failed", id, reason), Post(retry_later(self.children[id]))]
            case "start_child":
                self._remove(id)  # the spec of a child that failed to start is discarded
                return [Reply(chain.reply, Result("start_failed", detail=reason))]
            case "restart_child":
                return [Reply(chain.reply, Result("start_failed", detail=reason))]
        raise AssertionError(chain.purpose)

    # --- exits and restarts -----------------------------------------------------------------

    def _child_exited(self, id: str, ref: int, reason: ExitReason, now: float) -> list[Effect]:
        child = take_exit(self.children, self.phase, id, ref)
        if child is None:
            return []  # an exit during shutdown, or of an incarnation no longer current
        effects: list[Effect] = [Report("exited", id, str(reason))]
        if should_restart(child.spec.restart, reason):
            return effects + self._restart(id, now, reason)
        if child.spec.restart == "temporary":
            self._remove(id)
        if child.spec.significant and self._auto_shutdown_due():
            return effects + [Report("auto_shutdown", id)] + self._terminate(SHUTDOWN)
        return effects

    def _auto_shutdown_due(self) -> bool:
        match self.spec.auto_shutdown:
            case "any_significant":
                return True
            case "all_significant":
                # A restarting child still counts (OTP: its pid is {restarting, _}, not undefined).
                return not any(c.spec.significant and c.state != "stopped" for c in self.children.values())
        return False

    def _restart(self, id: str, now: float, reason: ExitReason | None = None) -> list[Effect]:
        """Restart ``id`` per the strategy; ``reason`` is its exit (None for a Retry)."""
        if (gave_up := charge(self.window, id, now, reason)) is not None:
            return [gave_up] + self._terminate(SHUTDOWN)
        self.children[id].restarts += 1
        strategy = self.spec.strategy
        if strategy == "one_for_one":
            return [Report("restarting", id)] + self._begin("restart", [id])
        # one_for_all: every other child; rest_for_one: the children after the dead one.
        affected = self.order if strategy == "one_for_all" else self.order[self.order.index(id):]
        stopping = self._mark_stopped(self.running_in_reverse(affected))
        for bystander in stopping:
            if self.children[bystander].spec.restart == "temporary":
                self._remove(bystander)  # temporary bystanders are not restarted
        to_start = [i for i in affected if i in self.children]
        before: list[Effect] = [Report("restarting", id)]
        if stopping:
            before.append(Stop(stopping))
        return self._begin("restart", to_start, before=before)

    def _terminate(self, reason: ExitReason) -> list[Effect]:
        self.phase = "terminated"
        self._chain = None
        return self._stops(self.running_in_reverse()) + [Exit(reason)]

    # --- administration: never counted, never bounces siblings, never auto-shuts down -------

    def _start_child(self, spec: AnySpec, ref) -> list[Effect]:
        if spec.significant and (spec.restart == "permanent" or self.spec.auto_shutdown == "never"):
            return [Reply(ref, Result("invalid", detail=(
                f"child {spec.id!r}: significant = true needs restart transient or temporary and a "
                f"supervisor with auto_shutdown other than 'never' (OTP's bad_combination)")))]
        existing = self.children.get(spec.id)
        if existing is not None:
            if existing.state == "running":
                return [Reply(ref, Result("already_started", pid=existing.pid))]
            return [Reply(ref, Result("already_present"))]
        self.order.append(spec.id)
        self.children[spec.id] = Child(spec)
        return self._begin("start_child", [spec.id], reply=ref)

    def _terminate_child(self, id: str, ref) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Reply(ref, Result("not_found", detail=f"no child {id!r}"))]
        effects: list[Effect] = []
        if child.state == "running":
            effects += self._stops((id,))
        child.state = "stopped"  # also ends a restarting child's retries
        if child.spec.restart == "temporary":
            self._remove(id)
        return effects + [Reply(ref, Result("ok"))]

    def _restart_child(self, id: str, ref) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Reply(ref, Result("not_found", detail=f"no child {id!r}"))]
        if child.state != "stopped":
            return [Reply(ref, Result(child.state, pid=child.pid))]
        return self._begin("restart_child", [id], reply=ref)

    def _delete_child(self, id: str, ref) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Reply(ref, Result("not_found", detail=f"no child {id!r}"))]
        if child.state != "stopped":
            return [Reply(ref, Result(child.state, pid=child.pid))]
        self._remove(id)
        return [Reply(ref, Result("ok"))]

    # --- the table ------------------------------------------------------------------------

    def _stops(self, ids: tuple[str, ...]) -> list[Effect]:
        """``Stop`` the running children ``ids`` (none: no effect), marking them stopped first."""
        return [Stop(self._mark_stopped(ids))] if ids else []

    def _mark_stopped(self, ids: tuple[str, ...]) -> tuple[str, ...]:
        """Mark children stopped before the shell stops them: their exits are then stale."""
        for i in ids:
            child = self.children[i]
            child.state, child.ref, child.pid = "stopped", None, None
        return ids

    def _remove(self, id: str) -> None:
        del self.children[id]
        self.order.remove(id)


_tokens = itertools.count(1)


def take_exit(children: dict[str, Child], phase: str, id: str, ref: int) -> Child | None:
    """The child whose current incarnation this exit ends, now marked stopped; None when the
    exit is to be ignored (the supervisor is not running, or the incarnation is not current)."""
    child = children.get(id)
    if phase != "running" or child is None or child.ref != ref or child.state != "running":
        return None
    child.state, child.ref, child.pid = "stopped", None, None
    return child


def charge(window: RestartWindow, id: str, now: float, reason: ExitReason | None) -> Report | None:
    """Count the restart of ``id`` toward intensity, unless its exit was not its fault (``lost``).

    A Retry (``reason`` None) always counts: it is a new attempt after a failed start.
    Returns the ``gave_up`` report when the intensity is exceeded, else None.
    """
    if reason is not None and not charged(reason):
        return None
    if window.record(now):
        return None
    return Report("gave_up", id, window.exceeded(id))


def retry_later(child: Child) -> Retry:
    """Mark ``child`` restarting and make the one Retry that may restart it."""
    child.state, child.retry = "restarting", next(_tokens)
    return Retry(child.id, child.retry)


def due(child: Child | None, token: int) -> bool:
    return child is not None and child.state == "restarting" and child.retry == token


def _refuse(event: Event) -> list[Effect]:
    ref = getattr(event, "ref", None)
    if ref is not None:
        return [Reply(ref, Result("not_found", detail="the supervisor is not running"))]
    return []
