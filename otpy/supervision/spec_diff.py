"""What a reload does to one running supervisor: the difference between the spec it was
started from (the old topology), the edited spec (the new one) and its table of children now.

Pure: no processes, no clock. The node's reload (``node/reload.py``) asks ``diff`` for each
supervisor of the tree, top down, and carries the answer out:

- ``adopt``: OTP's ``code_change`` of a supervisor: its own settings (``strategy``,
  ``max_restarts``, ``max_seconds``, ``auto_shutdown``; a dynamic one's ``max_children`` and
  ``templates``) become the new spec's in place, and the children in ``children`` get their
  new declared spec without a restart: a child that is not running (it starts with the new
  spec next time), a sub-supervisor of the same kind (it is updated itself, recursively: its
  parent's entry changes so that a restart by the parent starts the new subtree), a running
  worker whose new spec is disabled (the reconcile that follows stops it), and a dynamic
  supervisor's replicas (the reconcile that follows replaces them, and starts or removes
  replicas to the new counts). The machines carry it out (``Adopt``, ``adopt``).
- ``starts``: children the file adds (not in the table), in the file's order. As OTP's
  ``start_child``, a new child goes LAST in the supervisor's start order, wherever the file
  puts it; the file's order takes effect at the next start of that supervisor. A reorder
  alone restarts nothing.
- ``replaces``: running children whose spec changed: replaced make-before-break (a
  ``Reconfigure``), a command child too; a child that changes kind (worker, supervisor,
  dynamic supervisor) is replaced whole. A change of ``standby`` alone replaces nothing: the
  child is adopted (an ``update`` reported) and its hot standbys go or come to the new count.
- ``stops``: children the file removes, in reverse start order: stopped, then deleted. A
  dynamic supervisor's replicas of a template that no longer keeps replicas are stopped too.
  Children an operator added at run time are not in either file: a reload never touches them.
- ``nested``: sub-supervisors present in both of the same kind, to diff in turn.

What already matches (a child whose declared spec is the new one: a reload applied twice) is
left alone, so a reload that stopped half way can be applied again.
"""

from __future__ import annotations

import shlex
from typing import Any, Callable, Iterable, NamedTuple

import msgspec

from .children import Child
from .effects import Outcome
from ..specs.bindings import UnboundValue, is_enabled, replica_count, replica_of
from ..specs.model import AnySpec, ChildSpec, DynamicSupervisorSpec, SupervisorSpec, from_template
from ..wire.protocol import Change

AnySupervisor = SupervisorSpec | DynamicSupervisorSpec
Resolver = Callable[[AnySpec], AnySpec]

# A supervisor's own settings, per kind: what ``code_change`` updates in place.
SETTINGS = {
    "supervisor": ("strategy", "max_restarts", "max_seconds", "auto_shutdown"),
    "dynamic_supervisor": ("max_children", "max_restarts", "max_seconds", "templates"),
}


class Adopt(NamedTuple):
    """A request to a supervision machine (through its inbox, like any command): take ``spec``
    as its own spec (settings in place, the restart window's limits too) and the declared
    specs in ``children`` for those children (``running`` too for a supervisor child)."""

    spec: AnySupervisor
    children: dict[str, AnySpec]


class Diff(NamedTuple):
    update: Change | None  # the supervisor's own settings, before -> after
    adopt: dict[str, AnySpec]
    starts: list[AnySpec]
    replaces: list[tuple[str, AnySpec]]
    stops: list[str]
    nested: list[tuple[AnySupervisor, AnySupervisor]]
    updates: tuple[Change, ...] = ()  # adopted specs of children not running: changes, reported

    @property
    def empty(self) -> bool:
        return not (self.update or self.adopt or self.starts or self.replaces or self.stops)


def settings_change(old: AnySupervisor, new: AnySupervisor) -> Change | None:
    """The ``update`` of ``new``'s own settings over ``old``'s (same kind), or None.

    >>> old = SupervisorSpec(id="team")
    >>> settings_change(old, msgspec.structs.replace(old, max_restarts=5)).after
    {'max_restarts': 5}
    """
    fields = [f for f in SETTINGS[new.kind] if getattr(old, f) != getattr(new, f)]
    if not fields:
        return None
    before = {f: getattr(old, f) for f in fields}
    after = {f: getattr(new, f) for f in fields}
    if "templates" in fields:  # only the templates that changed, by the fields that changed
        before["templates"], after["templates"] = _templates_changed(old.templates, new.templates)
    return Change(action="update", supervisor=new.id, before=before, after=after)


