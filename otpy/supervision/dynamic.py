"""The dynamic supervisor as a pure state machine: Elixir's ``DynamicSupervisor``.

It starts with no children but its templates' replicas; ``start_child`` adds one at run
time, from a full spec or a named template plus args. All children are ``one_for_one``.
Unlike a static supervisor:

- a child that ends and is not restarted is removed (its id can be used again);
- ``terminate_child`` removes the child too (a second call gives ``not_found``);
- ``restart_child`` and ``delete_child`` are ``not_supported``;
- ``max_children`` counts children that are restarting;
- children are stopped in parallel, each within its own ``shutdown``.

A template with ``replicas`` keeps ``TEMPLATE-1..N`` children (``specs.bindings.replica_ids``),
each saved with the template's DECLARED spec so that every start resolves it afresh. They are
started at boot, one at a time in declaration order, and one that fails to start fails the
supervisor's start, as a static supervisor's init does: a dynamic supervisor restarted by its
parent comes back with its replicas. A replica is the supervisor's, not an operator's: one
that ends stays in the table stopped, ``terminate_child`` keeps it stopped as an override (a
reconcile does not bring it back), ``restart_child`` starts it again; only a lower count
(a reconcile) removes it.

Exits, the charge of a restart (a ``lost`` exit is not charged), retries, shutdown, the
make-before-break ``reconfigure`` and the reconcile are the static machine's too:
``base.BaseMachine``.

``Adopt`` (a reload, ``spec_diff``) takes new settings and templates in place, with the
replicas' new declared specs; the reconcile that follows replaces and counts them.
"""

from __future__ import annotations

import msgspec

from .base import BaseMachine, Resolver, disabled_refusal, no_child, unresolved
from .children import Child
from .effects import Answer, ChildRequest, Effect, Exit, Outcome
from .spec_diff import Adopt, adopt
from .exit import ExitReason
from .reconcile import over_max_children
from ..specs.bindings import UnboundValue, replica_count, replica_ids, replica_of
from ..specs.model import AnySpec, ChildSpec, DynamicSupervisorSpec, from_template
from ..wire import protocol as wire


class DynamicMachine(BaseMachine):
    spec: DynamicSupervisorSpec
    parallel_stop = True

    def __init__(self, spec: DynamicSupervisorSpec, resolve: Resolver = unresolved) -> None:
        super().__init__(spec, resolve=resolve)

    def _boot(self) -> list[Effect]:
        """Start the templates' replicas, template by template, one at a time; counted first:
        more than ``max_children`` fails the start before anything starts."""
        self.phase = "starting"
        replicas: list[tuple[ChildSpec, str]] = []  # (template, replica id), in start order
        for name, template in self._templates().items():
            try:
                count = replica_count(self.resolve(template), {})
            except UnboundValue as exc:
                return self._boot_failed(name, f"cannot count its replicas: {exc}")
            if (refusal := over_max_children(name, len(replicas) + count, self.spec.max_children)) is not None:
                return self._boot_failed(name, refusal)
            replicas += [(template, id) for id in replica_ids(name, count)]
        for template, id in replicas:
            self.children.save(from_template(template, id))
        return self._begin("init", [id for _, id in replicas])

    def _boot_failed(self, template: str, reason: str) -> list[Effect]:
        self.phase = "terminated"
        return [Exit(ExitReason(kind="failed", detail=f"failed_to_start_child {template}: {reason}"),
                     error=f"cannot start the replicas of template {template!r}: {reason}")]

    def _templates(self) -> dict[str, ChildSpec]:
        return {name: t for name, t in self.spec.templates.items() if t.replicas is not None}

    def _is_replica(self, id: str) -> bool:
        return replica_of(id, self.spec.templates) is not None

    def _command(self, request: ChildRequest, reply_to: object) -> list[Effect]:
        match request:
            case wire.StartChild(spec=spec):
                return self._start_child(spec, reply_to)
            case wire.StartFromTemplate(template=template, id=id, args=args):
                base = self.spec.templates.get(template)
                if base is None:
                    known = ", ".join(sorted(self.spec.templates)) or "none"
                    return [Answer(reply_to, Outcome("not_found", detail=f"no template {template!r} (templates: {known})"))]
                # One child, not a template's replicas: it runs as checked, without ``replicas``.
                return self._start_child(msgspec.structs.replace(from_template(base, id, args), replicas=None),
                                         reply_to)
            case Adopt():  # a reload: OTP's code_change, settings and declared specs in place
                return [Answer(reply_to, adopt(self, request))]
            case wire.Reconfigure(source=id, target=target):
                return self._reconfigure(id, target, reply_to)
            case wire.TerminateChild(id=id):
                return self._terminate_child(id, reply_to)
            case wire.RestartChild(id=id) if self._is_replica(id):
                return self._restart_child(id, reply_to)
            case wire.RestartChild() | wire.DeleteChild():
                return [Answer(reply_to, Outcome("not_supported", detail="a dynamic supervisor only starts and terminates children"))]
        raise TypeError(f"unknown request {request!r}")

    # --- starts: one at a time ---------------------------------------------------------------

    def _start_child(self, spec: AnySpec, reply_to) -> list[Effect]:
        if (refusal := self._start_refusal(spec)) is not None:
            return [Answer(reply_to, refusal)]
        if (replica := replica_of(spec.id, self._templates())) is not None:
            # TEMPLATE-N ids are the template's: its reconcile would replace or remove such a child.
            return [Answer(reply_to, Outcome("invalid", detail=(
                f"id {spec.id!r} has the form of template {replica[0]!r}'s replicas ({replica[0]}-N), which "
                f"this supervisor keeps itself; choose another id (or raise the template's replicas)")))]
        if self.spec.max_children is not None and len(self.children) >= self.spec.max_children:
            return [Answer(reply_to, Outcome("max_children", detail=f"max_children is {self.spec.max_children}"))]
        child = self.children.save(spec)
        if (refusal := disabled_refusal(child, self.resolve)) is not None:
            self.children.delete(spec.id)  # a dynamic supervisor keeps no child it cannot run
            return [Answer(reply_to, refusal)]
        return self._begin("start_child", [spec.id], reply_to=reply_to)

    # --- what the base machine asks ---------------------------------------------------------

    def _not_restarted(self, child: Child) -> list[Effect]:
        if not self._is_replica(child.id):  # a replica that ended stays, stopped
            self.children.delete(child.id)
        return []

    def _restart_group(self, id: str) -> list[Effect]:
        return self._begin("restart", [id])

    # --- administration ---------------------------------------------------------------------

    def _terminate_child(self, id: str, reply_to) -> list[Effect]:
        child = self.children.get(id)
        if child is None:
            return [Answer(reply_to, no_child(id))]
        effects = self._stop_by_operator(id)  # also ends a restarting replica's retries
        if self._is_replica(id):
            child.override = True  # kept stopped: a reconcile does not bring it back
        else:
            self.children.delete(id)
        return effects + [Answer(reply_to, Outcome("ok"))]

