"""What the registry's variables weigh together: at most ``MAX_TOTAL_BYTES`` (8 MiB).

Every reply that carries values must fit the 16 MiB a reply may weigh (``codec.MAX_CALL_BYTES``):
``list`` carries every variable's value, ``get_space`` every default, a child's ``resolve`` the
values of its chain. Each document is at most 1 MiB, but nothing bounded how many there are, so
twenty of them made ``otpy vars list`` and every child's start fail for good. Now each settable
variable weighs what a reply carries for it: its default, and its value when set (each as
msgpack, the wire's encoding), its scope and name, and ``ENTRY_BYTES`` for the fields around them
(a ``list`` entry's keys, version and reason: 65 bytes at most); the registry refuses a write
(or a declaration at run time) that would make the total exceed ``MAX_TOTAL_BYTES``. A
composite is not counted: its value is whatever its function computes.

>>> weight_of("global", "t", 0.5)
98
"""

from __future__ import annotations

from typing import Any

from ..wire.protocol import ENCODER
from ..wire.registry_protocol import MAX_TOTAL_BYTES

__all__ = ["ENTRY_BYTES", "MAX_TOTAL_BYTES", "declared_weight", "value_bytes", "weight_of"]

ENTRY_BYTES = 80  # a ``list`` entry's keys and fields besides the value and the names (65 at most)


def value_bytes(value: Any) -> int:
    """``value``'s size as msgpack (what the wire carries); 0 for what msgpack cannot carry (the
    write that holds it is refused for that itself)."""
    try:
        return len(ENCODER.encode(value))
    except Exception:  # noqa: BLE001 - any value: refused elsewhere, naming why
        return 0


def weight_of(scope: str, name: str, default: Any) -> int:
    """What a declared variable weighs before it is set: its names, its entry's fields, its default."""
    return value_bytes(scope) + value_bytes(name) + ENTRY_BYTES + value_bytes(default)


def declared_weight(spaces: dict[str, Any]) -> int:
    """The weight of every settable variable of ``spaces`` (``{scope: VariableSpace}``), unset."""
    return sum(weight_of(scope, name, variable.default)
               for scope, space in spaces.items() for name, variable in space.settable.items())