def _templates_changed(old: dict[str, ChildSpec], new: dict[str, ChildSpec]) -> tuple[dict, dict]:
    before, after = {}, {}
    for name in sorted(old.keys() | new.keys()):
        was, now = old.get(name), new.get(name)
        if was == now:
            continue
        if was is None or now is None:
            before[name], after[name] = was and describe(was), now and describe(now)
        else:
            before[name], after[name] = fields_changed(was, now)
    return before, after


def fields_changed(old: AnySpec, new: AnySpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields of two specs that differ, before and after (as plain values).

    >>> fields_changed(ChildSpec(id="w", command=("sleep", "1")), ChildSpec(id="w", command=("sleep", "2")))
    ({'command': ['sleep', '1']}, {'command': ['sleep', '2']})
    """
    was, now = (msgspec.json.decode(msgspec.json.encode(spec)) for spec in (old, new))  # JSON values
    names = [n for n in dict.fromkeys([*was, *now]) if was.get(n) != now.get(n)]
    return {n: was.get(n) for n in names}, {n: now.get(n) for n in names}


def describe(spec: AnySpec | None) -> str | None:
    """What a spec runs, for a change line: a program's ``module:attr``, a command's argv (as a
    shell would show it), a supervisor's kind; None for none (or a program bound to a variable
    with no value).

    >>> describe(ChildSpec(id="y", command=("sleep", "3600")))
    'sleep 3600'
    """
    if spec is None:
        return None
    if not isinstance(spec, ChildSpec):
        return spec.kind
    if isinstance(spec.program, str):
        return spec.program
    if isinstance(spec.command, (tuple, list)) and all(isinstance(part, str) for part in spec.command):
        return shlex.join(spec.command)
    return None


def diff(old: AnySupervisor, new: AnySupervisor, table: Iterable[Child], resolve: Resolver) -> Diff:
    """What makes a supervisor started from ``old``, whose children are ``table`` now, run
    ``new`` (same id and kind; see the module's docstring)."""
    children = {child.id: child for child in table}
    if isinstance(new, DynamicSupervisorSpec):
        return _diff_dynamic(old, new, children, resolve)
    old_specs = {spec.id: spec for spec in old.children}
    adopt: dict[str, AnySpec] = {}
    starts, replaces, nested, updates = [], [], [], []
    for spec in new.children:
        before = old_specs.get(spec.id)
        child = children.get(spec.id)
        if child is None:
            if before is None:  # added (a child the file already had but that left the table: not ours)
                starts.append(spec)
            continue
        if same_kind_supervisor(child.spec, spec):
            if child.spec != spec:
                adopt[spec.id] = spec
            if child.state == "running" and before is not None and same_kind_supervisor(before, spec):
                nested.append((before, spec))
            continue
        if child.spec == spec or (before is not None and before == spec):
            continue  # already so, or unchanged in the file (an operator's reconfigure stands)
        if child.state != "running":
            adopt[spec.id] = spec  # its next start runs the new spec: a change, reported
            was, now = fields_changed(child.spec, spec)
            updates.append(Change(action="update", supervisor=new.id, child=spec.id, before=was, after=now))
        elif isinstance(spec, ChildSpec) and isinstance(child.spec, ChildSpec) and _disabled(spec, resolve):
            adopt[spec.id] = spec  # the reconcile stops it, kept and disabled
        elif only_standby_changed(child.spec, spec):
            adopt[spec.id] = spec  # it keeps running; its hot standbys go or come to the new count
            was, now = fields_changed(child.spec, spec)
            updates.append(Change(action="update", supervisor=new.id, child=spec.id, before=was, after=now))
        else:
            replaces.append((spec.id, spec))
    new_ids = {spec.id for spec in new.children}
    stops = [id for id in reversed(list(children)) if id in old_specs and id not in new_ids]
    return Diff(settings_change(old, new), adopt, starts, replaces, stops, nested, tuple(updates))


def _diff_dynamic(old: DynamicSupervisorSpec, new: DynamicSupervisorSpec, children: dict[str, Child],
                  resolve: Resolver) -> Diff:
    """A dynamic supervisor: its replicas follow their templates (adopted, then reconciled);
    those of a template that keeps none any more are stopped."""
    adopt: dict[str, AnySpec] = {}
    stops = []
    kept = {name: t for name, t in new.templates.items() if t.replicas is not None}
    old_counts = replica_counts(old.templates, resolve)
    for id, child in children.items():
        if (was := old_replica(id, old.templates, old_counts)) is None:
            continue  # started at run time: not the file's
        if (now := replica_of(id, kept)) is None or now[0] != was[0]:
            stops.append(id)
        elif (spec := from_template(kept[now[0]], id)) != child.spec:
            adopt[id] = spec
    return Diff(settings_change(old, new), adopt, [], [], stops[::-1], [])


def replica_counts(templates: dict[str, ChildSpec], resolve: Resolver) -> dict[str, int]:
    """How many replicas each template keeps with the values now (one that cannot be resolved
    is absent)."""
    counts = {}
    for name, template in templates.items():
        try:
            counts[name] = replica_count(resolve(template), {})
        except UnboundValue:
            pass
    return counts


def old_replica(id: str, templates: dict[str, ChildSpec], counts: dict[str, int]) -> tuple[str, int] | None:
    """``(template, index)`` when ``id`` is one of the replicas ``templates`` keep (``counts``);
    None for a child started at run time, even with an id of the same form (``w-3`` started by
    ``start-child`` beside the replicas ``w-1``, ``w-2``)."""
    replica = replica_of(id, templates)
    if replica is None or replica[1] > counts.get(replica[0], replica[1]):
        return None
    return replica


def replica_takeovers(old: DynamicSupervisorSpec, new: DynamicSupervisorSpec, table: Iterable[Child],
                      resolve: Resolver) -> list[str]:
    """Why ``new`` cannot be reloaded over ``old``: each run-time child of the table (not a
    replica of ``old``) whose id has the form of the replicas of a ``new`` template that keeps
    replicas (``w-3``): its reconcile would replace it (or remove it, above the count). A reload
    never takes over a child an operator started; the operator chooses."""
    old_counts, new_counts = replica_counts(old.templates, resolve), replica_counts(new.templates, resolve)
    problems = []
    for child in table:
        replica = replica_of(child.id, new.templates)
        if replica is None or old_replica(child.id, old.templates, old_counts) is not None:
            continue
        fate = "replace it" if replica[1] <= new_counts.get(replica[0], 0) else "remove it as a replica above the count"
        problems.append(
            f"child {child.id!r} of {new.id!r} was started at run time with an id of template {replica[0]!r}'s "
            f"replicas ({replica[0]}-N), which keeps replicas now: its reconcile would {fate}; terminate it first "
            f"(otpy terminate-child {child.id}), then reload")
    return problems


def only_standby_changed(old: AnySpec, new: AnySpec) -> bool:
    """Two child specs that differ in ``standby`` only: the running child is kept (a standby is
    no part of it), as a supervisor's settings are updated in place."""
    return (isinstance(old, ChildSpec) and isinstance(new, ChildSpec) and old.standby != new.standby
            and msgspec.structs.replace(old, standby=new.standby) == new)


def same_kind_supervisor(a: AnySpec, b: AnySpec) -> bool:
    """Both are supervisors of one kind: the running one is updated in place, not replaced."""
    return not isinstance(a, ChildSpec) and a.kind == b.kind


def _disabled(spec: ChildSpec, resolve: Resolver) -> bool:
    try:
        return not is_enabled(resolve(spec), {})
    except UnboundValue:
        return False


def adopted(children: Iterable[Child], request: Adopt) -> list[Child]:
    """Copies of ``children`` as ``adopt`` leaves them (for a dry run's reconcile plan)."""
    copies = []
    for child in children:
        copy = Child(**{name: getattr(child, name) for name in Child.__slots__})
        _adopt_child(copy, request.children.get(child.id))
        copies.append(copy)
    return copies


def adopt(machine: Any, request: Adopt) -> Outcome:
    """Carry ``request`` out on ``machine`` (a ``BaseMachine``): between two events, like
    OTP's ``code_change`` of a suspended supervisor. Nothing starts or stops here."""
    machine.spec = request.spec
    machine.window.max_restarts = request.spec.max_restarts
    machine.window.max_seconds = request.spec.max_seconds
    for id, spec in request.children.items():
        if (child := machine.children.get(id)) is not None:
            _adopt_child(child, spec)
    return Outcome("ok")


def _adopt_child(child: Child, spec: AnySpec | None) -> None:
    if spec is None:
        return
    child.spec = spec
    if child.state == "running" and not isinstance(spec, ChildSpec):
        child.running = spec  # a supervisor runs as declared: no replacement follows
    elif (child.state == "running" and isinstance(child.running, ChildSpec) and isinstance(spec.standby, int)
          and child.running.standby != spec.standby):
        child.running = msgspec.structs.replace(child.running, standby=spec.standby)  # kept: no replacement
