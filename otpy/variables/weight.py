"""What the registry's variables weigh together: at most ``MAX_TOTAL_BYTES`` (8 MiB).

Every reply that carries values must fit the 16 MiB a reply may weigh (``codec.MAX_CALL_BYTES``):
``list`` carries every variable's value, ``get_space`` every declaration (a default included),
a child's ``resolve`` the values of its scope chain. Each document is at most 1 MiB, but
nothing bounded how many there are, so twenty of them made ``otpy vars list`` and every child's
start fail for good. Now each variable weighs what the replies carry for it: its declaration
(its table, the default included) and its value when set, each as msgpack (the wire's
encoding), its scope and name, and ``ENTRY_BYTES`` for the fields around them (a ``list``
entry's keys, version and reason: 65 bytes at most). The registry refuses a write, or a
declaration at run time, that would make the total exceed ``MAX_TOTAL_BYTES``; a topology
whose declarations alone exceed it is refused when it is read. A composite's computed value is
not counted: its function computes whatever it computes.

>>> from otpy.variables.types import FloatVariable
>>> declaration_weight("global", FloatVariable(name="t", low=0.0, high=2.0, default=0.5))
150
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..wire.protocol import ENCODER
from ..wire.registry_protocol import MAX_TOTAL_BYTES
from .types import Variable, variable_table

__all__ = ["ENTRY_BYTES", "MAX_TOTAL_BYTES", "declaration_weight", "declared_weight", "value_bytes"]

ENTRY_BYTES = 80  # a ``list`` entry's keys and fields besides the value and the names (65 at most)


def value_bytes(value: Any) -> int:
    """``value``'s size as msgpack (what the wire carries); 0 for what msgpack cannot carry (the
    write that holds it is refused for that itself)."""
    try:
        return len(ENCODER.encode(value))
    except Exception:  # noqa: BLE001 - any value: refused elsewhere, naming why
        return 0


def declaration_weight(scope: str, variable: Variable) -> int:
    """What a declared variable weighs before it is set: its names, its entry's fields, its table."""
    return value_bytes(scope) + value_bytes(variable.name) + ENTRY_BYTES + value_bytes(variable_table(variable))


def declared_weight(spaces: Mapping[str, Any]) -> int:
    """The weight of every variable of ``spaces`` (``{scope: VariableSpace}``), none of them set."""
    return sum(declaration_weight(scope, variable) for scope, space in spaces.items()
               for variable in space.variables.values())
