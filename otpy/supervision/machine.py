"""The static supervisor as a pure state machine: OTP's ``supervisor`` without the processes.

``StaticMachine.handle(event, now)`` returns the effects to carry out (``effects``); it never
spawns, kills, sleeps or reads a clock. Children are an ordered table (``children.ChildTable``,
OTP's ``{Ids, Db}``): started in order, stopped in reverse order, ``rest_for_one`` splits the
table at the dead child. What it shares with the dynamic machine (exits, the charge of a
restart, retries, shutdown) is in ``base.BaseMachine``; here: chains of starts in order, the
strategies, ``auto_shutdown`` and the administrative calls of a static supervisor.

``terminate_child`` is an operator's override: the child is kept stopped (``Child.override``)
and a reconcile never starts it; ``restart_child`` (or a group restart) starts it again. A
``start_child`` of a spec whose ``enabled`` resolves false keeps it, stopped and disabled, and
answers ``ok`` with no pid (OTP's ``{ok, undefined}``). ``Reconfigure`` replaces a running
child make-before-break (``base``): it never bounces a sibling and is never charged.
``Adopt`` (a reload, ``spec_diff``) takes new settings and declared specs in place, between
two events, as OTP's ``code_change``: nothing starts or stops.
"""

from __future__ import annotations

from .base import BaseMachine, Resolver, no_child, unresolved
from .children import Child
from .effects import Answer, ChildRequest, Effect, Report, Outcome, Stop
from .spec_diff import Adopt, adopt
from .exit import SHUTDOWN
from ..specs.model import AnySpec, SupervisorSpec
from ..wire import protocol as wire


class StaticMachine(BaseMachine):
    """Decisions of a ``one_for_one`` / ``one_for_all`` / ``rest_for_one`` supervisor."""

    spec: SupervisorSpec

    def __init__(self, spec: SupervisorSpec, resolve: Resolver = unresolved) -> None:
        super().__init__(spec, spec.children, resolve)

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
            case wire.Reconfigure(source=id, target=target):
                return self._reconfigure(id, target, reply_to)
            case Adopt():  # a reload: OTP's code_change, settings and declared specs in place
                return [Answer(reply_to, adopt(self, request))]
            case wire.StartFromTemplate():
                return [Answer(reply_to, Outcome("not_supported", detail="templates belong to dynamic supervisors"))]
        raise TypeError(f"unknown request {request!r}")

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
        effects = self._stop_by_operator(id)  # a waiting child's stopped bystanders start now
        child.override = True  # the operator's word: a reconcile does not start it again
        if child.spec.restart == "temporary":
            self.children.delete(id)
        return effects + [Answer(reply_to, Outcome("ok"))]

    def _delete_child(self, id: str, reply_to) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Answer(reply_to, no_child(id))]
        if child.state != "stopped":
            return [Answer(reply_to, Outcome(child.state, pid=child.pid))]
        self.children.delete(id)
        return [Answer(reply_to, Outcome("ok"))]
