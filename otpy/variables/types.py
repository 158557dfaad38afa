"""Variables: the typed, declared knobs of a program.

A variable says which values a knob accepts (``float``, ``integer``, ``choice``, ``module``,
``bool``, ``document``: a JSON value such as a DSPy program's saved state) or how it is computed
from others (``composite``). The settable types are frozen
msgspec Structs tagged by ``type``, so they cross the wire as they are; a composite holds a
Python function and stays in Python (a topology names it by its import string, ``compute =
"module:function"``; ``variable_table`` gives any variable's table back). Each variable checks its own declaration when it is built
(its default included) and raises ``VariableError``, one line per problem:
``NAME.FIELD: got X; expected Y``. Spaces, scopes and whole configurations: ``otpy.variables.scopes``.

>>> FloatVariable(name="temperature", low=0.0, high=2.0, default=0.7).problem(3.5)
'temperature: got 3.5; expected a float in [0.0, 2.0]'
>>> table = {"type": "float", "low": 0.001, "high": 100.0, "log": True, "default": 0}
>>> variable_from_table("C", table, scope="svm")
Traceback (most recent call last):
...
otpy.variables.types.VariableError: variables.svm.C.default: got 0; expected a float in [0.001, 100.0]
"""

from __future__ import annotations

import importlib
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from ..specs.model import is_import_target
from ..wire.registry_protocol import MAX_DOCUMENT_BYTES
from .json_values import DOCUMENT_DEFAULT_BYTES, JSON_ITEMS, MAX_DOCUMENT_DEPTH, document_bytes, is_plain, json_problem

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = [
    "BoolVariable", "ChoiceVariable", "CompositeVariable", "DocumentVariable", "FloatVariable", "IntegerVariable", "ModuleVariable",
    "SettableVariable", "Variable", "VariableError", "WireVariable", "document_bytes", "import_callable",
    "variable_from_table", "variable_table",
]

MODULE_EXPECTED = "a 'module:attr' import string, e.g. 'examples.digits.agents:KNN'"
_GRID_TOLERANCE = 1e-9  # relative: how far off the step grid a float may be (float arithmetic)

Choice = str | int | float | bool
FieldProblem = tuple[str, str]  # (field, "got X; expected Y"); field "" is the variable itself


