"""The dynamic supervisor as a pure state machine: Elixir's ``DynamicSupervisor``.

It starts with no children; ``start_child`` adds one at run time, from a full spec or a
named template plus args. All children are ``one_for_one``. Unlike a static supervisor:

- a child that ends and is not restarted is removed (its id can be used again);
- ``terminate_child`` removes the child too (a second call gives ``not_found``);
- ``restart_child`` and ``delete_child`` are ``not_supported``;
- ``max_children`` counts children that are restarting;
- children are stopped in parallel, each within its own ``shutdown``.

As in the static machine, a ``lost`` exit (the child died with otpy's zygote) is restarted
per the decision table without being charged to the restart intensity (``_machine.charge``).
"""

from __future__ import annotations

from .effects import (
    ChildExited, DeleteChild, Effect, Event, Exit, Init, Post, Reconfigure, Reply, Report,
    RestartChild, Result, Retry, Spawn, SpawnFailed, SpawnOk, StartChild, StartFromTemplate, Stop,
    StopSupervisor, Swap, TerminateChild,
)
from .exit import SHUTDOWN, ExitReason, should_restart
from .intensity import RestartWindow
from .machine import Child, StartPurpose, _refuse, charge, due, retry_later, take_exit
from ..specs.model import AnySpec, DynamicSupervisorSpec, from_template


