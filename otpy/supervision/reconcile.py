"""Reconcile: what a supervisor does to make its children match what the variables say now.

A supervisor keeps each child's DECLARED spec (``Child.spec``, maybe with fields bound to
variables) and the spec its current incarnation was launched with (``Child.running``,
resolved then). When the node changes the variables, it asks every supervisor to
``Reconcile``; each one compares every child with its spec resolved now, with one rule,
``decide``:

========================================  =============================================
the child                                 what a reconcile does
========================================  =============================================
running, resolved ``enabled`` false       ``stop`` it (it stays, stopped and disabled)
running, resolved spec != ``running``     ``replace`` it, make-before-break
stopped and disabled, resolved enabled    ``start`` it
stopped by an operator (``override``)     nothing: only an operator starts it again
restarting, or ended (transient,          nothing: its restart type decides, as in OTP
temporary)
========================================  =============================================

A dynamic supervisor's template with ``replicas`` keeps ``TEMPLATE-1..N`` children
(``specs.bindings.replica_ids``): the missing ones are started (ascending), those above N
removed (stopped, and gone from the table), the others decided as above.

Replicas are children: a dynamic supervisor's ``max_children`` bounds them too
(``over_max_children``, one rule for the boot and a reconcile). A new replica that would make
the supervisor keep more children than ``max_children`` (counting those the same reconcile
removes as gone, and stopped ones as there, as OTP counts its table) is a failed step.

``plan`` is the list of ``Step`` s in the order they are carried out, in two phases: ``make``,
the replacements and starts in start order, then ``break``, the stops in reverse start order.
The node runs ``make`` on every supervisor, commits the write, then ``break`` on every
supervisor: a write refused on the way has then stopped nothing. ``all`` is both. The
machine's ``plan()`` shows the whole plan as wire ``Change`` s without doing anything (a dry
run); its ``Reconcile`` carries out the same steps, so the dry run is exactly what ``make``
then ``break`` (or ``all``) do.
"""

from __future__ import annotations

from typing import Callable, Iterable, Literal, Mapping, NamedTuple

import msgspec

from .children import Child
from .effects import ReconcilePhase
from ..specs.bindings import BoundValues, UnboundValue, is_enabled, replica_count, replica_ids, replica_of
from ..specs.model import AnySpec, Bound, ChildSpec, from_template
from ..wire.protocol import BoundInfo, Change
from .spec_diff import describe

Decision = Literal["replace", "stop", "start"]
Resolver = Callable[[AnySpec], AnySpec]


class Step(NamedTuple):
    """One thing a reconcile does to child ``id``: ``start`` (``new``: the declared spec of a
    replica not yet in the table), ``replace``, ``stop`` (kept, disabled) or ``remove`` (a
    replica above its template's count: stopped and deleted); ``change`` says it on the wire;
    ``refusal``: why the step fails without being tried (a new replica above ``max_children``)."""

    action: Literal["start", "replace", "stop", "remove"]
    id: str
    change: Change
    new: ChildSpec | None = None
    refusal: str | None = None


def enabled(resolved: AnySpec) -> bool:
    """Whether a resolved spec runs (the one rule: ``specs.bindings.is_enabled``)."""
    return is_enabled(resolved, {})


def decide(child: Child, resolved: AnySpec | None) -> Decision | None:
    """What a reconcile does to ``child`` whose spec resolves now to ``resolved`` (None: it
    cannot be resolved, a variable has no value; the start or replacement then fails, naming
    it). None: nothing."""
    if child.state == "restarting":
        return None
    if child.state == "running":
        if resolved is not None and not enabled(resolved):
            return "stop"
        return "replace" if resolved is None or runs_as(resolved) != runs_as(child.running) else None
    if child.disabled and not child.override and (resolved is None or enabled(resolved)):
        return "start"
    return None


def runs_as(spec: AnySpec | None) -> AnySpec | None:
    """What of a resolved spec a running child is: all of it but ``replicas``, which is its
    template's count (a replica is not replaced when only the count changes)."""
    if isinstance(spec, ChildSpec) and spec.replicas is not None:
        return msgspec.structs.replace(spec, replicas=None)
    return spec


def try_resolve(resolve: Resolver, spec: AnySpec) -> AnySpec | None:
    """``spec`` resolved now, or None when a variable it is bound to has no value."""
    try:
        return resolve(spec)
    except UnboundValue:
        return None


def program_of(spec: AnySpec | None) -> str | None:
    """What a worker runs ("module:attr"), if it is a program with a known value."""
    if isinstance(spec, ChildSpec) and isinstance(spec.program, str):
        return spec.program
    return None


