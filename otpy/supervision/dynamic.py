"""The dynamic supervisor as a pure state machine: Elixir's ``DynamicSupervisor``.

It starts with no children; ``start_child`` adds one at run time, from a full spec or a
named template plus args. All children are ``one_for_one``. Unlike a static supervisor:

- a child that ends and is not restarted is removed (its id can be used again);
- ``terminate_child`` removes the child too (a second call gives ``not_found``);
- ``restart_child`` and ``delete_child`` are ``not_supported``;
- ``max_children`` counts children that are restarting;
- children are stopped in parallel, each within its own ``shutdown``;
- ``reconfigure`` replaces a running child make-before-break: its replacement is launched
  beside it, then becomes the child, and the incarnation it replaced is stopped.

Exits, the charge of a restart (a ``lost`` exit is not charged), retries and shutdown are
the static machine's too: ``base.BaseMachine``.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from .base import BaseMachine, Starting, no_child
from .children import Child
from .effects import Answer, ChildRequest, Effect, Launch, Replace, Report, Outcome
from ..specs.model import AnySpec, DynamicSupervisorSpec, from_template
from ..specs.rules import reconfigure_problems
from ..wire import protocol as wire


class _Replacement(NamedTuple):
    """The replacement being launched for a ``Reconfigure``, and where its answer goes."""

    id: str
    spec: AnySpec
    reply_to: object


class DynamicMachine(BaseMachine):
    spec: DynamicSupervisorSpec
    parallel_stop = True

    def __init__(self, spec: DynamicSupervisorSpec) -> None:
        super().__init__(spec)
        self._replacement: _Replacement | None = None

    def _boot(self) -> list[Effect]:
        self.phase = "running"  # it starts with no children
        return []

    def _command(self, request: ChildRequest, reply_to: object) -> list[Effect]:
        match request:
            case wire.StartChild(spec=spec):
                return self._start_child(spec, reply_to)
            case wire.StartFromTemplate(template=template, id=id, args=args):
                base = self.spec.templates.get(template)
                if base is None:
                    known = ", ".join(sorted(self.spec.templates)) or "none"
                    return [Answer(reply_to, Outcome("not_found", detail=f"no template {template!r} (templates: {known})"))]
                return self._start_child(from_template(base, id, args), reply_to)
            case wire.Reconfigure(source=id, target=target):
                return self._reconfigure(id, target, reply_to)
            case wire.TerminateChild(id=id):
                return self._terminate_child(id, reply_to)
            case wire.RestartChild() | wire.DeleteChild():
                return [Answer(reply_to, Outcome("not_supported", detail="a dynamic supervisor only starts and terminates children"))]
        raise TypeError(f"unknown request {request!r}")

    # --- starts: one at a time ---------------------------------------------------------------

    def _start_child(self, spec: AnySpec, reply_to) -> list[Effect]:
        if (refusal := self._start_refusal(spec)) is not None:
            return [Answer(reply_to, refusal)]
        if self.spec.max_children is not None and len(self.children) >= self.spec.max_children:
            return [Answer(reply_to, Outcome("max_children", detail=f"max_children is {self.spec.max_children}"))]
        self.children.save(spec)
        return self._launch("start_child", spec, reply_to)

    def _launch(self, purpose, spec: AnySpec, reply_to: object = None) -> list[Effect]:
        self._chain = Starting(purpose, deque([spec.id]), reply_to)
        return [Launch(spec)]

    def _launched(self, id: str, incarnation: int, pid: int | None) -> list[Effect]:
        if self._replacement is not None:
            return self._replaced(id, incarnation, pid)
        chain, self._chain = self._chain, None
        assert chain is not None and list(chain.pending) == [id], (chain, id)
        self.children.set_running(id, incarnation, pid)
        return [Answer(chain.reply_to, Outcome("ok", pid=pid))] if chain.purpose == "start_child" else []

    def _launch_failed(self, id: str, reason: str) -> list[Effect]:
        if self._replacement is not None:
            reply_to, self._replacement = self._replacement.reply_to, None
            return [Answer(reply_to, Outcome("start_failed", detail=reason))]  # the child runs on, untouched
        chain, self._chain = self._chain, None
        assert chain is not None and list(chain.pending) == [id], (chain, id)
        if chain.purpose == "start_child":  # nothing is kept
            self.children.delete(id)
            return [Answer(chain.reply_to, Outcome("start_failed", detail=reason))]
        return self._restart_failed(id, reason)

    # --- reconfigure: a replacement ---------------------------------------------------------------

    def _reconfigure(self, id: str, target: AnySpec, reply_to) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Answer(reply_to, no_child(id))]
        if child.state != "running":
            return [Answer(reply_to, Outcome(child.state, detail=f"child {id!r} is {child.state}, not running"))]
        if problems := reconfigure_problems(id, target, self.spec):  # the node's own rule: same id, a valid spec
            return [Answer(reply_to, Outcome("invalid", detail="; ".join(problems)))]
        self._replacement = _Replacement(id, target, reply_to)
        return [Report("reconfiguring", id), Launch(target, replacement=True)]

    def _replaced(self, id: str, incarnation: int, pid: int | None) -> list[Effect]:
        replacement, self._replacement = self._replacement, None
        # The replaced incarnation's exit is stale from here on: the replacement is the child.
        self.children.set_running(id, incarnation, pid, spec=replacement.spec)
        # The replacement serves the name from here on: answer now, then stop the one it replaced.
        return [Answer(replacement.reply_to, Outcome("ok", pid=pid)), Replace(id)]

    # --- what the base machine asks ---------------------------------------------------------

    def _not_restarted(self, child: Child) -> list[Effect]:
        self.children.delete(child.id)
        return []

    def _restart_group(self, id: str) -> list[Effect]:
        return self._launch("restart", self.children[id].spec)

    # --- administration ---------------------------------------------------------------------

    def _terminate_child(self, id: str, reply_to) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Answer(reply_to, no_child(id))]
        effects = self._stops((id,)) if child.state == "running" else []
        self.children.delete(id)
        return effects + [Answer(reply_to, Outcome("ok"))]