class VariableError(ValueError):
    """A configuration or declaration that cannot be used. ``problems`` holds one message per problem."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self):
        return type(self), (self.problems,)


# Small helpers for messages and checks.


def show(value: Any) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def listing(values: Iterable[Any]) -> str:
    return ", ".join(show(value) for value in values)


def key(name: Any) -> str:
    """``name`` as one part of a key path: bare when it is a plain word, quoted otherwise."""
    name = str(name)
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> type | None:
    """The choice type of ``value``, so that ``True``, ``1`` and ``1.0`` never match each other."""
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind
    return None


def _on_grid(value: float, low: float, step: float) -> bool:
    steps = (value - low) / step
    return abs(steps - round(steps)) <= _GRID_TOLERANCE * max(1.0, abs(steps))


def _divides(step: float, low: float, high: float) -> bool:
    """Whether ``step`` divides ``high - low`` exactly in decimal, as optuna checks it."""
    return (Decimal(str(high)) - Decimal(str(low))) % Decimal(str(step)) == 0


def _bad(field: str, value: Any, expected: str) -> FieldProblem:
    return field, f"got {show(value)}; expected {expected}"


def _listed_problems(field: str, values: Any, is_item: Callable[[Any], bool], item: str) -> list[FieldProblem]:
    """Problems of a non-empty array of distinct items (distinct as Python and optuna compare them)."""
    if not isinstance(values, (list, tuple)) or not values:
        return [_bad(field, values, f"a non-empty array, each item {item}")]
    problems = [_bad(f"{field}[{i}]", value, item) for i, value in enumerate(values) if not is_item(value)]
    if problems:
        return problems
    for i, value in enumerate(values):
        equal = [earlier for earlier in values[:i] if earlier == value]
        if equal:
            problems.append(_bad(f"{field}[{i}]", value, f"a value other than {show(equal[0])} (equal in Python)"))
    return problems


# The settable types. Each checks its own declaration when built (``__post_init__``).


class SettableVariable(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """What every settable variable has: a name, a description and a default (None: no default).

    Subclasses say which values they accept (``accepts``, ``expected``), how to draw one
    (``sample``) and which optuna distribution searches them (``to_optuna``).
    """

    name: str
    description: str = ""
    default: Any = None
    searchable: ClassVar[bool] = True  # an optimizer searches it (``to_optuna``); a document is not searched

    def __post_init__(self) -> None:
        problems = self._common_problems() + self._field_problems()
        if not problems and self.default is not None:
            if self.accepts(self.default):
                msgspec.structs.force_setattr(self, "default", self.normalize(self.default))
            else:
                problems.append(_bad("default", self.default, self.expected()))
        if problems:
            raise VariableError(
                f"{key(self.name)}.{field}: {text}" if field else f"{key(self.name)}: {text}"
                for field, text in problems
            )

    def _common_problems(self) -> list[FieldProblem]:
        problems = []
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            problems.append(_bad("", self.name, "a Python identifier"))
        if not isinstance(self.description, str):
            problems.append(_bad("description", self.description, "a string"))
        return problems

    def _field_problems(self) -> list[FieldProblem]:
        return []

    def normalize(self, value: Any) -> Any:
        """An accepted ``value`` as it is stored (floats turn ints into floats)."""
        return value

    def problem(self, value: Any) -> str | None:
        """``NAME: got X; expected Y`` when ``value`` is not accepted, else None."""
        if self.accepts(value):
            return None
        return f"{self.name}: got {show(value)}; expected {self.expected()}"


class FloatVariable(SettableVariable, frozen=True, kw_only=True, tag="float"):
    """A float in ``[low, high]``; ``log`` samples it log-uniformly; ``step`` puts it on a grid."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    default: float | None = None

    def _field_problems(self) -> list[FieldProblem]:
        bounds = {"low": self.low, "high": self.high}
        problems = [_bad(f, value, "a finite number") for f, value in bounds.items() if not _is_number(value)]
        if not isinstance(self.log, bool):
            problems.append(_bad("log", self.log, "true or false"))
        if self.step is not None and not (_is_number(self.step) and self.step > 0):
            problems.append(_bad("step", self.step, "a number > 0, or no step"))
        if problems:
            return problems
        for field in ("low", "high", "step"):
            if getattr(self, field) is not None:
                msgspec.structs.force_setattr(self, field, float(getattr(self, field)))
        if self.low > self.high:
            problems.append(_bad("high", self.high, f"a number >= low ({self.low!r})"))
        elif self.log and self.low <= 0:
            problems.append(_bad("low", self.low, "a number > 0 (log is true)"))
        if self.log and self.step is not None:
            problems.append(_bad("step", self.step, "no step when log is true (optuna cannot do both)"))
        elif self.step is not None and not _divides(self.step, self.low, self.high):
            problems.append(_bad("step", self.step, f"a step that divides high - low ({self.high} - {self.low})"))
        return problems

    def accepts(self, value: Any) -> bool:
        if not _is_number(value) or not self.low <= value <= self.high:
            return False
        return self.step is None or _on_grid(value, self.low, self.step)

    def expected(self) -> str:
        grid = f" on the grid {self.low!r} + k * {self.step!r}" if self.step is not None else ""
        return f"a float in [{self.low!r}, {self.high!r}]{grid}"

    def normalize(self, value: Any) -> float:
        return float(value)

    def sample(self, rng: random.Random) -> float:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        elif self.step is not None:
            value = self.low + rng.randint(0, round((self.high - self.low) / self.step)) * self.step
        else:
            value = rng.uniform(self.low, self.high)
        return min(max(value, self.low), self.high)

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)


