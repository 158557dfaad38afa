"""The supervisor shell: runs a state machine on the node's event loop and carries out its effects.

One ``Supervisor`` per supervisor in the tree, static or dynamic. It owns an inbox (an
``asyncio.Queue``) and handles one event at a time, like OTP's gen_server loop: while it
starts or stops a child it is busy, and whatever arrives meanwhile waits in the inbox.
Decisions are the machine's (``supervision.machine``, ``supervision.dynamic``); processes are
the process manager's (``processes.manager``); this module only connects the two.

Supervisors run inside the node process, workers in their own OS processes. A child
supervisor is a ``Supervisor`` object whose ``exited`` future plays the role of an OS exit.

Variables: every supervisor of a node shares the node's ``BoundValues``; its machine resolves a
child's declared spec with it each time it starts it. When the node changes the values it
asks each supervisor to ``reconcile("make")``, commits, then ``reconcile("break")`` (``plan()``
says what both would do); the node walks the tree (``supervisors()``). The shell
remembers the registry versions a child was launched with, which ``children_info`` shows.

Delayed restarts (``restart_delay``): the machine asks for a timer (``After``); the shell sets
it with ``loop.call_later`` and, when it fires, puts its event on the inbox, behind whatever is
waiting (as OTP's supervisor re-queues a failed restart on its own inbox): nothing polls, and
the supervisor serves its calls meanwhile. Timers still pending when it exits are cancelled,
so nothing starts after a stop. ``restart_in`` (``children_info``, ``snapshot``) counts down.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from typing import Callable, Protocol

from ..supervision.children import Child
from ..supervision.dynamic import DynamicMachine
from ..supervision.effects import (
    After, Answer, Boot, ChildExited, ChildRequest, Command, Effect, Event, Exit, Launch, LaunchFailed,
    Launched, Post, Reconcile, ReconcilePhase, Replace, Report, Outcome, Stop, StopSupervisor,
)
from ..supervision.exit import ExitReason, should_restart
from ..supervision.machine import StaticMachine
from ..supervision.reconcile import bound_info, shown_program
from ..supervision.spec_diff import Adopt
from ..processes.manager import ChildProcess, ProcessManager, StartFailed
from ..wire.protocol import Change, ChildInfo, EventKind, NodeEvent, TreeEntry
from ..specs.bindings import BoundValues
from ..specs.model import AnySpec, ChildSpec, DynamicSupervisorSpec, Shutdown, SupervisorSpec

log = logging.getLogger("otpy")

KILLED = ExitReason(kind="killed", detail="supervisor killed after its shutdown timeout")
# Every supervision event, as the one type the events socket publishes; the node logs it too.
Reporter = Callable[[NodeEvent], None]


class Handle(Protocol):
    """What a supervisor needs of a running child: a worker process or a child supervisor."""

    spec: AnySpec
    pid: int | None
    exited: asyncio.Future

    async def stop(self, shutdown: Shutdown) -> ExitReason: ...


class Supervisor:
    """A running supervisor. Create it, ``await start()``, then talk to it with ``call``."""

    def __init__(
        self,
        spec: SupervisorSpec | DynamicSupervisorSpec,
        *,
        processes: ProcessManager,
        report: Reporter,
        node: str = "",
        clock: Callable[[], float] = time.monotonic,
        child_env: dict[str, str] | None = None,
        values: BoundValues | None = None,
    ) -> None:
        self.spec = spec
        self.node = node  # the node's name, in every event
        # The node's values of bound variables, shared by every supervisor below it.
        self.values = values if values is not None else BoundValues()
        machine = DynamicMachine if isinstance(spec, DynamicSupervisorSpec) else StaticMachine
        self.machine = machine(spec, resolve=self.values.resolve)
        self.pid = os.getpid()
        self.started_at: float | None = None
        self._processes = processes
        self._report = report
        self._clock = clock
        # Children learn their supervisors, nearest first: scopes of variables follow them.
        above = (child_env or {}).get("OTPY_SUPERVISORS")
        self._child_env = {**(child_env or {}), "OTPY_SUPERVISORS": f"{spec.id},{above}" if above else spec.id}
        self._handles: dict[str, Handle] = {}
        self._versions: dict[str, dict[str, int]] = {}  # id -> the registry versions at its launch
        self._incarnations = itertools.count(1)  # numbers each start of a child: its exit names it
        # A Reconfigure's replacement: launched, not yet the child (``Replace`` makes it so) ...
        self._replacements: dict[str, Handle] = {}
        # ... and the incarnations it replaced, being stopped beside the inbox.
        self._replaced: dict[asyncio.Task, tuple[str, Handle]] = {}
        self._inbox: asyncio.Queue[Event] = asyncio.Queue()
        self._timers: set[asyncio.TimerHandle] = set()  # the machine's After, not yet fired
        self._standby_ids: set[str] = set()  # children started with hot standbys (``processes.standby``)
        self._task: asyncio.Task | None = None
        self.exited: asyncio.Future[ExitReason] = asyncio.get_running_loop().create_future()
        self.error: str | None = None  # why init failed, or the last give-up

    def __repr__(self) -> str:
        state = "running" if not self.exited.done() else f"exited: {self.exited.result()}"
        return f"<Supervisor {self.spec.id} {self.spec.kind} {state}>"

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the children in order (OTP's ``start_link``). Raises StartFailed on failure."""
        await self._drive(Boot())
        if self.exited.done():
            raise StartFailed(self.error or f"supervisor {self.spec.id!r} failed to start")
        self.started_at = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._serve(), name=f"otpy:{self.spec.id}")

    async def stop(self, shutdown: Shutdown = "infinity") -> ExitReason:
        """Ask for an ordered shutdown; after ``shutdown`` seconds, kill the subtree instead."""
        if self.exited.done():
            return self.exited.result()
        if shutdown == "brutal_kill":
            return await self.kill()
        self._inbox.put_nowait(StopSupervisor())
        if shutdown == "infinity":
            return await asyncio.shield(self.exited)
        try:
            return await asyncio.wait_for(asyncio.shield(self.exited), shutdown)
        except TimeoutError:
            return await self.kill()

    async def kill(self, reason: ExitReason = KILLED) -> ExitReason:
        """Stop serving and SIGKILL every process below, at once (``brutal_kill`` of a supervisor)."""
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        handles = [*self._handles.values(), *(h for _, h in self._replaced.values()),
                   *self._replacements.values()]
        self._handles = {}
        await asyncio.gather(*(h.stop("brutal_kill") for h in handles), return_exceptions=True)
        self._finish(reason)
        return reason

    def _event(self, kind: EventKind, child: str | None, pid: int | None = None, detail: str = "") -> None:
        self._report(NodeEvent(kind=kind, node=self.node, supervisor=self.spec.id, child=child, pid=pid,
                               detail=detail, time=time.time()))

    def _stop_replaced(self, id: str, old: Handle) -> None:
        """Stop the incarnation a replacement replaced, without blocking the inbox meanwhile: it
        is no longer a child (its exit is stale), but the supervisor waits for it before it exits."""

        async def stop() -> None:
            reason = await old.stop(old.spec.shutdown)
            self._event("stopped", id, old.pid, str(reason))

        task = asyncio.ensure_future(stop())
        self._replaced[task] = (id, old)
        task.add_done_callback(lambda t: self._replaced.pop(t, None))

    def _gone(self) -> Outcome:
        """The answer to a request that reaches this supervisor once it has stopped."""
        return Outcome("not_found", detail=f"supervisor {self.spec.id!r} is not running")

    async def call(self, request: ChildRequest) -> Outcome:
        """Queue ``request`` (the wire's request about a child) behind the other events and
        wait for its answer."""
        if self.exited.done():
            return self._gone()
        reply_to: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Command(request, reply_to))
        done, _ = await asyncio.wait({reply_to, self.exited}, return_when=asyncio.FIRST_COMPLETED)
        if reply_to.done():
            return reply_to.result()
        return self._gone()

    async def reconcile(self, phase: ReconcilePhase = "all") -> Outcome:
        """Make the children match the values now (``supervision.reconcile``), queued behind
        the other events like a ``call``: ``phase`` "make" does the replacements and starts,
        "break" the stops, "all" both. The answer's ``changes`` say what was done. On a failed
        start or replacement: ``start_failed`` naming the child, with what was done."""
        if self.exited.done():
            return self._gone()
        reply_to: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Reconcile(reply_to, phase))
        await asyncio.wait({reply_to, self.exited}, return_when=asyncio.FIRST_COMPLETED)
        return reply_to.result() if reply_to.done() else self._gone()

    def plan(self) -> list[Change]:
        """What ``reconcile()`` would do now, without doing it (a dry run): "make"'s steps,
        then "break"'s."""
        return self.machine.plan()

    def supervisors(self) -> "list[Supervisor]":
        """This supervisor and every running one below it, parents first, in start order."""
        found = [self]
        for id in self.machine.order:
            handle = self._handles.get(id)
            if isinstance(handle, Supervisor):
                found += handle.supervisors()
        return found

    # --- the loop ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while not self.exited.done():
                await self._drive(await self._inbox.get())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in otpy: crash this supervisor, not the node
            log.exception("supervisor %s crashed", self.spec.id)
            await self.kill(ExitReason(kind="crashed", detail=f"supervisor crashed: {exc!r}"))

    async def _drive(self, event: Event) -> None:
        effects = self.machine.handle(event, self._clock())
        while effects:
            feedback: Event | None = None
            for effect in effects:
                feedback = await self._carry_out(effect) or feedback
            effects = self.machine.handle(feedback, self._clock()) if feedback else []
        if isinstance(event, Command) and isinstance(event.request, Adopt):
            self._adopt_standbys(event.request)
        if self._standby_ids:
            self._retire_standbys()

    def _retire_standbys(self) -> None:
        """The hot standbys of a child stopped for good (terminated, deleted, removed by a
        reload, or its supervisor stopped) go; those of a child that will start again stay."""
        for id in list(self._standby_ids):
            child = self.machine.children.get(id)
            if (child is not None and not self.exited.done() and self.machine.phase != "terminated"
                    and (child.state in ("running", "restarting") or self.machine.starting_for(id) is not None
                         or id in self.machine.restart_dues())):
                continue
            self._standby_ids.discard(id)
            self._processes.standbys.retire_all(id)

    def _adopt_standbys(self, request: Adopt) -> None:
        """A reload adopted new specs in place: a running program child whose ``standby`` changed
        (``spec_diff.only_standby_changed``) keeps running; its standbys go or come to the count."""
        for id in request.children:
            child, handle = self.machine.children.get(id), self._handles.get(id)
            running = child.running if child is not None and child.state == "running" else None
            if not isinstance(running, ChildSpec) or running.program is None or not isinstance(handle, ChildProcess):
                continue
            if running.standby:
                self._standby_ids.add(id)
            if running.standby or id in self._standby_ids:
                self._processes.resize_standbys(handle, running, self._child_env)

    async def sync_standbys(self, scopes: set[str]) -> None:
        """A variable write of ``scopes`` is stored: the node's hot standbys that follow one of
        them resolve again before the write returns (``StandbyPool.sync``)."""
        await self._processes.standbys.sync(scopes)

    async def _carry_out(self, effect: Effect) -> Event | None:
        match effect:
            case Launch(spec, replacement):
                return await self._launch(spec, replacement)
            case Replace(id):
                old, self._handles[id] = self._handles[id], self._replacements.pop(id)
                self._stop_replaced(id, old)
            case Stop(ids, parallel):
                await self._stop(ids, parallel)
            case Post(event):
                self._inbox.put_nowait(event)
            case After(delay, event):
                self._after(delay, event)
            case Answer(reply_to, result):
                if isinstance(reply_to, asyncio.Future) and not reply_to.done():
                    reply_to.set_result(result)
            case Report(kind, child, detail):
                self._event(kind, child, None, detail)
                if kind == "gave_up":
                    self.error = detail
            case Exit(reason, error):
                self.error = error or self.error
                await asyncio.gather(*self._replaced)  # replaced incarnations still draining
                self._finish(reason)
        return None

    def _after(self, delay: float, event: Event) -> None:
        """Put ``event`` on the inbox in ``delay`` seconds (a stale one is the machine's to ignore)."""

        def fire() -> None:
            self._timers.discard(timer)
            if not self.exited.done():
                self._inbox.put_nowait(event)

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)

    async def _launch(self, spec: AnySpec, replacement: bool = False) -> Event:
        incarnation = next(self._incarnations)
        try:
            handle = await self._start_handle(spec)
        except StartFailed as exc:
            return LaunchFailed(spec.id, str(exc))
        (self._replacements if replacement else self._handles)[spec.id] = handle
        self._remember_versions(spec.id)
        handle.exited.add_done_callback(
            lambda fut: self._inbox.put_nowait(ChildExited(spec.id, incarnation, fut.result()))
        )
        self._event("started", spec.id, handle.pid)
        return Launched(spec.id, incarnation, handle.pid)

    def _remember_versions(self, id: str) -> None:
        """Keep the registry versions ``id`` is launched with; forget those of children that
        left the table now and then (amortised: dynamic children come and go)."""
        if self.values.versions:
            self._versions[id] = dict(self.values.versions)
        if len(self._versions) > 2 * len(self.machine.children) + 16:
            self._versions = {i: v for i, v in self._versions.items() if i in self.machine.children}

    async def _start_handle(self, spec: AnySpec) -> Handle:
        if isinstance(spec, ChildSpec):
            if spec.standby:
                self._standby_ids.add(spec.id)
            return await self._processes.spawn(spec, env=self._child_env)
        child = Supervisor(spec, processes=self._processes, report=self._report, node=self.node,
                           clock=self._clock, child_env=self._child_env, values=self.values)
        try:
            await child.start()
        except BaseException:  # cancelled meanwhile: what it started must not outlive it
            await child.kill()
            raise
        return child

    async def _stop(self, ids: tuple[str, ...], parallel: bool) -> None:
        # A handle leaves the table only once it is dead: a kill() meanwhile still finds it.
        handles = [(i, self._handles[i]) for i in ids if i in self._handles]
        # An id is stopped once no incarnation of it runs: one a replacement replaced, still
        # draining, is waited for too (terminate_child returns when the child is dead).
        draining = [task for task, (i, _) in self._replaced.items() if i in ids]
        if parallel:
            reasons = await asyncio.gather(*(h.stop(h.spec.shutdown) for _, h in handles))
            for (i, h), reason in zip(handles, reasons):
                self._forget(i, h)
                self._event("stopped", i, h.pid, str(reason))
        else:
            for i, h in handles:
                reason = await h.stop(h.spec.shutdown)
                self._forget(i, h)
                self._event("stopped", i, h.pid, str(reason))
        if draining:
            await asyncio.gather(*draining, return_exceptions=True)

    def _forget(self, id: str, handle: Handle) -> None:
        if self._handles.get(id) is handle:
            del self._handles[id]

    def _finish(self, reason: ExitReason) -> None:
        if not self.exited.done():
            self.exited.set_result(reason)
        if self._standby_ids:
            self._retire_standbys()
        for timer in self._timers:  # no delayed restart after a stop
            timer.cancel()
        self._timers.clear()
        while not self._inbox.empty():  # answer whoever is still waiting
            event = self._inbox.get_nowait()
            reply_to = event.reply_to if isinstance(event, Command) else None
            if isinstance(reply_to, asyncio.Future) and not reply_to.done():
                reply_to.set_result(self._gone())

    # --- what the tree looks like -----------------------------------------------------------

    def find(self, child_id: str) -> "Supervisor | None":
        """The supervisor (this one or one below) that has a child named ``child_id``."""
        if child_id in self.machine.children:
            return self
        for handle in self._handles.values():
            if isinstance(handle, Supervisor) and (found := handle.find(child_id)):
                return found
        return None

    def find_supervisor(self, sup_id: str) -> "Supervisor | None":
        if self.spec.id == sup_id:
            return self
        for handle in self._handles.values():
            if isinstance(handle, Supervisor) and (found := handle.find_supervisor(sup_id)):
                return found
        return None

    def children_info(self) -> list[ChildInfo]:
        """Each child as ``which_children`` shows it: id, pid, state, kind, restarts.

        The machine's table changes only when the supervisor handles an event, and it may be
        busy for seconds (a slow start, a long stop); meanwhile a child may die. The answer
        is the truth between events: a child whose process is dead is never ``running`` and
        has no pid; it is ``restarting`` if its exit will restart it (the decision table),
        else ``stopped``. A child the chain in progress is about to start is ``restarting``
        (a restart) or ``starting`` (init, ``start_child``, ``restart_child``); one the
        supervisor is stopping, still alive, is ``stopping`` with its pid.

        "Dead" is the kernel's word, not only the zygote's report, which may lag: the reports
        already sent are handled first, then each child still shown running is checked in
        ``/proc`` (``ProcessManager.kernel_view``: a zombie, a pid gone or reused is dead).
        """
        dead = self._processes.kernel_view()
        restart_in = self._restart_in()
        return [self._child_info(self.machine.children[i], dead, restart_in.get(i)) for i in self.machine.order]

    def _child_info(self, child: Child, dead: Callable[[ChildProcess], ExitReason | None],
                    restart_in: float | None = None) -> ChildInfo:
        state, pid = self._shown_state(child, dead)
        handle = self._handles.get(child.id) if pid is not None else None
        standby, standby_mib = self._processes.standbys.usage(child.id) if child.id in self._standby_ids else (0, 0.0)
        return ChildInfo(id=child.id, kind=child.spec.kind, state=state, pid=pid, restarts=child.restarts,
                         program=shown_program(child, self.values.resolve), override=child.override,
                         bound=bound_info(child, self.values, self._versions.get(child.id, {})),
                         status_line=getattr(handle, "status_line", ""), restart_in=restart_in,
                         restart=child.spec.restart, standby=standby, standby_mib=standby_mib)

    def _restart_in(self) -> dict[str, float]:
        """Seconds until a delayed restart starts each child it will (it waits, or a bystander
        of its group does); none while the supervisor is stopping. On the machine's clock."""
        if self.exited.done() or self.machine.phase == "terminated":
            return {}
        now = self._clock()
        return {id: round(max(0.0, due - now), 3) for id, due in self.machine.restart_dues().items()}

    def signal_child(self, child_id: str, number: int) -> Outcome:
        """Send signal ``number`` to the running worker ``child_id`` (its process alone), once the
        kernel says it is alive and ours (a pid that died unreported may be reused)."""
        child = self.machine.children.get(child_id)
        if child is None:
            return Outcome("not_found", detail=f"no child {child_id!r} under {self.spec.id!r}")
        if number not in {int(s) for s in signal.valid_signals()} or number == 0:
            return Outcome("invalid", detail=f"signal: got {number}; expected a signal number of this system (1-{signal.SIGRTMAX})")
        handle = self._handles.get(child_id)
        if not isinstance(handle, ChildProcess):
            if isinstance(handle, Supervisor):
                return Outcome("invalid", detail=f"{child_id!r} is a supervisor: signal its workers")
            return Outcome("not_running", detail=f"child {child_id!r} is not running")
        if handle.exited.done() or handle.pid is None or self._processes.kernel_view()(handle) is not None:
            return Outcome("not_running", detail=f"child {child_id!r} is not running")
        handle.send_signal(number)
        return Outcome("ok", pid=handle.pid)

    def _shown_state(self, child: Child, dead: Callable[[ChildProcess], ExitReason | None]) -> tuple[str, int | None]:
        handle = self._handles.get(child.id)
        alive = handle is not None and not handle.exited.done() and not self.exited.done()
        if child.state == "running":
            died = dead(handle) if alive and isinstance(handle, ChildProcess) else None
            if alive and died is None:
                return "running", child.pid
            reason = died or (_exit_of(handle) if handle is not None else None)
            return ("restarting" if self._will_restart(child, reason) else "stopped"), None
        if child.state == "stopped":
            purpose = self.machine.starting_for(child.id)
            if purpose is not None and not self.exited.done():
                return ("restarting" if purpose == "restart" else "starting"), None
            if alive:
                return "stopping", handle.pid
        return child.state, None

    def _will_restart(self, child: Child, reason: ExitReason | None) -> bool:
        """Whether the exit of ``child`` for ``reason``, dead but not yet handled, will restart it."""
        if reason is None or self.exited.done() or self.machine.phase == "terminated":
            return False  # no exit to judge, or the supervisor is stopping: no restarts
        return should_restart(child.spec.restart, reason)

    def snapshot(self, restarts: int = 0) -> TreeEntry:
        """This supervisor and everything below it, as ``otpy status`` shows it; ``restarts``
        is this supervisor's own count, which its parent knows."""
        now = time.monotonic()  # the clock of every started_at
        children = []
        for info in self.children_info():
            handle = self._handles.get(info.id) if info.state == "running" else None
            if isinstance(handle, Supervisor):
                children.append(handle.snapshot(info.restarts))
                continue
            started = getattr(handle, "started_at", None)
            children.append(TreeEntry(
                id=info.id, kind=info.kind, state=info.state, pid=info.pid, restarts=info.restarts,
                uptime=_uptime(now, started) if info.state == "running" else None,
                children=None if info.kind == "worker" else [],
                program=info.program, bound=info.bound, override=info.override,
                status_line=info.status_line, restart_in=info.restart_in, restart=info.restart,
                standby=info.standby, standby_mib=info.standby_mib))
        running = not self.exited.done()
        return TreeEntry(id=self.spec.id, kind=self.spec.kind, state="running" if running else "stopped",
                         pid=self.pid, restarts=restarts, uptime=_uptime(now, self.started_at) if running else None,
                         children=children, restart=self.spec.restart)


def _uptime(now: float, started: float | None) -> float | None:
    return None if started is None else round(now - started, 3)

def _exit_of(handle: Handle) -> ExitReason | None:
    """A dead handle's exit reason; None if it has none (no ChildExited will come for it)."""
    done = handle.exited
    if not done.done() or done.cancelled() or done.exception() is not None:
        return None
    return done.result()
