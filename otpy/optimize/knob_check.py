"""Before a search: which program children would be restarted by every trial's knobs.

A knob is a variable a program reads in its configuration (a variable of a scope in its chain:
its id, its supervisors', ``global``) that binds no field of the tree. When a knob changes, a
program with ``on_config(self, config)`` gets the new values live; one without it exits (75)
and its supervisor restarts it, so every trial restarts it and a few trials in a row can make
its supervisor give up (its intensity). ``programs_without_on_config`` finds them, so that
``otpy optimize`` can say so once, before the search, instead of after a failed one.

The programs are imported here, in this process (``otpy optimize`` already imports the
[optimizer]'s dataset and metric from the same folders); one that does not import is skipped:
the node's own start says why.
"""

from __future__ import annotations

import re
from typing import Iterator, Mapping, NamedTuple

from ..specs.bindings import variables_of
from ..specs.model import Bound, ChildSpec, places
from ..variables.placement import REGISTRY_ID


class Restarted(NamedTuple):
    """A program without ``on_config`` and the knobs a search changes under it."""

    child: str  # the child's id (a template's name for a dynamic supervisor's template)
    program: str
    knobs: tuple[str, ...]  # SCOPE.NAME

    def warning(self) -> str:
        knobs = ", ".join(self.knobs)
        return (f"program {self.program} (child {self.child!r}) has no on_config: each trial's knob change "
                f"({knobs}) restarts it (exit 75), and a few in a row can make its supervisor give up; "
                "define on_config(self, config) to apply knobs live")


def programs_without_on_config(root, spaces: Mapping) -> list[Restarted]:
    """The program children of the tree ``root`` (templates included) that a search over
    ``spaces`` would restart at each trial: knobs in their chain, and no ``on_config``."""
    bound = variables_of(root)
    bound_names = {variable.rpartition(".")[2] for variable in bound}  # as the worker tells them apart
    found, seen = [], set()
    for child, chain, spec in _program_children(root):
        knobs = tuple(f"{scope}.{name}" for scope, space in spaces.items() if _in_chain(scope, child, chain)
                      for name, variable in space.settable.items()
                      if name not in bound_names and _varies(variable))
        if not knobs:
            continue
        for program in _programs(spec.program, spaces):
            if (child, program) not in seen and not _has_on_config(program):
                seen.add((child, program))
                found.append(Restarted(child, program, knobs))
    return found


def _program_children(root) -> Iterator[tuple[str, list[str], ChildSpec]]:
    """``(id, supervisors above it nearest first, spec)`` of every program child but the registry."""
    parent_of: dict[str, str] = {}
    for place in places(root):
        if place.parent is not None and place.template is None:
            parent_of[place.spec.id] = place.parent.id
    for place in places(root):
        spec = place.spec
        if not isinstance(spec, ChildSpec) or spec.program is None or spec.id == REGISTRY_ID:
            continue
        above = place.parent.id if place.parent is not None else None
        chain = []
        while above is not None and above not in chain:
            chain.append(above)
            above = parent_of.get(above)
        yield (place.template or spec.id), chain, spec


def _in_chain(scope: str, child: str, chain: list[str]) -> bool:
    """A template's replicas are ``NAME-1``, ``NAME-2``...: their scopes count as the template's."""
    return scope == "global" or scope == child or scope in chain or bool(re.fullmatch(re.escape(child) + r"-\d+", scope))


def _varies(variable) -> bool:
    """Whether a search can give the variable more than one value (a document: never searched)."""
    if not getattr(variable, "searchable", True):
        return False
    choices = getattr(variable, "choices", None) or getattr(variable, "modules", None)
    if choices is not None:
        return len(choices) > 1
    low, high = getattr(variable, "low", None), getattr(variable, "high", None)
    return low is None or high is None or low != high


def _programs(program, spaces: Mapping) -> list[str]:
    """The programs a child may run: its own, or every module its bound variable allows."""
    if not isinstance(program, Bound):
        return [program]
    scope, _, name = program.variable.rpartition(".")
    variable = spaces.get(scope).variables.get(name) if scope in spaces else None
    return list(getattr(variable, "modules", ()) or ())


def _has_on_config(target: str) -> bool:
    """Whether the program ``target`` defines ``on_config`` (True when it cannot be imported:
    not this check's problem)."""
    from ..agent.program import import_target

    try:
        obj = import_target(target)
    except Exception:
        return True
    return callable(getattr(obj, "on_config", None))
