"""A fake shell for the supervision machines: no processes, no clock, no sleeps.

It carries out effects the way the real shell does: in order, with the outcome of a
``Spawn`` fed back at once (before anything waiting in the inbox), ``Post`` appended to the
inbox, ``Stop`` children considered dead at once (their refs forgotten: a later exit of
theirs is stale). What happened is kept as readable strings in ``log``::

    "start a"            a child was started (it got a new ref and pid)
    "start b failed"     its start failed
    "stop c"             a Stop effect stopped c (one line per child, in the order given)
    "post retry b"       a Retry was put on the inbox
    "exit shutdown"      the supervisor exited, with its reason kind

>>> from otpy.supervision.machine import StaticMachine
>>> from otpy.specs.model import ChildSpec, SupervisorSpec
>>> d = Driver(StaticMachine(SupervisorSpec(id="s", children=(ChildSpec(id="a", command=("x",)),))))
>>> d.init()
['start a']
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import replace
from typing import Callable

from otpy.supervision.effects import (
    ChildExited, Effect, Event, Exit, Init, Post, Reply, Report, Result, Retry, Spawn,
    SpawnFailed, SpawnOk, Stop, StopSupervisor,
)
from otpy.supervision.exit import ExitReason

CRASHED = ExitReason(kind="crashed", code=1)


class Driver:
    def __init__(
        self,
        machine,
        *,
        fail: dict[str, int] | None = None,
        fail_always: set[str] | frozenset[str] = frozenset(),
        on_spawn: Callable[[object], str | None] | None = None,
    ) -> None:
        self.machine = machine
        self.now = 0.0
        self.inbox: deque[Event] = deque()
        self.log: list[str] = []
        self.fail = dict(fail or {})  # id -> how many of its next starts fail
        self.fail_always = set(fail_always)
        self.on_spawn = on_spawn  # optional hook: returns a failure reason to fail the start
        self.refs: dict[str, int] = {}  # id -> ref of its current incarnation
        self.pids: dict[str, int] = {}
        self.effects: list[Effect] = []  # every effect carried out, in order
        self.exit: Exit | None = None
        self._counter = itertools.count(1)

    # --- driving ----------------------------------------------------------------------

    def send(self, event: Event) -> list[str]:
        """Handle one event (and the spawn outcomes it leads to). Returns the new log lines."""
        start = len(self.log)
        pending = [event]
        while pending:
            for effect in self.machine.handle(pending.pop(), self.now):
                self.effects.append(effect)
                follow_up = self._carry_out(effect)
                if follow_up is not None:
                    pending.append(follow_up)
        return self.log[start:]

    def run_inbox(self) -> list[str]:
        """Process posted events (retries) until the inbox is empty."""
        start = len(self.log)
        while self.inbox:
            self.send(self.inbox.popleft())
        return self.log[start:]

    def init(self) -> list[str]:
        return self.send(Init())

    def crash(self, id: str, reason: ExitReason = CRASHED) -> list[str]:
        """The current incarnation of ``id`` exits by itself with ``reason``."""
        return self.send(ChildExited(id, self.refs[id], reason))

    def call(self, event: Event) -> Result:
        """An administrative call: give it a fresh reply slot and return the answer."""
        slot = object()
        self.send(replace(event, ref=slot))
        [result] = [e.result for e in self.effects if isinstance(e, Reply) and e.ref is slot]
        return result

    def stop(self) -> list[str]:
        return self.send(StopSupervisor())

    def advance(self, seconds: float) -> None:
        self.now += seconds

    # --- looking ------------------------------------------------------------------------

    def state(self, id: str) -> str | None:
        child = self.machine.children.get(id)
        return None if child is None else child.state

    def reports(self, kind: str) -> list[Report]:
        return [e for e in self.effects if isinstance(e, Report) and e.kind == kind]

    def take_log(self) -> list[str]:
        lines, self.log = self.log, []
        return lines

    # --- the effects ----------------------------------------------------------------------

    def _carry_out(self, effect: Effect) -> Event | None:
        match effect:
            case Spawn(spec):
                return self._spawn(spec)
            case Stop(ids):
                for id in ids:
                    self.log.append(f"stop {id}")
                    self.refs.pop(id, None)
                    self.pids.pop(id, None)
            case Post(event):
                self.inbox.append(event)
                if isinstance(event, Retry):
                    self.log.append(f"post retry {event.id}")
            case Exit(reason):
                self.exit = effect
                self.log.append(f"exit {reason.kind}")
        return None

    def _spawn(self, spec) -> Event:
        reason = self._failure(spec)
        if reason is not None:
            self.log.append(f"start {spec.id} failed")
            return SpawnFailed(spec.id, reason)
        ref = next(self._counter)
        self.refs[spec.id], self.pids[spec.id] = ref, 1000 + ref
        self.log.append(f"start {spec.id}")
        return SpawnOk(spec.id, ref, 1000 + ref)

    def _failure(self, spec) -> str | None:
        if spec.id in self.fail_always:
            return "boom"
        if self.fail.get(spec.id, 0) > 0:
            self.fail[spec.id] -= 1
            return "boom"
        if self.on_spawn is not None:
            return self.on_spawn(spec)
        return None
