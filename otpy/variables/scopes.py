"""Spaces and scopes: the variables of one scope checked together, and the values of every scope.

A ``VariableSpace`` holds the variables of one scope (``global``, a supervisor's id or a
child's id) and the constraints between them, and checks a whole configuration at once.
``ScopedValues`` is the pure store behind the variable registry: one space per scope, the
values set in each, a version per value, and the resolution of a child's effective
configuration along its scope chain (the child, each enclosing supervisor, ``global``).

>>> from otpy.variables.types import FloatVariable
>>> space = VariableSpace("global", [FloatVariable(name="temperature", low=0.0, high=2.0, default=0.7)])
>>> space.validate({})
{'temperature': 0.7}
>>> space.validate({"temperature": 3.5})
Traceback (most recent call last):
...
otpy.variables.types.VariableError: temperature: got 3.5; expected a float in [0.0, 2.0]
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ..specs.model import SupervisorSpec, walk
from .types import (
    CompositeVariable,
    SettableVariable,
    Variable,
    VariableError,
    key,
    listing,
    show,
    variable_from_table,
)

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

    from ..topology.load import Topology

__all__ = [
    "GLOBAL", "Constraint", "ScopedValue", "ScopedValues", "VariableSpace", "VersionConflict", "parents_of",
    "spaces_from_topology",
]

GLOBAL = "global"
Reason = Literal["set", "default", "computed", "missing"]


@dataclass(frozen=True)
class Constraint:
    """A rule over a whole configuration: ``check(config)`` returns true; false or raising breaks it."""

    check: Callable[[dict[str, Any]], bool]
    description: str


# Composites and constraints: used by one space, and across the scopes of a chain.


def dependency_order(composites: Mapping[str, CompositeVariable]) -> list[str]:
    """Composite names, each after the composites it depends on. Raises VariableError on a cycle."""
    order: list[str] = []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join(path[path.index(name):] + [name])
            raise VariableError([f"{name}: composite dependencies form a cycle: {cycle}"])
        if name in order:
            return
        for dependency in composites[name].depends_on:
            if dependency in composites:
                visit(dependency, path + [name])
        order.append(name)

    for name in composites:
        visit(name, [])
    return order


def compute_composites(
    composites: Mapping[str, CompositeVariable], config: dict[str, Any], declared: Iterable[str]
) -> list[str]:
    """Add every composite to ``config``, dependencies first, and return the problems.

    A composite whose dependency is declared but absent from ``config`` (its own problem is
    reported already, or it is left out of a partial check) is skipped without a problem.
    """
    declared, problems = set(declared), []
    for name in dependency_order(composites):
        depends_on = composites[name].depends_on
        unknown = [dependency for dependency in depends_on if dependency not in declared]
        if unknown:
            problems.append(f"{name}: depends on {listing(unknown)}; expected declared variables: "
                            f"{listing(sorted(declared))}")
        elif all(dependency in config for dependency in depends_on):
            try:
                inputs = {dependency: config[dependency] for dependency in depends_on}
                config[name] = composites[name].compute(inputs)
            except Exception as error:  # noqa: BLE001 - user code: any exception is a problem to report
                problems.append(f"{name}: compute raised {type(error).__name__}: {error}")
    return problems


def check_constraints(constraints: Iterable[Constraint], config: Mapping[str, Any]) -> list[str]:
    """One problem per constraint that returns false or raises."""
    problems = []
    for constraint in constraints:
        try:
            if not constraint.check(dict(config)):
                problems.append(f"constraint {constraint.description!r}: not met")
        except Exception as error:  # noqa: BLE001 - user code: any exception is a problem to report
            problems.append(f"constraint {constraint.description!r}: raised {type(error).__name__}: {error}")
    return problems


class VariableSpace:
    """The variables of one scope, and the constraints between them."""

    def __init__(self, name: str, variables: Iterable[Variable] = ()):
        self.name = name
        self.variables: dict[str, Variable] = {}
        self.constraints: list[Constraint] = []
        for variable in variables:
            self.add(variable)

    def __repr__(self) -> str:
        return f"VariableSpace({self.name!r}, variables={list(self.variables)})"

    @property
    def composites(self) -> dict[str, CompositeVariable]:
        return {name: v for name, v in self.variables.items() if isinstance(v, CompositeVariable)}

    @property
    def settable(self) -> dict[str, SettableVariable]:
        return {name: v for name, v in self.variables.items() if isinstance(v, SettableVariable)}

    def add(self, variable: Variable) -> VariableSpace:
        """Declare ``variable``. A name already declared, or a composite closing a cycle, is refused."""
        if not isinstance(variable, (SettableVariable, CompositeVariable)):
            raise VariableError([f"got {show(variable)}; expected a variable such as FloatVariable(...)"])
        if variable.name in self.variables:
            raise VariableError([f"{variable.name}: already declared in space {self.name!r}"])
        if isinstance(variable, CompositeVariable):
            dependency_order({variable.name: variable, **self.composites})  # a cycle is named from it
        self.variables[variable.name] = variable
        return self

    def add_constraint(self, check: Callable[[dict[str, Any]], bool], description: str) -> VariableSpace:
        """Add a rule over the whole configuration (composites included), e.g. ``max_tokens <= context``."""
        self.constraints.append(Constraint(check, description))
        return self

    def validate(self, configuration: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
        """The full configuration (defaults filled, composites computed), or VariableError with every problem.

        Constraints run only once every value is valid. With ``partial``, a variable with no
        value and no default is left out instead of being a problem; then the composites that
        need it and all constraints are left out too.
        """
        problems = self._undeclared_problems(configuration)
        config: dict[str, Any] = {}
        for name, variable in self.settable.items():
            if name in configuration or variable.default is not None:
                value = configuration.get(name, variable.default)
                problem = variable.problem(value)
                if problem:
                    problems.append(problem)
                else:
                    config[name] = variable.normalize(value)
            elif not partial:
                problems.append(f"{name}: missing; expected {variable.expected()} (this variable has no default)")
        problems += compute_composites(self.composites, config, self.variables)
        if not problems and len(config) == len(self.variables):
            problems += check_constraints(self.constraints, config)
        if problems:
            raise VariableError(problems)
        return {name: config[name] for name in self.variables if name in config}

    def _undeclared_problems(self, configuration: Mapping[str, Any]) -> list[str]:
        problems = []
        for name, value in configuration.items():
            if name not in self.variables:
                declared = listing(self.variables) or "no variables"
                problems.append(f"{name}: unknown variable (got {show(value)}); "
                                f"space {self.name!r} declares {declared}")
            elif isinstance(self.variables[name], CompositeVariable):
                depends_on = listing(self.variables[name].depends_on)
                problems.append(f"{name}: got {show(value)}; expected no value: it is computed from {depends_on}")
        return problems

    def validate_one(self, name: str, value: Any) -> Any:
        """``value`` as stored for ``name`` (a float variable turns ints into floats), or VariableError."""
        problems = self._undeclared_problems({name: value})
        if not problems:
            problems = [problem] if (problem := self.variables[name].problem(value)) else []
        if problems:
            raise VariableError(problems)
        return self.variables[name].normalize(value)

    def sample(self, rng: random.Random, max_attempts: int = 100) -> dict[str, Any]:
        """A random valid configuration; VariableError if the constraints are not met in ``max_attempts``."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts: got {max_attempts}; expected an integer >= 1")
        last_problems: list[str] = []
        for _ in range(max_attempts):
            try:
                return self.validate({name: variable.sample(rng) for name, variable in self.settable.items()})
            except VariableError as error:
                last_problems = error.problems
        first = f"{self.name}: could not meet the constraints in {max_attempts} attempts"
        raise VariableError([first, *(f"last attempt: {problem}" for problem in last_problems)])

    def to_optuna_distributions(self) -> dict[str, BaseDistribution]:
        """One optuna distribution per settable variable (composites are computed, not searched)."""
        return {name: variable.to_optuna() for name, variable in self.settable.items()}


