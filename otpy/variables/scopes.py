"""Scopes: the values of every scope, their versions, and resolution along a scope chain.

``ScopedValues`` is the pure store behind the variable registry: one space per scope
(``otpy.variables.space``), the values set in each, a version per value, the values written
since they were last taken (``take_changes``), and the resolution of a child's effective
configuration along its scope chain (the child, each enclosing supervisor, ``global``).

>>> from otpy.variables.types import FloatVariable
>>> store = ScopedValues({"global": VariableSpace("global", [FloatVariable(name="t", low=0.0, high=2.0, default=0.7)])})
>>> store.set("global", "t", 1.5)
1
>>> store.resolve("global")
{'t': 1.5}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from ..specs.model import SupervisorSpec, walk
from .space import GLOBAL, Constraint, VariableSpace, check_constraints, compute_composites, spaces_from_topology
from .types import CompositeVariable, SettableVariable, Variable, VariableError, listing
from .weight import MAX_TOTAL_BYTES, declared_weight, value_bytes

__all__ = [
    "GLOBAL", "Constraint", "ScopedValue", "ScopedValues", "VariableSpace", "VersionConflict", "parents_of",
    "spaces_from_topology",
]

Reason = Literal["set", "default", "computed", "missing"]


def parents_of(root: SupervisorSpec) -> dict[str, str]:
    """``{id: parent supervisor's id}`` for every child and supervisor below ``root``."""
    return {spec.id: parent for parent, spec in walk(root) if parent is not None}


# The store of values, by scope.


class VersionConflict(Exception):
    """A compare-and-set whose expected version is not the current one."""

    def __init__(self, scope: str, name: str, expected: int, current: int):
        self.scope, self.name, self.expected, self.current = scope, name, expected, current
        super().__init__(f"scope {scope!r}: {name}: expected version {expected}, "
                         f"but the current version is {current}")

    def __reduce__(self):
        return type(self), (self.scope, self.name, self.expected, self.current)


class ScopedValue(msgspec.Struct, frozen=True):
    """One variable's value at one scope, and why it has it.

    ``reason``: ``set`` (``version`` > 0), ``default``, ``computed`` (a composite), or
    ``missing`` (no value and no default; ``value`` is None). ``version`` is 0 unless set.
    """

    scope: str
    name: str
    value: Any
    version: int
    reason: Reason


class ScopedValues:
    """Values per scope, checked against each scope's space, with versions and resolution.

    ``parents`` maps a child's or supervisor's id to its supervisor's id: the tree's, and the
    dynamic children ``learn_chain`` adds. Every write bumps ``version``, the global counter,
    and stamps the written values with it; a value never set has version 0. The store's
    fields are read from outside, never written: every change goes through a method.
    """

    def __init__(self, spaces: Mapping[str, VariableSpace], parents: Mapping[str, str] | None = None):
        self.spaces = dict(spaces)
        self.parents: dict[str, str] = dict(parents or {})
        self.values: dict[str, dict[str, Any]] = {scope: {} for scope in self.spaces}
        self.versions: dict[tuple[str, str], int] = {}
        # The version of a stored value the declarations here refused (dropped): a compare-and-set
        # is checked against it too, so a write never overwrites unseen what another node stored.
        self.refused: dict[tuple[str, str], int] = {}
        self.version = 0
        self._changed: dict[tuple[str, str], None] = {}  # written since take_changes, in order
        self._undo: dict[tuple[str, str], tuple[Any, int | None, int | None]] = {}  # what they replaced
        self._declared_bytes = declared_weight(self.spaces)  # every variable unset (``otpy.variables.weight``)
        self._value_bytes: dict[tuple[str, str], int] = {}  # each set value, as msgpack

    @classmethod
    def for_tree(cls, raw_variables: Mapping[str, Mapping[str, Any]], root: SupervisorSpec) -> ScopedValues:
        """The spaces of ``[variables.SCOPE]`` tables over the tree below ``root``; a scope must be
        ``global`` or an id of that tree (VariableError naming ``variables.SCOPE`` otherwise)."""
        parents = parents_of(root)
        return cls(spaces_from_topology(raw_variables, scopes={root.id, *parents}), parents)

    @classmethod
    def from_topology(cls, topology: Any) -> ScopedValues:
        """``for_tree(topology.raw_variables, topology.node.root)``: a loaded topology's variables."""
        return cls.for_tree(topology.raw_variables, topology.node.root)

    # Changing the scopes and the tree (not the values).

    def declare(self, scope: str, variables: Iterable[Variable]) -> None:
        """Add ``variables`` to ``scope``'s space (a new scope gets one); VariableError for a name
        declared already or a composite closing a cycle (then none of them is added)."""
        space = self.spaces.get(scope) or VariableSpace(scope)
        self.spaces[scope] = space.extended(variables)
        self.values.setdefault(scope, {})
        self._declared_bytes = declared_weight(self.spaces)

    def weight(self) -> int:
        """What every variable weighs together (declarations and set values, as msgpack, with their
        names: ``otpy.variables.weight``); a write may not make it exceed ``MAX_TOTAL_BYTES``."""
        return self._declared_bytes + sum(self._value_bytes.values())

    def weight_problem(self, scope: str, variables: Iterable[Variable]) -> str | None:
        """Why declaring ``variables`` in ``scope`` would make the variables weigh too much, else None."""
        variables = list(variables)
        after = self.weight() + declared_weight({scope: VariableSpace(scope, variables)})
        return None if after <= MAX_TOTAL_BYTES else _over_total(scope, [v.name for v in variables], after)

    def unresolvable_with(self, scope: str, variables: Iterable[Variable]) -> list[str]:
        """The known children that resolve now and would not once ``variables`` are declared in
        ``scope`` (a variable without a default, a composite or constraint that fails)."""
        space = self.spaces.get(scope) or VariableSpace(scope)
        trial = ScopedValues({**self.spaces, scope: space.extended(variables)}, self.parents)
        trial.values, trial.versions = {**trial.values, **self.values}, self.versions  # read only
        ids = sorted({*self.parents, *self.parents.values(), *self.spaces, scope})
        return [child for child in ids if _resolves(self, child) and not _resolves(trial, child)]

    def learn_chain(self, child: str, chain: Iterable[str]) -> None:
        """A child started at run time tells its supervisors, nearest first (``OTPY_SUPERVISORS``).

        Only a child the tree does not know yet is learnt, and only as far as its chain
        reaches an id the tree knows (the links below that id)."""
        chain = list(chain)
        if child in self.parents or not chain:
            return
        known = {*self.parents, *self.parents.values()}
        links = list(zip([child, *chain], chain))
        for depth, (_, above) in enumerate(links):
            if above in known:
                for below, parent in links[:depth + 1]:
                    self.parents.setdefault(below, parent)
                return

    # Loading stored values, and the values written since.

    def load(self, version: int, stored: Iterable[tuple[str, str, Any, int]]) -> list[str]:
        """Replace every value by ``stored`` (``(scope, name, value, version)`` rows) and the counter
        by ``version``; forget the changes not taken. A row whose variable is no longer declared
        is skipped; one whose value the declaration no longer accepts is dropped: one problem each."""
        self.values = {scope: {} for scope in self.spaces}
        self.versions, self.version, self._changed, self._value_bytes = {}, version, {}, {}
        self.refused, self._undo, dropped = {}, {}, []
        for scope, name, value, value_version in stored:
            if scope not in self.spaces or name not in self.spaces[scope].variables:
                continue
            try:
                self.values[scope][name] = self.spaces[scope].validate_one(name, value)
            except (VariableError, ValueError) as refused:
                dropped.append(f"{scope}.{name}: {refused}")
                self.refused[scope, name] = value_version
                continue
            self.versions[scope, name] = value_version
            self._value_bytes[scope, name] = value_bytes(self.values[scope][name])
        return dropped

    def fold(self, version: int, rows: Iterable[tuple[str, str, Any, int]]) -> tuple[list[ScopedValue], list[str]]:
        """Take in ``rows`` (``(scope, name, value, version)``) another writer committed, newer than
        what this store holds, and the counter up to ``version``: the values taken (to publish)
        and one problem per value the declarations refuse (dropped; an undeclared one is skipped)."""
        taken, dropped = [], []
        for scope, name, value, value_version in rows:
            if value_version <= self.versions.get((scope, name), 0):
                continue
            if scope not in self.spaces or name not in self.spaces[scope].variables:
                continue
            try:
                value = self.spaces[scope].validate_one(name, value)
            except (VariableError, ValueError) as refused:
                dropped.append(f"{scope}.{name}: {refused}")
                self.refused[scope, name] = max(value_version, self.refused.get((scope, name), 0))
                continue
            self.values[scope][name] = value
            self.versions[scope, name] = value_version
            self._value_bytes[scope, name] = value_bytes(value)
            taken.append(ScopedValue(scope, name, value, value_version, "set"))
        self.version = max(self.version, version, *(entry.version for entry in taken))
        return taken, dropped

    def snapshot(self) -> tuple:
        """What ``restore`` puts back: the values, their versions and the counter (a write whose
        commit failed is undone with it)."""
        return ({scope: dict(values) for scope, values in self.values.items()}, dict(self.versions), self.version,
                dict(self._value_bytes))

    def restore(self, snapshot: tuple) -> None:
        values, versions, self.version, value_bytes_ = snapshot
        self.values = {scope: dict(values.get(scope, {})) for scope in self.spaces}
        self.versions, self._value_bytes, self._changed, self._undo = dict(versions), dict(value_bytes_), {}, {}

    def take_changes(self, undo: bool = False) -> list[ScopedValue]:
        """The values written since the last call (each once, as it is now), and forget them;
        with ``undo``, the store is put back as it was before them (a write not yet committed:
        memory holds only what is committed). Costs what was written, not what is stored."""
        changed, self._changed = self._changed, {}
        taken = [ScopedValue(scope, name, self.values[scope][name], self.versions[scope, name], "set")
                 for scope, name in changed]
        undone, self._undo = self._undo, {}
        if undo:
            for (scope, name), (value, version, size) in undone.items():
                if version is None:
                    self.values[scope].pop(name, None)
                    self.versions.pop((scope, name), None)
                    self._value_bytes.pop((scope, name), None)
                else:
                    self.values[scope][name], self.versions[scope, name] = value, version
                    self._value_bytes[scope, name] = size
            if taken:
                self.version = min(entry.version for entry in taken) - 1
        return taken

    # Reading one scope.

    def space(self, scope: str) -> VariableSpace:
        """``scope``'s space, or VariableError naming the scopes that have one."""
        if scope not in self.spaces:
            raise VariableError([self._unknown_scope(scope)])
        return self.spaces[scope]

    def _unknown_scope(self, scope: str) -> str:
        return f"{scope}: unknown scope; the scopes with variables are {listing(self.spaces) or 'none'}"

    def _entry(self, scope: str, name: str) -> ScopedValue:
        variable = self.spaces[scope].variables[name]
        if name in self.values[scope]:
            return ScopedValue(scope, name, self.values[scope][name], self.versions[scope, name], "set")
        if variable.default is not None:
            return ScopedValue(scope, name, variable.default, 0, "default")
        return ScopedValue(scope, name, None, 0, "missing")

    def _scope_entries(self, scope: str) -> list[ScopedValue]:
        space = self.space(scope)
        config = space.validate(self.values[scope], partial=True)
        return [
            self._entry(scope, name) if isinstance(variable, SettableVariable)
            else ScopedValue(scope, name, config.get(name), 0, "computed" if name in config else "missing")
            for name, variable in space.variables.items()
        ]

    def get(self, scope: str, name: str) -> ScopedValue:
        """``name``'s value at ``scope`` itself (set, default or computed), with its version."""
        space = self.space(scope)
        if name not in space.variables:
            declared = listing(space.variables) or "no variables"
            raise VariableError([f"{name}: unknown variable in scope {scope!r}; it declares {declared}"])
        if isinstance(space.variables[name], SettableVariable):
            return self._entry(scope, name)
        return next(entry for entry in self._scope_entries(scope) if entry.name == name)

    def list(self, scope: str | None = None) -> list[ScopedValue]:
        """Every variable of ``scope`` (or of every scope) with its value there."""
        scopes = list(self.spaces) if scope is None else [scope]
        return [entry for each in scopes for entry in self._scope_entries(each)]

    # Resolution along a child's scope chain.

    def scope_chain(self, child_id: str) -> list[str]:
        """``[child_id, its supervisor, ..., the root, 'global']``: the scopes looked in, most specific first."""
        known = child_id == GLOBAL or child_id in self.spaces or child_id in self.parents
        if not (known or child_id in self.parents.values()):
            ids = listing(sorted({*self.parents, *self.parents.values()})) or "none"
            raise VariableError([(f"{child_id}: unknown child; expected 'global', a scope, or an id of the tree: "
                                 f"{ids}")])
        chain = [child_id]
        while chain[-1] in self.parents:
            parent = self.parents[chain[-1]]
            if parent in chain:
                raise ValueError(f"parents form a cycle: {' -> '.join([*chain, parent])}")
            chain.append(parent)
        return chain if chain[-1] == GLOBAL else [*chain, GLOBAL]

    def _resolution(self, child_id: str) -> tuple[list[str], dict[str, ScopedValue], list[str]]:
        """The chain, each visible variable's entry, and the problems (missing values, failed composites).

        A variable belongs to the most specific scope of the chain that declares it: that
        scope's set value, or else its default. Composites are computed over the result.
        """
        chain = self.scope_chain(child_id)
        owners: dict[str, str] = {}  # variable name -> the scope it belongs to
        for scope in reversed(chain):
            if scope in self.spaces:
                owners.update((name, scope) for name in self.spaces[scope].variables)
        variables = {name: self.spaces[scope].variables[name] for name, scope in owners.items()}
        entries = {name: self._entry(owners[name], name)
                   for name, variable in variables.items() if isinstance(variable, SettableVariable)}
        problems = [f"{name}: missing; no value set in scope {entry.scope!r} and no default"
                    for name, entry in entries.items() if entry.reason == "missing"]
        config = {name: entry.value for name, entry in entries.items() if entry.reason != "missing"}
        composites = {name: v for name, v in variables.items() if isinstance(v, CompositeVariable)}
        problems += compute_composites(composites, config, owners)
        for name in composites:
            computed = "computed" if name in config else "missing"
            entries[name] = ScopedValue(owners[name], name, config.get(name), 0, computed)
        return chain, {name: entries[name] for name in owners}, problems

    def resolve(self, child_id: str) -> dict[str, Any]:
        """``child_id``'s effective configuration; the constraints of every scope of its chain must hold."""
        chain, entries, problems = self._resolution(child_id)
        config = {name: entry.value for name, entry in entries.items()}
        if not problems:
            for scope in chain:
                constraints = self.spaces[scope].constraints if scope in self.spaces else []
                problems += [f"scope {scope!r}: {problem}" for problem in check_constraints(constraints, config)]
        if problems:
            raise VariableError(problems)
        return config

    def resolve_with(self, child_id: str, overlay: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """``child_id``'s configuration as it would be with ``overlay`` (``{scope: {name: value}}``)
        written: the write checked as ``set_many`` checks it (VariableError), nothing stored."""
        if not any(overlay.values()):
            return self.resolve(child_id)
        checked = self._checked_writes(overlay)
        trial = ScopedValues(self.spaces, self.parents)
        trial.values = {scope: {**values, **checked.get(scope, {})} for scope, values in self.values.items()}
        trial.versions = {**self.versions, **{(scope, name): self.version + 1
                                              for scope, values in checked.items() for name in values}}
        return trial.resolve(child_id)

    def explain(self, child_id: str, name: str) -> tuple[str, Any, Reason]:
        """Where ``child_id``'s ``name`` comes from: ``(scope, value, 'set' | 'default' | ...)``."""
        chain, entries, _ = self._resolution(child_id)
        if name not in entries:
            visible = listing(entries) or "none"
            raise VariableError([(f"{name}: unknown variable for {child_id!r} (scopes {listing(chain)}); "
                                 f"visible variables: {visible}")])
        entry = entries[name]
        return entry.scope, entry.value, entry.reason

    # Writing.

    def _checked_writes(self, scope_values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """The writes as they would be stored, or VariableError with every problem of every scope."""
        checked, problems = {}, []
        for scope, new_values in scope_values.items():
            if scope not in self.spaces:
                problems.append(self._unknown_scope(scope))
                continue
            try:
                config = self.spaces[scope].validate({**self.values[scope], **new_values}, partial=True)
                checked[scope] = {name: config[name] for name in new_values}
            except VariableError as error:
                problems += [f"scope {scope!r}: {problem}" for problem in error.problems]
        if problems:
            raise VariableError(problems)
        self._check_weight(checked)
        return checked

    def _check_weight(self, checked: Mapping[str, Mapping[str, Any]]) -> None:
        """VariableError naming the written variables when the write would make every variable
        weigh more than ``MAX_TOTAL_BYTES`` together (a write that makes it lighter always passes)."""
        added = sum(value_bytes(value) - self._value_bytes.get((scope, name), 0)
                    for scope, values in checked.items() for name, value in values.items())
        if added <= 0:
            return
        if (after := self.weight() + added) > MAX_TOTAL_BYTES:
            names = [f"{scope}.{name}" for scope, values in checked.items() for name in values]
            raise VariableError([_over_total(None, names, after)])

    def _apply(self, checked: Mapping[str, Mapping[str, Any]]) -> int:
        self.version += 1
        for scope, new_values in checked.items():
            for name, value in new_values.items():
                if (scope, name) not in self._undo:
                    self._undo[scope, name] = (self.values[scope].get(name), self.versions.get((scope, name)),
                                               self._value_bytes.get((scope, name)))
                self.values[scope][name] = value
                self.versions[scope, name] = self.version
                self._value_bytes[scope, name] = value_bytes(value)
                self._changed[scope, name] = None
        return self.version

    def stored_version(self, scope: str, name: str) -> int:
        """The version a compare-and-set expects: the value's, or that of a newer stored value
        the declarations here refused."""
        return max(self.versions.get((scope, name), 0), self.refused.get((scope, name), 0))

    def set(self, scope: str, name: str, value: Any, expected_version: int | None = None, *,
            dry_run: bool = False) -> int:
        """Set ``name`` at ``scope``; returns its new version.

        The whole scope is checked with the new value (its constraints included). With
        ``expected_version`` (0: never set), the write happens only if it is the current version.
        With ``dry_run``, every check is made and nothing is written: the version it would get.
        """
        checked = self._checked_writes({scope: {name: value}})
        current = self.stored_version(scope, name)
        if expected_version is not None and expected_version != current:
            raise VersionConflict(scope, name, expected_version, current)
        return self.version + 1 if dry_run else self._apply(checked)

    def set_many(self, scope_values: Mapping[str, Mapping[str, Any]], *, dry_run: bool = False,
                 expected: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, dict[str, int]]:
        """Set several values in several scopes at once: all are checked first, and nothing is written
        if any fails. They all get the same new version, returned as ``{scope: {name: version}}``
        (with ``dry_run``: checked, not written, the versions they would get). ``expected``
        (``{scope: {name: version}}``, 0: never set): a compare-and-set of those variables in the
        same write (VersionConflict for the first that is not at its version)."""
        checked = self._checked_writes(scope_values)
        for scope, versions in (expected or {}).items():
            for name, version in versions.items():
                if version != (current := self.stored_version(scope, name)):
                    raise VersionConflict(scope, name, version, current)
        if not any(checked.values()):
            return {}
        version = self.version + 1 if dry_run else self._apply(checked)
        return {scope: {name: version for name in new_values} for scope, new_values in checked.items()}


def _over_total(scope: str | None, names: list[str], after: int) -> str:
    """The refusal of a write (``names``: ``SCOPE.NAME``) or of a declaration in ``scope``."""
    named = ", ".join(f"{scope}.{name}" if scope else name for name in names)
    return (f"{'declaring' if scope else 'setting'} {named} would make the registry's variables weigh "
            f"{after:,} bytes together (values and declarations, as msgpack), over its total of {MAX_TOTAL_BYTES:,} "
            "bytes (8 MiB), which keeps every reply carrying them within a message; nothing was written "
            "(make room: set other variables smaller)")


def _resolves(store: ScopedValues, child: str) -> bool:
    try:
        store.resolve(child)
    except (VariableError, ValueError):
        return False
    return True
