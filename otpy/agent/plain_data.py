"""Outputs as plain data: what a ``dspy.Module`` returns (a ``Prediction`` may hold any Python
object) made into values every caller can read and ``otpy call`` can print as JSON.

One rule, used by ``otpy.dspy.ModuleAgent`` and by ``ObjectProgram`` (a raw module or any
object with ``forward``): strings, booleans, None, finite floats and integers the wire carries
(64 bits) stay as they are, and so do ``bytes`` (the wire carries them, as for any program);
mappings and lists (tuples too) are made item by item, a key that is no string becoming
``str(key)``; a pydantic model is dumped (``model_dump(mode="json")``); anything else, a
non-finite float (``"nan"``, ``"inf"``, ``"-inf"``), a bigger integer, a set, an object, or a
container nested deeper than the wire lets a reply nest, becomes its ``str()``.

>>> plain_outputs({"score": float("nan"), "pairs": {(1, 2): 10**30}, 3: {"a", "a"}})
{'score': 'nan', 'pairs': {'(1, 2)': '1000000000000000000000000000000'}, '3': "{'a'}"}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# containers in one output: the wire's MAX_DEPTH (100, ``wire.codec``; not imported: that costs
# a program's import zmq) less the reply and its outputs mapping
MAX_DEPTH = 98
INT_RANGE = (-(2**63), 2**64 - 1)  # msgpack's integers


def plain_outputs(outputs: Mapping[Any, Any]) -> dict[str, Any]:
    """``outputs`` as a dict of plain data (see the module's docstring)."""
    return {_key(key): plain(value) for key, value in outputs.items()}


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain data; ``depth``: the containers it is in (within one output)."""
    if value is None or isinstance(value, (str, bool, bytes)):
        return value
    if isinstance(value, int):
        return value if INT_RANGE[0] <= value <= INT_RANGE[1] else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return _text(value)
    if isinstance(value, Mapping):
        return {_key(key): plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item, depth + 1) for item in value]
    if callable(dump := getattr(value, "model_dump", None)):
        try:
            return plain(dump(mode="json"), depth)
        except Exception:
            pass
    return _text(value)


def _key(key: Any) -> str:
    return key if isinstance(key, str) else _text(key)


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception as exc:  # a user's __str__ that raises: the output still goes out, saying so
        return f"<a {type(value).__name__} whose str() raised {type(exc).__name__}>"