def shown_program(child: Child, resolve: Callable[[AnySpec], AnySpec]) -> str | None:
    """What a program child runs: its running incarnation's program; for a child not running,
    what it would run if started now (its spec resolved with the values). None for commands,
    supervisors and a binding with no value."""
    if child.running is not None:
        return program_of(child.running)
    try:
        return program_of(resolve(child.spec))
    except UnboundValue:
        return None


def bound_info(child: Child, values: BoundValues, launched: Mapping[str, int]) -> BoundInfo | None:
    """The variable ``child``'s program (else its ``enabled``) is bound to, and the registry
    version of the value it runs: the current version when it runs the current value (a node
    commits a write, and learns its version, after the children follow it), else the version
    it was launched with (``launched``: the versions at its launch); a stopped child: the
    current version."""
    spec = child.spec
    field, bound = next(((name, b) for name in ("program", "enabled")
                         if isinstance(b := getattr(spec, name, None), Bound)), (None, None))
    if bound is None:
        return None
    current = values.version(bound.variable)
    if child.state != "running" or child.running is None:
        return BoundInfo(bound.variable, current)
    if getattr(child.running, field) == values.values.get(bound.variable):
        return BoundInfo(bound.variable, current)
    return BoundInfo(bound.variable, launched.get(bound.variable, 0))  # none kept: every version was 0 at launch


def over_max_children(template: str, children: int, max_children: int | None) -> str | None:
    """Why a replica of ``template`` may not be started as the supervisor's ``children``-th
    child (``max_children`` None: no limit), or None."""
    if max_children is None or children <= max_children:
        return None
    return (f"max_children: a replica of template {template!r} would be child {children} of a supervisor "
            f"whose max_children is {max_children}; raise max_children or lower the template's replicas")


def plan(children: Iterable[Child], resolve: Resolver, supervisor: str,
         templates: Mapping[str, ChildSpec] | None = None, max_children: int | None = None,
         phase: ReconcilePhase = "all") -> list[Step]:
    """The steps of ``phase`` that make ``children`` (in start order) match ``resolve`` now;
    ``templates`` and ``max_children``: a dynamic supervisor's, whose ``replicas`` are kept."""
    children = list(children)
    counts = _replica_counts(templates or {}, resolve)
    ahead: list[Step] = []  # replacements and starts, in start order
    stops: list[Step] = []  # in start order; carried out reversed
    for child in children:
        replica = replica_of(child.id, templates) if templates else None
        if replica is not None and replica[0] in counts and replica[1] > counts[replica[0]]:
            stops.append(Step("remove", child.id, _stop_change(supervisor, child)))
            continue
        resolved = try_resolve(resolve, child.spec)
        match decide(child, resolved):
            case "start":
                ahead.append(Step("start", child.id, Change(action="start", supervisor=supervisor, child=child.id,
                                                            after=program_of(resolved))))
            case "replace":
                ahead.append(Step("replace", child.id, Change(
                    action="reconfigure", supervisor=supervisor, child=child.id,
                    before=describe(child.running), after=describe(resolved))))  # a command: its argv
            case "stop":
                stops.append(Step("stop", child.id, _stop_change(supervisor, child)))
    present = {child.id for child in children}
    kept = len(children) - sum(step.action == "remove" for step in stops)
    for name, count in counts.items():
        for id in replica_ids(name, count):
            if id not in present:
                kept += 1
                new = from_template(templates[name], id)
                ahead.append(Step("start", id, Change(action="start", supervisor=supervisor, child=id,
                                                      after=program_of(try_resolve(resolve, new))), new=new,
                                  refusal=over_max_children(name, kept, max_children)))
    return {"make": ahead, "break": stops[::-1], "all": ahead + stops[::-1]}[phase]


def _stop_change(supervisor: str, child: Child) -> Change:
    return Change(action="stop", supervisor=supervisor, child=child.id, before=program_of(child.running),
                  pid=child.pid)


def _replica_counts(templates: Mapping[str, ChildSpec], resolve: Resolver) -> dict[str, int]:
    """How many replicas each template with ``replicas`` keeps now, in declaration order; a
    template whose count cannot be resolved is left as it is (not in the answer)."""
    counts = {}
    for name, template in templates.items():
        if template.replicas is None:
            continue
        resolved = try_resolve(resolve, template)
        if resolved is not None:
            counts[name] = replica_count(resolved, {})
    return counts