class IntegerVariable(SettableVariable, frozen=True, kw_only=True, tag="integer"):
    """An integer in ``[low, high]`` on the grid ``low + k * step``. ``True`` is not an integer here."""

    low: int
    high: int
    step: int = 1
    default: int | None = None

    def _field_problems(self) -> list[FieldProblem]:
        bounds = {"low": self.low, "high": self.high}
        problems = [_bad(f, value, "an integer") for f, value in bounds.items() if not _is_int(value)]
        if not (_is_int(self.step) and self.step >= 1):
            problems.append(_bad("step", self.step, "an integer >= 1"))
        if problems:
            return problems
        if self.low > self.high:
            problems.append(_bad("high", self.high, f"an integer >= low ({self.low})"))
        elif (self.high - self.low) % self.step:
            problems.append(_bad("step", self.step, f"a step that divides high - low ({self.high} - {self.low})"))
        return problems

    def accepts(self, value: Any) -> bool:
        return _is_int(value) and self.low <= value <= self.high and (value - self.low) % self.step == 0

    def expected(self) -> str:
        grid = f" on the grid {self.low} + k * {self.step}" if self.step != 1 else ""
        return f"an integer in [{self.low}, {self.high}]{grid}"

    def sample(self, rng: random.Random) -> int:
        return self.low + rng.randint(0, (self.high - self.low) // self.step) * self.step

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, step=self.step)


class ChoiceVariable(SettableVariable, frozen=True, kw_only=True, tag="choice"):
    """One of ``choices``: strings, integers, floats, booleans. Types must match: ``1`` is not ``True``."""

    choices: tuple[Choice, ...]
    default: Choice | None = None

    def _field_problems(self) -> list[FieldProblem]:
        def is_choice(value: Any) -> bool:
            return _kind(value) is not None and (not isinstance(value, float) or math.isfinite(value))

        item = "a string, integer, finite float or boolean"
        problems = _listed_problems("choices", self.choices, is_choice, item)
        if not problems:
            msgspec.structs.force_setattr(self, "choices", tuple(self.choices))
        return problems

    def accepts(self, value: Any) -> bool:
        return any(_kind(value) is _kind(choice) and value == choice for choice in self.choices)

    def expected(self) -> str:
        return f"one of {listing(self.choices)}"

    def sample(self, rng: random.Random) -> Choice:
        return rng.choice(self.choices)

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)


class ModuleVariable(SettableVariable, frozen=True, kw_only=True, tag="module"):
    """Which program to run: one of ``modules``, ``"module:attr"`` strings (checked, never imported here)."""

    modules: tuple[str, ...]
    default: str | None = None

    def _field_problems(self) -> list[FieldProblem]:
        def is_module(value: Any) -> bool:
            return is_import_target(value)

        problems = _listed_problems("modules", self.modules, is_module, MODULE_EXPECTED)
        if not problems:
            msgspec.structs.force_setattr(self, "modules", tuple(self.modules))
        return problems

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.modules

    def expected(self) -> str:
        return f"one of the modules {listing(self.modules)}"

    def sample(self, rng: random.Random) -> str:
        return rng.choice(self.modules)

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.modules)


class BoolVariable(SettableVariable, frozen=True, kw_only=True, tag="bool"):
    """``True`` or ``False`` (not ``0`` or ``1``)."""

    default: bool | None = None

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def expected(self) -> str:
        return "True or False"

    def sample(self, rng: random.Random) -> bool:
        return rng.random() < 0.5

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution((False, True))


