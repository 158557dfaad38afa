"""The static supervisor as a pure state machine: OTP's ``supervisor`` without the processes.

``StaticMachine.handle(event, now)`` returns the effects to carry out (``effects``); it never
spawns, kills, sleeps or reads a clock. Children are an ordered table (``children.ChildTable``,
OTP's ``{Ids, Db}``): started in order, stopped in reverse order, ``rest_for_one`` splits the
table at the dead child. What it shares with the dynamic machine (exits, the charge of a
restart, retries, shutdown) is in ``base.BaseMachine``; here: chains of starts in order, the
strategies, ``auto_shutdown`` and the administrative calls of a static supervisor.
"""

from __future__ import annotations

from collections import deque

from .base import BaseMachine, Starting, no_child
from .children import Child
from .effects import Answer, ChildRequest, Effect, Exit, Launch, Report, Outcome, Stop
from .exit import SHUTDOWN, ExitReason
from ..specs.model import AnySpec, SupervisorSpec
from ..wire import protocol as wire


class StaticMachine(BaseMachine):
    """Decisions of a ``one_for_one`` / ``one_for_all`` / ``rest_for_one`` supervisor."""

    spec: SupervisorSpec

    def __init__(self, spec: SupervisorSpec) -> None:
        super().__init__(spec, spec.children)

    def _boot(self) -> list[Effect]:
        self.phase = "starting"
        return self._begin("init", self.order)

    def _command(self, request: ChildRequest, reply_to: object) -> list[Effect]:
        match request:
            case wire.StartChild(spec=spec):
                return self._start_child(spec, reply_to)
            case wire.TerminateChild(id=id):
                return self._terminate_child(id, reply_to)
            case wire.RestartChild(id=id):
                return self._restart_child(id, reply_to)
            case wire.DeleteChild(id=id):
                return self._delete_child(id, reply_to)
            case wire.Reconfigure():
                return [Answer(reply_to, Outcome("not_supported", detail="reconfigure children of a dynamic supervisor"))]
            case wire.StartFromTemplate():
                return [Answer(reply_to, Outcome("not_supported", detail="templates belong to dynamic supervisors"))]
        raise TypeError(f"unknown request {request!r}")

    # --- chains of starts -----------------------------------------------------------------

    def _begin(self, purpose, ids, reply_to=None, before: list[Effect] | None = None) -> list[Effect]:
        self._chain = Starting(purpose, deque(ids), reply_to)
        return (before or []) + self._next_start()

    def _next_start(self) -> list[Effect]:
        chain = self._chain
        assert chain is not None
        if chain.pending:
            return [Launch(self.children[chain.pending[0]].spec)]
        self._chain = None
        if chain.purpose == "init":
            self.phase = "running"
        return []

    def _launched(self, id: str, incarnation: int, pid: int | None) -> list[Effect]:
        chain = self._chain
        assert chain is not None and chain.pending and chain.pending[0] == id, (chain, id)
        chain.pending.popleft()
        self.children.set_running(id, incarnation, pid)
        effects: list[Effect] = []
        if chain.purpose in ("start_child", "restart_child"):
            effects.append(Answer(chain.reply_to, Outcome("ok", pid=pid)))
        return effects + self._next_start()

    def _launch_failed(self, id: str, reason: str) -> list[Effect]:
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
                return self._restart_failed(id, reason)
            case "start_child":
                self.children.delete(id)  # the spec of a child that failed to start is discarded
                return [Answer(chain.reply_to, Outcome("start_failed", detail=reason))]
            case "restart_child":
                return [Answer(chain.reply_to, Outcome("start_failed", detail=reason))]
        raise AssertionError(chain.purpose)

    # --- what the base machine asks ---------------------------------------------------------

    def _not_restarted(self, child: Child) -> list[Effect]:
        if child.spec.restart == "temporary":
            self.children.delete(child.id)
        if child.spec.significant and self._auto_shutdown_due():
            return [Report("auto_shutdown", child.id)] + self._terminate(SHUTDOWN)
        return []

    def _auto_shutdown_due(self) -> bool:
        match self.spec.auto_shutdown:
            case "any_significant":
                return True
            case "all_significant":
                return not self.children.significant_left()
        return False

    def _restart_group(self, id: str) -> list[Effect]:
        strategy = self.spec.strategy
        if strategy == "one_for_one":
            return self._begin("restart", [id])
        # one_for_all: every other child; rest_for_one: the children after the dead one.
        affected = self.order if strategy == "one_for_all" else self.children.split(id)
        stopping = self.children.set_stopped(self.running_in_reverse(affected))
        for bystander in stopping:
            if self.children[bystander].spec.restart == "temporary":
                self.children.delete(bystander)  # temporary bystanders are not restarted
        to_start = [i for i in affected if i in self.children]
        return self._begin("restart", to_start, before=[Stop(stopping)] if stopping else [])

    # --- administration: never counted, never bounces siblings, never auto-shuts down -------

    def _start_child(self, spec: AnySpec, reply_to) -> list[Effect]:
        if (refusal := self._start_refusal(spec)) is not None:
            return [Answer(reply_to, refusal)]
        self.children.save(spec)
        return self._begin("start_child", [spec.id], reply_to=reply_to)

    def _terminate_child(self, id: str, reply_to) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Answer(reply_to, no_child(id))]
        effects = self._stops((id,)) if child.state == "running" else []
        self.children.set_stopped((id,))  # also ends a restarting child's retries
        if child.spec.restart == "temporary":
            self.children.delete(id)
        return effects + [Answer(reply_to, Outcome("ok"))]

    def _restart_child(self, id: str, reply_to) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Answer(reply_to, no_child(id))]
        if child.state != "stopped":
            return [Answer(reply_to, Outcome(child.state, pid=child.pid))]
        return self._begin("restart_child", [id], reply_to=reply_to)

    def _delete_child(self, id: str, reply_to) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Answer(reply_to, no_child(id))]
        if child.state != "stopped":
            return [Answer(reply_to, Outcome(child.state, pid=child.pid))]
        self.children.delete(id)
        return [Answer(reply_to, Outcome("ok"))]
