"""A fake shell for the supervision machines: no processes, no clock, no sleeps.

It carries out effects the way the real shell does: in order, with the outcome of a
``Launch`` fed back at once (before anything waiting in the inbox), ``Post`` appended to the
inbox, ``Stop`` children considered dead at once (their incarnations forgotten: a later exit
of theirs is stale). What happened is kept as readable strings in ``log``::

    "start a"            a child was started (it got a new incarnation and pid)
    "start b failed"     its start failed
    "stop c"             a Stop effect stopped c (one line per child, in the order given)
    "post retry b"       a Retry was put on the inbox
    "wait 0.4 b"         an After asked for a timer: b's delayed restart is due in 0.4 s
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
from typing import Any, Callable

from otpy.supervision.effects import (
    After, Answer, Boot, ChildExited, ChildRequest, Command, Effect, Event, Exit, Launch, LaunchFailed,
    Launched, Post, Report, Outcome, Retry, Stop, StopSupervisor,
)
from otpy.supervision.exit import ExitReason
from otpy.wire import protocol as wire

CRASHED = ExitReason(kind="crashed", code=1)


class Driver:
    def __init__(
        self,
        machine,
        *,
        fail: dict[str, int] | None = None,
        fail_always: set[str] | frozenset[str] = frozenset(),
        on_launch: Callable[[object], str | None] | None = None,
    ) -> None:
        self.machine = machine
        self.now = 0.0
        self.inbox: deque[Event] = deque()
        self.log: list[str] = []
        self.fail = dict(fail or {})  # id -> how many of its next starts fail
        self.fail_always = set(fail_always)
        self.on_launch = on_launch  # optional hook: returns a failure reason to fail the start
        self.incarnations: dict[str, int] = {}  # id -> its current incarnation
        self.pids: dict[str, int] = {}
        self.effects: list[Effect] = []  # every effect carried out, in order
        self.exit: Exit | None = None
        self.timers: list[tuple[float, Event]] = []  # (when due, event) of each After not yet fired
        self._counter = itertools.count(1)

    # --- driving ----------------------------------------------------------------------

    def send(self, event: Event) -> list[str]:
        """Handle one event (and the launch outcomes it leads to). Returns the new log lines."""
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
        return self.send(Boot())

    def crash(self, id: str, reason: ExitReason = CRASHED) -> list[str]:
        """The current incarnation of ``id`` exits by itself with ``reason``."""
        return self.send(ChildExited(id, self.incarnations[id], reason))

    def call(self, request: ChildRequest) -> Outcome:
        """An administrative call: send ``request`` with a fresh reply slot, return the answer."""
        reply_to = object()
        self.send(Command(request, reply_to))
        [result] = [e.result for e in self.effects if isinstance(e, Answer) and e.reply_to is reply_to]
        return result

    def stop(self) -> list[str]:
        return self.send(StopSupervisor())

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def elapse(self, seconds: float) -> list[str]:
        """Let ``seconds`` pass: the timers due meanwhile fire in order (each event handled, with
        the clock at its due time, then the inbox it fed). Returns the new log lines."""
        start, end = len(self.log), self.now + seconds
        while (due := [t for t in self.timers if t[0] <= end]):
            timer = min(due, key=lambda t: t[0])
            self.timers.remove(timer)
            self.now = max(self.now, timer[0])
            self.send(timer[1])
            self.run_inbox()
        self.now = end
        return self.log[start:]

    def next_timer(self) -> float | None:
        """Seconds until the next timer fires (None: none pending)."""
        due = min((t[0] for t in self.timers), default=None)
        return None if due is None else due - self.now

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
            case Launch(spec):
                return self._launch(spec)
            case Stop(ids):
                for id in ids:
                    self.log.append(f"stop {id}")
                    self.incarnations.pop(id, None)
                    self.pids.pop(id, None)
            case Post(event):
                self.inbox.append(event)
                if isinstance(event, Retry):
                    self.log.append(f"post retry {event.id}")
            case After(delay, event):
                self.timers.append((self.now + delay, event))
                self.log.append(f"wait {delay:g} {event.id}")
            case Exit(reason):
                self.exit = effect
                self.log.append(f"exit {reason.kind}")
        return None

    def _launch(self, spec) -> Event:
        reason = self._failure(spec)
        if reason is not None:
            self.log.append(f"start {spec.id} failed")
            return LaunchFailed(spec.id, reason)
        incarnation = next(self._counter)
        self.incarnations[spec.id], self.pids[spec.id] = incarnation, 1000 + incarnation
        self.log.append(f"start {spec.id}")
        return Launched(spec.id, incarnation, 1000 + incarnation)

    def _failure(self, spec) -> str | None:
        if spec.id in self.fail_always:
            return "boom"
        if self.fail.get(spec.id, 0) > 0:
            self.fail[spec.id] -= 1
            return "boom"
        if self.on_launch is not None:
            return self.on_launch(spec)
        return None


# --- the requests, as the wire carries them (the fields a supervisor does not read left empty) ---


def start_child(spec) -> wire.StartChild:
    return wire.StartChild(request_id=0, supervisor="", spec=spec)


def start_from_template(template: str, id: str, args: dict[str, Any] | None = None) -> wire.StartFromTemplate:
    return wire.StartFromTemplate(request_id=0, supervisor="", template=template, id=id, args=args or {})


def terminate_child(id: str) -> wire.TerminateChild:
    return wire.TerminateChild(request_id=0, id=id)


def restart_child(id: str) -> wire.RestartChild:
    return wire.RestartChild(request_id=0, id=id)


def delete_child(id: str) -> wire.DeleteChild:
    return wire.DeleteChild(request_id=0, id=id)


def reconfigure(id: str, target) -> wire.Reconfigure:
    return wire.Reconfigure(request_id=0, supervisor="", source=id, target=target)