class DocumentVariable(SettableVariable, frozen=True, kw_only=True, tag="document"):
    """A JSON value: an object, array, string, number, true, false or null, e.g. a DSPy program's
    saved state (``module.dump_state()``). At most ``max_bytes`` as compact JSON in UTF-8 (at
    most ``MAX_DOCUMENT_BYTES``, 1,032,192: what one write to the registry carries, 1 MiB, less
    the request's envelope, so a document of ``max_bytes`` can be written), objects and
    arrays nested at most ``MAX_DOCUMENT_DEPTH`` (32) deep, object keys strings, numbers finite
    (integers within 64 bits). Never searched by an optimizer: it is set, not tuned.

    >>> state = DocumentVariable(name="state", max_bytes=16)
    >>> state.problem({"demos": ["a long demonstration"]})
    'state: got a document of 34 bytes; expected at most 16 bytes'
    >>> state.problem({"t": float("nan")})
    'state: got a document holding nan (a float) at $.t; expected JSON: finite numbers'
    """

    default: Any = msgspec.field(default_factory=dict)
    max_bytes: int = DOCUMENT_DEFAULT_BYTES
    searchable: ClassVar[bool] = False

    def _field_problems(self) -> list[FieldProblem]:
        if not (_is_int(self.max_bytes) and 1 <= self.max_bytes <= MAX_DOCUMENT_BYTES):
            return [_bad("max_bytes", self.max_bytes, f"an integer in [1, {MAX_DOCUMENT_BYTES}] (bytes of compact "
                                                      "JSON; at most what one write to the registry carries, 1 MiB, "
                                                      "less 16 KiB for the request around the value)")]
        if self.default is not None and (problem := self._problem(self.default)):
            return [("default", problem)]
        return []

    def _problem(self, value: Any) -> str | None:
        """``got ...; expected ...`` for a value that is not an accepted document, else None."""
        if (found := json_problem(value)) is not None:
            what, allowed = found
            if not what:
                return f"got a document nested deeper than {MAX_DOCUMENT_DEPTH} levels; expected {allowed}"
            return f"got a document holding {what}; expected JSON: {allowed}"
        try:
            size = document_bytes(value)
        except UnicodeEncodeError:
            return "got a document holding a string that is not Unicode text (a lone surrogate); expected JSON text"
        if size > self.max_bytes:
            return f"got a document of {size:,} bytes; expected at most {self.max_bytes:,} bytes"
        return None

    def accepts(self, value: Any) -> bool:
        return self._problem(value) is None

    def problem(self, value: Any) -> str | None:
        problem = self._problem(value)
        return None if problem is None else f"{self.name}: {problem}"

    def expected(self) -> str:
        return (f"a JSON document of at most {self.max_bytes:,} bytes ({JSON_ITEMS}; nested at most "
                f"{MAX_DOCUMENT_DEPTH} deep)")

    def normalize(self, value: Any) -> Any:
        """Plain ``dict``/``list``/``str``/``int``/``float`` (what the store gives back after a restart):
        a value holding subclasses (an ``OrderedDict``, an ``IntEnum``) is copied through JSON."""
        return value if is_plain(value) else json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))

    def sample(self, rng: random.Random) -> Any:
        """Not searched: its default (None without one)."""
        return self.default

    def to_optuna(self) -> None:
        return None





@dataclass(frozen=True)
class CompositeVariable:
    """A value computed by ``compute({dependency: value, ...})`` from ``depends_on``; never set directly.

    ``compute`` sees only the variables named in ``depends_on``. It holds a function, so it
    crosses no wire as it is: a topology declares it by the function's import string
    (``type = "composite", compute = "module:function", depends_on = [...]``).
    """

    name: str
    compute: Callable[[dict[str, Any]], Any]
    depends_on: tuple[str, ...]
    description: str = ""
    type: ClassVar[str] = "composite"

    def __post_init__(self) -> None:
        where, problems = key(self.name), []
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            problems.append(f"{where}: got {show(self.name)}; expected a Python identifier")
        if not callable(self.compute):
            problems.append(f"{where}.compute: got {show(self.compute)}; expected a function of the configuration")
        if isinstance(self.depends_on, str) or not all(isinstance(dep, str) for dep in self.depends_on):
            problems.append(f"{where}.depends_on: got {show(self.depends_on)}; expected a list of variable names")
        if problems:
            raise VariableError(problems)
        object.__setattr__(self, "depends_on", tuple(self.depends_on))


WireVariable = FloatVariable | IntegerVariable | ChoiceVariable | ModuleVariable | BoolVariable | DocumentVariable
Variable = WireVariable | CompositeVariable
VARIABLE_TYPES: dict[str, type[SettableVariable]] = {
    "float": FloatVariable,
    "integer": IntegerVariable,
    "choice": ChoiceVariable,
    "module": ModuleVariable,
    "bool": BoolVariable,
    "document": DocumentVariable,
}


