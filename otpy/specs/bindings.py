"""Bindings: spec fields whose value is a variable's, and the one rule that resolves them.

A worker child (or a dynamic supervisor's template) may bind three fields to a variable::

    program  = { variable = "global.classifier" }   # a ``module`` variable: which program runs
    enabled  = { variable = "pool.use_cache" }      # a ``bool`` variable: whether the child exists
    replicas = { variable = "pool.workers" }        # an ``integer`` variable (templates only)

``Values`` maps ``SCOPE.NAME`` to the value the node holds for it (stored, else the default).
``resolve(spec, values)`` is the spec as it runs with those values: every ``Bound`` replaced
by its value. Supervisors keep the declared specs and resolve a child each time they start it,
so a restart at any level runs what the variables say now.

>>> from otpy.specs.model import Bound, ChildSpec
>>> spec = ChildSpec(id="c", program=Bound("global.classifier"), enabled=Bound("global.on"))
>>> resolve(spec, {"global.classifier": "m:KNN", "global.on": True}).program
'm:KNN'
>>> sorted(variables_of(spec))
['global.classifier', 'global.on']
>>> replica_ids("worker", 3)
['worker-1', 'worker-2', 'worker-3']
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, NamedTuple

import msgspec

from .model import AnySpec, Bound, ChildSpec, DynamicSupervisorSpec, SupervisorSpec, join, places

Values = Mapping[str, Any]  # "SCOPE.NAME" -> value

# The bindable fields, and the variable type each must be bound to.
BINDABLE: dict[str, str] = {"program": "module", "enabled": "bool", "replicas": "integer"}


class UnboundValue(LookupError):
    """A bound field whose variable has no value in ``Values`` (the node has none for it)."""


class Binding(NamedTuple):
    """One bound field of the tree: where (``path``), under which supervisor, for which child
    id (a template's name for a template), which field, and the variable."""

    path: str
    supervisor: str
    child: str
    template: bool
    field: str
    bound: Bound


def bound_fields(spec: AnySpec) -> dict[str, Bound]:
    """The fields of ``spec`` bound to a variable (only a worker's can be)."""
    if not isinstance(spec, ChildSpec):
        return {}
    return {name: value for name in BINDABLE if isinstance(value := getattr(spec, name), Bound)}


def variables_of(spec: AnySpec) -> set[str]:
    """Every ``SCOPE.NAME`` bound anywhere in ``spec``'s tree (templates included)."""
    return {binding.bound.variable for binding in bindings(spec)}


def bindings(spec: AnySpec, path: str = "supervisor") -> Iterator[Binding]:
    """Every bound field of the tree below ``spec``, in start order (``places``)."""
    for place in places(spec, path):
        parent = place.parent.id if place.parent is not None else ""
        for name, bound in bound_fields(place.spec).items():
            yield Binding(join(place.path, name), parent, place.template or place.spec.id,
                          place.template is not None, name, bound)


def resolve(spec: AnySpec, values: Values) -> AnySpec:
    """``spec`` as it runs with ``values``: each ``Bound`` field replaced by its variable's value.

    A supervisor spec is returned as it is: its children are resolved when it starts them.
    Raises ``UnboundValue`` naming the field and the variable when ``values`` has none."""
    fields = bound_fields(spec)
    if not fields:
        return spec
    resolved = {}
    for name, bound in fields.items():
        try:
            resolved[name] = values[bound.variable]
        except KeyError:
            raise UnboundValue(f"{spec.id}: {name} is bound to {bound.variable}, which has no value") from None
    return msgspec.structs.replace(spec, **resolved)


def is_enabled(spec: AnySpec, values: Values) -> bool:
    """Whether ``spec`` should run with ``values`` (supervisors always)."""
    return not isinstance(spec, ChildSpec) or resolve(spec, values).enabled is not False


def replica_count(template: ChildSpec, values: Values) -> int:
    """How many children the template's supervisor keeps from it: 0 when it has no
    ``replicas`` or is disabled."""
    resolved = resolve(template, values)
    if resolved.replicas is None or resolved.enabled is False:
        return 0
    return int(resolved.replicas)


def replica_ids(template: str, count: int) -> list[str]:
    """The ids of a template's replicas, ``TEMPLATE-1`` to ``TEMPLATE-count``: stable, so the
    replica kept when the count goes down is always the lowest-numbered one."""
    return [replica_id(template, index) for index in range(1, count + 1)]


def replica_id(template: str, index: int) -> str:
    """The id of a template's replica number ``index`` (from 1)."""
    return f"{template}-{index}"


def replica_of(child_id: str, templates: Mapping[str, ChildSpec]) -> tuple[str, int] | None:
    """``(template, index)`` when ``child_id`` is a replica id of one of ``templates`` that has
    ``replicas`` (``TEMPLATE-N``, N >= 1), else None."""
    name, _, index = child_id.rpartition("-")
    template = templates.get(name)
    if template is None or template.replicas is None or not index.isdigit() or index.startswith("0"):
        return None
    return name, int(index)


def resolved_tree(root: SupervisorSpec | DynamicSupervisorSpec, values: Values):
    """The whole tree as it runs with ``values`` (for checks and plans: a node resolves each
    child when it starts it)."""
    if isinstance(root, SupervisorSpec):
        return msgspec.structs.replace(root, children=tuple(
            resolved_tree(child, values) if not isinstance(child, ChildSpec) else resolve(child, values)
            for child in root.children))
    if isinstance(root, DynamicSupervisorSpec):
        return msgspec.structs.replace(root, templates={
            name: resolve(template, values) for name, template in root.templates.items()})
    return resolve(root, values)


_ABSENT = object()  # a key ``update`` added: ``restore`` takes it away again


class BoundValues:
    """The values a node runs its bound variables with, and the registry version of each (0:
    the default, never set). Every supervisor of the node shares one and resolves a child with
    it each time it starts it; the node changes it, then asks the supervisors to reconcile.

    >>> from otpy.specs.model import Bound, ChildSpec
    >>> live = BoundValues({"global.p": "m:A"})
    >>> live.update({"global.p": "m:B"}, {"global.p": 3})
    {'global.p': ('m:A', 0)}
    >>> live.resolve(ChildSpec(id="c", program=Bound("global.p"))).program, live.version("global.p")
    ('m:B', 3)
    """

    def __init__(self, values: Values | None = None, versions: Mapping[str, int] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})
        self.versions: dict[str, int] = dict(versions or {})

    def __repr__(self) -> str:
        return f"<BoundValues {self.values!r}>"

    def resolve(self, spec: AnySpec) -> AnySpec:
        return resolve(spec, self.values)

    def version(self, variable: str) -> int:
        return self.versions.get(variable, 0)

    def update(self, values: Values, versions: Mapping[str, int] | None = None) -> dict[str, tuple[Any, int]]:
        """Set ``values`` (and their ``versions``); returns what they replaced, ``{variable:
        (value, version)}``, which ``update`` takes back to undo (``restore``)."""
        before = {key: (self.values.get(key, _ABSENT), self.version(key)) for key in values}
        self.values.update(values)
        self.versions.update(versions or {})
        return before

    def restore(self, before: Mapping[str, tuple[Any, int]]) -> None:
        """Undo an ``update`` with what it returned."""
        for key, (value, version) in before.items():
            if value is _ABSENT:
                self.values.pop(key, None)
                self.versions.pop(key, None)
            else:
                self.values[key] = value
                self.versions[key] = version
