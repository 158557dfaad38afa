"""A space: the variables of one scope, checked together with their composites and constraints.

A ``VariableSpace`` holds the variables of one scope (``global``, a supervisor's id or a
child's id) and the constraints between them, and checks a whole configuration at once.
``spaces_from_topology`` reads a topology's ``[variables.SCOPE]`` tables into spaces. The
values of every scope, and resolution along a child's scope chain, are ``otpy.variables.scopes``.

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
from typing import TYPE_CHECKING, Any

from .types import (
    CompositeVariable,
    function_target,
    import_callable,
    SettableVariable,
    Variable,
    VariableError,
    key,
    listing,
    show,
    variable_from_table,
    variable_table,
)
from .weight import MAX_TOTAL_BYTES, declared_weight

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = ["GLOBAL", "Constraint", "VariableSpace", "dependency_problems", "spaces_from_topology"]

GLOBAL = "global"



@dataclass(frozen=True)
class Constraint:
    """A rule over a whole configuration: ``check(config)`` returns true; false or raising breaks it."""

    check: Callable[[dict[str, Any]], bool]
    description: str

    def table(self) -> dict[str, str]:
        """As a topology's ``[constraints]`` entry declares it."""
        return {"check": function_target(self.check), "description": self.description}


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

    def extended(self, variables: Iterable[Variable]) -> VariableSpace:
        """A new space: this one's variables and constraints, and ``variables`` added."""
        space = VariableSpace(self.name, [*self.variables.values(), *variables])
        space.constraints = list(self.constraints)
        return space

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
                return self.validate({name: variable.sample(rng) for name, variable in self.settable.items()
                                      if variable.searchable})  # a document keeps its default
            except VariableError as error:
                last_problems = error.problems
        first = f"{self.name}: could not meet the constraints in {max_attempts} attempts"
        raise VariableError([first, *(f"last attempt: {problem}" for problem in last_problems)])

    def tables(self) -> dict[str, dict[str, Any]]:
        """The variables in the topology's table form, ``{name: table}`` (``get_space`` serves it)."""
        return {name: variable_table(variable) for name, variable in self.variables.items()}

    def to_optuna_distributions(self) -> dict[str, BaseDistribution]:
        """One optuna distribution per searchable variable (composites are computed, documents set, not
        searched: a trial leaves them as they are)."""
        return {name: variable.to_optuna() for name, variable in self.settable.items() if variable.searchable}


def spaces_from_topology(
    raw_variables: Mapping[str, Mapping[str, Any]],
    constraints: Mapping[str, Any] | None = None,
    *,
    scopes: Iterable[str] | None = None,
) -> dict[str, VariableSpace]:
    """One VariableSpace per ``[variables.SCOPE]`` table, or VariableError with every problem at once.

    ``constraints`` is the topology's ``[constraints]`` table, ``SCOPE = [{ check =
    "module:function", description = "..." }]``: each check is imported and added to its
    scope's space. Composites (``type = "composite"``) depend on variables of their own scope.
    When every variable of a scope has a default, the defaults must pass its composites and
    constraints (else nothing below it would resolve). ``scopes``, when given, are the names a
    scope may have besides ``global`` (the topology's ids).
    """
    known = None if scopes is None else {GLOBAL, *scopes}
    problems: list[str] = []
    spaces: dict[str, VariableSpace] = {}
    for scope, tables in raw_variables.items():
        if known is not None and scope not in known:
            problems.append(f"variables.{key(scope)}: unknown scope {scope!r}; expected 'global' or an id "
                            f"of the topology: {listing(sorted(known - {GLOBAL}))}")
        space = spaces[scope] = VariableSpace(scope)
        refused = set()
        for name, table in tables.items():
            try:
                space.add(variable_from_table(name, table, scope=scope))
            except VariableError as error:  # its own problems, or a composite closing a cycle
                refused.add(name)
                problems += [problem if problem.startswith("variables.") else f"variables.{key(scope)}.{problem}"
                             for problem in error.problems]
        problems += dependency_problems(space, refused)
    for scope, entries in (constraints or {}).items():
        problems += _add_constraints(spaces, scope, entries)
    if not problems:
        problems += [problem for space in spaces.values() for problem in _default_problems(space)]
    if not problems and (weight := declared_weight(spaces)) > MAX_TOTAL_BYTES:
        problems.append(f"variables: the declarations weigh {weight:,} bytes together (as msgpack, their defaults "
                        f"included), over the registry's total of {MAX_TOTAL_BYTES:,} bytes (8 MiB) for all its "
                        "variables; expected smaller defaults")
    if problems:
        raise VariableError(problems)
    return spaces


def dependency_problems(space: VariableSpace, refused: Iterable[str] = ()) -> list[str]:
    """A composite of ``space`` that depends on a variable the space does not declare: its value
    could never be computed when the scope is written. One problem per composite (a dependency
    in ``refused``, whose declaration has its own problem, is not one more)."""
    problems, known = [], {*space.variables, *refused}
    for name, composite in space.composites.items():
        if unknown := [dependency for dependency in composite.depends_on if dependency not in known]:
            problems.append(f"variables.{key(space.name)}.{key(name)}.depends_on: got {listing(unknown)}; expected "
                            f"variables of scope {space.name!r}: {listing(space.variables) or 'none'}")
    return problems


def _add_constraints(spaces: Mapping[str, VariableSpace], scope: str, entries: Any) -> list[str]:
    """Add ``[constraints]``'s ``SCOPE = [...]`` entries to the scope's space; the problems,
    each naming ``constraints.SCOPE[i].KEY``."""
    where = f"constraints.{key(scope)}"
    example = '{ check = "module:function", description = "..." }'
    if not isinstance(entries, (list, tuple)):
        return [f"{where}: got {show(entries)}; expected an array of tables such as {example}"]
    if scope not in spaces:
        return [f"{where}: scope {scope!r} declares no variables; a constraint checks the values of its scope: "
                f"expected one of {listing(spaces) or 'no scopes (declare [variables.SCOPE] first)'}"]
    problems: list[str] = []
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{at}: got {show(entry)}; expected a table such as {example}")
            continue
        found = [f"{at}.{key(name)}: unknown key {name!r}; accepted keys: 'check', 'description'"
                 for name in entry if name not in ("check", "description")]
        if "check" not in entry:
            found.append(f"{at}.check: missing; this key is required")
        description = entry.get("description", entry.get("check"))
        if not isinstance(description, str):
            found.append(f"{at}.description: got {show(description)}; expected a string")
        if not found:
            try:
                spaces[scope].add_constraint(import_callable(entry["check"], f"{at}.check"), description)
            except VariableError as error:
                found += error.problems
        problems += found
    return problems


def _default_problems(space: VariableSpace) -> list[str]:
    """What the defaults of ``space`` break (composites, constraints), when every settable
    variable has one: no child under the scope could resolve until a value is set."""
    if any(variable.default is None for variable in space.settable.values()):
        return []
    try:
        space.validate({})
    except VariableError as error:
        return [f"variables.{key(space.name)}: with the defaults, {problem}" for problem in error.problems]
    return []
