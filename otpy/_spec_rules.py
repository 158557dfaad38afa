"""What a spec must satisfy before anything starts, whoever built it (OTP's ``check_childspecs``).

A topology file is checked by ``_config`` with the file's key paths in its messages; specs
built in Python (``Node.from_spec``, ``start_child``, ``reconfigure``) or sent over the control
socket come here. ``spec_problems`` returns one message per problem, each naming the child id
and the field; an empty list means the spec may start.

>>> from otpy._specs import ChildSpec, SupervisorSpec
>>> spec_problems(SupervisorSpec(id="team", children=(ChildSpec(id="a", command=("true",)),
...                                                   ChildSpec(id="a", program="m:f"))))
["child 'a': id used twice in this spec (OTP's duplicate_child_name); expected ids unique in the node"]
"""

from __future__ import annotations

import math
import re

import msgspec

from ._specs import (
    NAME_EXPECTED, NAME_PATTERN, AnySpec, ChildSpec, DynamicSupervisorSpec, NodeSpec, SupervisorSpec,
)

Parent = SupervisorSpec | DynamicSupervisorSpec


def spec_problems(spec: AnySpec, parent: Parent | None = None) -> list[str]:
    """Every problem of ``spec`` and the specs below it; ``parent``: the supervisor it goes under."""
    problems: list[str] = []
    seen: set[str] = set()
    for under, sub in _walk(spec, parent):
        if not sub.id:
            problems.append(f"{_name(sub)}: empty id; expected a name")
        elif sub.id in seen:
            problems.append(f"{_name(sub)}: id used twice in this spec (OTP's duplicate_child_name); "
                            "expected ids unique in the node")
        seen.add(sub.id)
        problems += _own_problems(sub, under)
    return problems


def node_problems(spec: NodeSpec) -> list[str]:
    """``spec_problems`` of the root, and the node's name (it names a folder: no '/' or '..')."""
    problems = [] if re.fullmatch(NAME_PATTERN, spec.name) and spec.name not in (".", "..") else [
        f"node name {spec.name!r}; expected {NAME_EXPECTED}"]
    return problems + spec_problems(spec.root)


def _walk(spec: AnySpec, parent: Parent | None):
    """``(parent, spec)`` for ``spec`` and everything below it, templates included."""
    yield parent, spec
    if isinstance(spec, SupervisorSpec):
        for child in spec.children:
            yield from _walk(child, spec)
    elif isinstance(spec, DynamicSupervisorSpec):
        for name, template in spec.templates.items():
            yield spec, _as_template(template, spec, name)


def _as_template(template: ChildSpec, owner: DynamicSupervisorSpec, name: str) -> ChildSpec:
    """A template under a name for the messages: its own id is unused (start_child gives one)."""
    return msgspec.structs.replace(template, id=f"{owner.id}.templates.{name}")


def _own_problems(spec: AnySpec, parent: Parent | None) -> list[str]:
    problems = [f"{_name(spec)}: {p}" for p in _field_problems(spec)]
    if spec.significant:
        if spec.restart == "permanent":
            problems.append(f"{_name(spec)}: significant with restart 'permanent'; expected transient or "
                            "temporary (OTP's bad_combination)")
        elif isinstance(parent, DynamicSupervisorSpec):
            problems.append(f"{_name(spec)}: significant under dynamic supervisor {parent.id!r}; "
                            "expected false (dynamic supervisors never auto-shut down)")
        elif isinstance(parent, SupervisorSpec) and parent.auto_shutdown == "never":
            problems.append(f"{_name(spec)}: significant under {parent.id!r}, whose auto_shutdown is 'never'; "
                            "expected false")
    return problems


def _field_problems(spec: AnySpec) -> list[str]:
    problems = []
    if isinstance(spec.shutdown, (int, float)) and not (math.isfinite(spec.shutdown) and spec.shutdown >= 0):
        problems.append(f"shutdown {spec.shutdown!r}; expected seconds >= 0, 'brutal_kill' or 'infinity'")
    if isinstance(spec, ChildSpec):
        if (spec.program is None) == (spec.command is None):
            problems.append("expected exactly one of program and command")
        elif spec.command is not None and (not spec.command or not spec.command[0]):
            problems.append("command is empty; expected the program to run first")
        elif spec.program is not None and spec.ready == "notify":
            problems.append("ready 'notify' with a program; expected 'exec' ('notify' is for commands)")
        if not (math.isfinite(spec.start_timeout) and spec.start_timeout > 0):
            problems.append(f"start_timeout {spec.start_timeout!r}; expected seconds > 0")
        if spec.max_rss is not None and not spec.max_rss > 0:
            problems.append(f"max_rss {spec.max_rss!r}; expected MiB > 0")
        return problems
    if spec.max_restarts < 0:
        problems.append(f"max_restarts {spec.max_restarts}; expected >= 0")
    if spec.max_seconds <= 0:
        problems.append(f"max_seconds {spec.max_seconds}; expected > 0")
    if isinstance(spec, DynamicSupervisorSpec) and spec.max_children is not None and spec.max_children < 0:
        problems.append(f"max_children {spec.max_children}; expected >= 0")
    return problems


def _name(spec: AnySpec) -> str:
    return f"{spec.kind.replace('_', ' ')} {spec.id!r}" if spec.kind != "worker" else f"child {spec.id!r}"