# The topology form: `name = { type = "...", ... }` in a [variables.SCOPE] table.

COMPOSITE_KEYS = {"compute": True, "depends_on": True, "description": False}  # key -> required


def import_callable(target: Any, where: str) -> Callable[..., Any]:
    """The function a ``"module:attr"`` string names, imported in this process, or VariableError
    naming ``where`` (a composite's ``compute``, a constraint's ``check``: the registry and the
    optimizer call it). Importing runs user code: whatever it raises is a declaration problem.
    (Programs are imported by ``otpy.agent.program``, a layer above this one.)"""
    if not is_import_target(target):
        raise VariableError([f"{where}: got {show(target)}; expected a 'module:function' import string, "
                             "e.g. 'examples.tabular.rules:ratio'"])
    module_name, _, attr = target.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except Exception as error:  # noqa: BLE001 - an import runs user code
        raise VariableError([f"{where}: cannot import {target!r}: {type(error).__name__}: {error}"]) from None
    if not callable(found):
        raise VariableError([f"{where}: {target!r} is {show(found)}; expected a function"])
    return found


def function_target(function: Callable[..., Any]) -> str:
    """``"module:qualname"`` of ``function``: the import string a topology names it by."""
    module = getattr(function, "__module__", None) or "?"
    return f"{module}:{getattr(function, '__qualname__', type(function).__qualname__)}"


def variable_table(variable: Variable) -> dict[str, Any]:
    """``variable`` in the topology's table form (``variable_from_table`` reads it back): the
    type and its fields, ``None`` fields and an empty description left out. A composite's
    ``compute`` is its function's ``module:qualname``."""
    if isinstance(variable, CompositeVariable):
        table: dict[str, Any] = {"type": "composite", "compute": function_target(variable.compute),
                                 "depends_on": list(variable.depends_on), "description": variable.description}
    else:
        table = {name: value for name, value in msgspec.to_builtins(variable).items() if name != "name"}
    return {name: value for name, value in table.items()
            if value is not None and not (name == "description" and value == "")}


def _table_problems(path: str, table: Any) -> list[str]:
    """What keeps a table from becoming a variable: not a table, a bad type, unknown or missing keys."""
    if not isinstance(table, Mapping):
        example = '{ type = "float", low = 0.0, high = 1.0 }'
        return [f"{path}: got {show(table)}; expected a table such as {example}"]
    kind = table.get("type")
    if kind == "composite":
        required = COMPOSITE_KEYS
    elif kind in VARIABLE_TYPES:
        required = {f.name: f.required for f in msgspec.structs.fields(VARIABLE_TYPES[kind]) if f.name != "name"}
    else:
        found = "missing" if "type" not in table else f"got {show(kind)}"
        return [f"{path}.type: {found}; expected one of {listing([*VARIABLE_TYPES, 'composite'])}"]
    accepted = listing(["type", *sorted(required)])
    problems = [f"{path}.{key(name)}: unknown key {name!r}; accepted keys: {accepted}"
                for name in table if name != "type" and name not in required]
    problems += [f"{path}.{name}: missing; this key is required"
                 for name, needed in required.items() if needed and name not in table]
    return problems


def variable_from_table(name: str, table: Mapping[str, Any], *, scope: str | None = None) -> Variable:
    """The variable a topology table declares. Problems name ``variables.SCOPE.NAME.FIELD``.

    A ``composite`` names its function, ``compute = "module:function"``, imported here (a
    target that does not import is a problem naming ``...NAME.compute``). Without ``scope``,
    problems start at ``NAME``.
    """
    prefix = f"variables.{key(scope)}." if scope is not None else ""
    problems = _table_problems(prefix + key(name), table)
    if problems:
        raise VariableError(problems)
    fields = {field: value for field, value in table.items() if field != "type"}
    try:
        if table["type"] == "composite":
            compute = import_callable(fields.pop("compute"), f"{key(name)}.compute")
            return CompositeVariable(name=name, compute=compute, **fields)
        return VARIABLE_TYPES[table["type"]](name=name, **fields)
    except VariableError as error:
        raise VariableError(prefix + problem for problem in error.problems) from None