def spaces_from_topology(
    raw_variables: Mapping[str, Mapping[str, Any]], *, scopes: Iterable[str] | None = None
) -> dict[str, VariableSpace]:
    """One VariableSpace per ``[variables.SCOPE]`` table, or VariableError with every problem at once.

    ``scopes``, when given, are the names a scope may have besides ``global`` (the topology's ids).
    """
    known = None if scopes is None else {GLOBAL, *scopes}
    problems: list[str] = []
    spaces: dict[str, VariableSpace] = {}
    for scope, tables in raw_variables.items():
        if known is not None and scope not in known:
            problems.append(f"variables.{key(scope)}: unknown scope {scope!r}; expected 'global' or an id "
                            f"of the topology: {listing(sorted(known - {GLOBAL}))}")
        space = spaces[scope] = VariableSpace(scope)
        for name, table in tables.items():
            try:
                space.add(variable_from_table(name, table, scope=scope))
            except VariableError as error:
                problems += error.problems
    if problems:
        raise VariableError(problems)
    return spaces


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

    ``parents`` maps a child's or supervisor's id to its supervisor's id (the node keeps it
    up to date as dynamic children come and go). Every write bumps ``version``, the global
    counter, and stamps the written values with it; a value never set has version 0.
    """

    def __init__(self, spaces: Mapping[str, VariableSpace], parents: Mapping[str, str] | None = None):
        self.spaces = dict(spaces)
        self.parents: dict[str, str] = dict(parents or {})
        self.values: dict[str, dict[str, Any]] = {scope: {} for scope in self.spaces}
        self.versions: dict[tuple[str, str], int] = {}
        self.version = 0

    @classmethod
    def from_topology(cls, topology: Topology) -> ScopedValues:
        """The spaces a topology declares, over its tree; a scope must be ``global`` or one of its ids."""
        parents = parents_of(topology.node.root)
        ids = {topology.node.root.id, *parents}
        return cls(spaces_from_topology(topology.raw_variables, scopes=ids), parents)

    # Reading one scope.

    def _space(self, scope: str) -> VariableSpace:
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
        space = self._space(scope)
        config = space.validate(self.values[scope], partial=True)
        return [
            self._entry(scope, name) if isinstance(variable, SettableVariable)
            else ScopedValue(scope, name, config.get(name), 0, "computed" if name in config else "missing")
            for name, variable in space.variables.items()
        ]

    def get(self, scope: str, name: str) -> ScopedValue:
        """``name``'s value at ``scope`` itself (set, default or computed), with its version."""
        space = self._space(scope)
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
        return checked

    def _apply(self, checked: Mapping[str, Mapping[str, Any]]) -> int:
        self.version += 1
        for scope, new_values in checked.items():
            for name, value in new_values.items():
                self.values[scope][name] = value
                self.versions[scope, name] = self.version
        return self.version

    def set(self, scope: str, name: str, value: Any, expected_version: int | None = None) -> int:
        """Set ``name`` at ``scope``; returns its new version.

        The whole scope is checked with the new value (its constraints included). With
        ``expected_version`` (0: never set), the write happens only if it is the current version.
        """
        checked = self._checked_writes({scope: {name: value}})
        current = self.versions.get((scope, name), 0)
        if expected_version is not None and expected_version != current:
            raise VersionConflict(scope, name, expected_version, current)
        return self._apply(checked)

    def set_many(self, scope_values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
        """Set several values in several scopes at once: all are checked first, and nothing is written
        if any fails. They all get the same new version, returned as ``{scope: {name: version}}``."""
        checked = self._checked_writes(scope_values)
        if not any(checked.values()):
            return {}
        version = self._apply(checked)
        return {scope: {name: version for name in new_values} for scope, new_values in checked.items()}