class DynamicMachine:
    def __init__(self, spec: DynamicSupervisorSpec) -> None:
        self.spec = spec
        self.children: dict[str, Child] = {}  # insertion order, for display only
        self.window = RestartWindow(spec.max_restarts, spec.max_seconds)
        self.phase = "new"
        # The one start in flight: (id, reply slot or None for a restart).
        self._starting: tuple[str, object] | None = None
        self._replacing: tuple[str, object, AnySpec] | None = None  # a Reconfigure in flight

    @property
    def order(self) -> list[str]:
        return list(self.children)

    def handle(self, event: Event, now: float) -> list[Effect]:
        if self.phase == "terminated":
            return _refuse(event)
        match event:
            case Init():
                self.phase = "running"
                return []
            case StartChild(spec, ref):
                return self._start_child(spec, ref)
            case StartFromTemplate(template, id, args, ref):
                base = self.spec.templates.get(template)
                if base is None:
                    known = ", ".join(sorted(self.spec.templates)) or "none"
                    return [Reply(ref, Result("not_found", detail=f"no template {template!r} (templates: {known})"))]
                return self._start_child(from_template(base, id, args), ref)
            case SpawnOk(id, ref, pid) if self._replacing:
                return self._replaced(id, ref, pid)
            case SpawnFailed(id, reason) if self._replacing:
                _, reply, _ = self._replacing
                self._replacing = None  # the source keeps running, untouched
                return [Reply(reply, Result("start_failed", detail=reason))]
            case SpawnOk(id, ref, pid):
                return self._spawned(id, ref, pid)
            case SpawnFailed(id, reason):
                return self._spawn_failed(id, reason)
            case Reconfigure(id, target, ref):
                return self._reconfigure(id, target, ref)
            case ChildExited(id, ref, reason):
                return self._child_exited(id, ref, reason, now)
            case Retry(id, token):
                if not due(self.children.get(id), token):
                    return []
                return self._restart(id, now)
            case TerminateChild(id, ref):
                return self._terminate_child(id, ref)
            case RestartChild(ref=ref) | DeleteChild(ref=ref):
                return [Reply(ref, Result("not_supported", detail="a dynamic supervisor only starts and terminates children"))]
            case StopSupervisor():
                return self._terminate(SHUTDOWN)
        raise TypeError(f"unknown event {event!r}")

    def running_in_reverse(self, ids=None) -> tuple[str, ...]:
        return tuple(i for i in reversed(self.children) if self.children[i].state == "running")

    def starting_for(self, id: str) -> StartPurpose | None:
        """Why ``id`` is being started now (see ``StaticMachine.starting_for``)."""
        if self._starting is None or self._starting[0] != id:
            return None
        return "restart" if self._starting[1] is None else "start"

    # ------------------------------------------------------------------------------------

    def _start_child(self, spec: AnySpec, ref) -> list[Effect]:
        if spec.significant:
            return [Reply(ref, Result("invalid", detail="a dynamic supervisor's children cannot be significant"))]
        existing = self.children.get(spec.id)
        if existing is not None:
            if existing.state == "running":
                return [Reply(ref, Result("already_started", pid=existing.pid))]
            return [Reply(ref, Result("already_present"))]
        if self.spec.max_children is not None and len(self.children) >= self.spec.max_children:
            return [Reply(ref, Result("max_children", detail=f"max_children is {self.spec.max_children}"))]
        self.children[spec.id] = Child(spec)
        self._starting = (spec.id, ref)
        return [Spawn(spec)]

    def _spawned(self, id: str, ref: int, pid: int | None) -> list[Effect]:
        assert self._starting is not None and self._starting[0] == id
        reply = self._starting[1]
        self._starting = None
        child = self.children[id]
        child.state, child.ref, child.pid = "running", ref, pid
        return [Reply(reply, Result("ok", pid=pid))] if reply is not None else []

    def _spawn_failed(self, id: str, reason: str) -> list[Effect]:
        assert self._starting is not None and self._starting[0] == id
        reply = self._starting[1]
        self._starting = None
        if reply is not None:  # start_child: nothing is kept
            del self.children[id]
            return [Reply(reply, Result("start_failed", detail=reason))]
        return [Report("start_failed", id, reason), Post(retry_later(self.children[id]))]

    def _reconfigure(self, id: str, target: AnySpec, ref) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Reply(ref, Result("not_found", detail=f"no child {id!r}"))]
        if child.state != "running":
            return [Reply(ref, Result(child.state, detail=f"child {id!r} is {child.state}, not running"))]
        if target.id != id or target.significant:
            return [Reply(ref, Result("invalid", detail=f"the target must have id {id!r} and not be significant"))]
        self._replacing = (id, ref, target)
        return [Report("reconfiguring", id), Spawn(target, replacing=True)]

    def _replaced(self, id: str, ref: int, pid: int | None) -> list[Effect]:
        _, reply, target = self._replacing
        self._replacing = None
        child = self.children[id]
        child.spec, child.ref, child.pid = target, ref, pid  # the old incarnation's exit is now stale
        # The target serves the name from here on: answer now, then stop the source.
        return [Reply(reply, Result("ok", pid=pid)), Swap(id)]

    def _child_exited(self, id: str, ref: int, reason: ExitReason, now: float) -> list[Effect]:
        child = take_exit(self.children, self.phase, id, ref)
        if child is None:
            return []
        effects: list[Effect] = [Report("exited", id, str(reason))]
        if should_restart(child.spec.restart, reason):
            return effects + self._restart(id, now, reason)
        del self.children[id]
        return effects

    def _restart(self, id: str, now: float, reason: ExitReason | None = None) -> list[Effect]:
        """Restart ``id`` (one_for_one); ``reason`` is its exit (None for a Retry)."""
        if (gave_up := charge(self.window, id, now, reason)) is not None:
            return [gave_up] + self._terminate(SHUTDOWN)
        self.children[id].restarts += 1
        self._starting = (id, None)
        return [Report("restarting", id), Spawn(self.children[id].spec)]

    def _terminate_child(self, id: str, ref) -> list[Effect]:
        child = self.children.pop(id, None)
        if child is None:
            return [Reply(ref, Result("not_found", detail=f"no child {id!r}"))]
        effects: list[Effect] = [Stop((id,))] if child.state == "running" else []
        return effects + [Reply(ref, Result("ok"))]

    def _terminate(self, reason: ExitReason) -> list[Effect]:
        self.phase = "terminated"
        running = self.running_in_reverse()
        for i in running:
            self.children[i].state = "stopped"
        effects: list[Effect] = [Stop(running, parallel=True)] if running else []
        return effects + [Exit(reason)]
