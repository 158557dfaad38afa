"""JSON values as a ``document`` variable takes them (``otpy.variables.types.DocumentVariable``).

A document is JSON as every layer carries it: the registry stores it as JSON text in SQLite,
the wire as msgpack. So: objects with string keys, arrays, strings, finite numbers (integers
within 64 bits: msgpack's), true, false, null; nested at most ``MAX_DOCUMENT_DEPTH`` deep; its
size is its compact JSON in UTF-8 (``document_bytes``).

>>> json_problem({"demos": [{"score": float("nan")}]})
('nan (a float) at $.demos[0].score', 'finite numbers')
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["DOCUMENT_DEFAULT_BYTES", "JSON_ITEMS", "MAX_DOCUMENT_DEPTH", "document_bytes", "is_plain", "json_problem",
           "too_deep", "value_problem"]

DOCUMENT_DEFAULT_BYTES = 256 * 1024  # a DSPy program's state (instructions, a few demos) is a few KiB to tens
MAX_DOCUMENT_DEPTH = 32  # objects and arrays open at once: far above any real state, far below the wire's limit
_INT64_LOW, _UINT64_HIGH = -(1 << 63), (1 << 64) - 1  # what msgpack carries: the registry's wire
_JSON_TYPES = (str, int, float, bool, type(None), dict, list)


def document_bytes(value: Any) -> int:
    """The size of a JSON value as a document counts it: its compact JSON (no spaces), UTF-8."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode())


def _path(parts: list) -> str:
    """``$.demos[0]["a b"]``: where in a document a part is (``parts`` from the inside out)."""
    text = "$"
    for part in reversed(parts):
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if part.isidentifier() else f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def _what(value: Any) -> str:
    kind = type(value).__name__
    article = "an" if kind[:1] in "aeiou" else "a"
    return f"{_show(value)} ({article} {kind})"


def _json_problem(value: Any, depth: int) -> tuple[list, str, str] | None:
    """``(path parts from the inside out, what was found, what JSON allows)`` for the first part of
    ``value`` that is not JSON, or that nests deeper than ``MAX_DOCUMENT_DEPTH``; None: all JSON."""
    kind = type(value)
    if kind is str or kind is bool or value is None or isinstance(value, (str, bool)):
        return None
    if isinstance(value, int):
        fits = _INT64_LOW <= value <= _UINT64_HIGH
        return None if fits else ([], _what(value), "integers within 64 bits")
    if isinstance(value, float):
        return None if math.isfinite(value) else ([], _what(value), "finite numbers")
    if not isinstance(value, (dict, list)):
        return [], _what(value), JSON_ITEMS
    if depth >= MAX_DOCUMENT_DEPTH:
        return [], "", f"objects and arrays nested at most {MAX_DOCUMENT_DEPTH} deep"
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                return [], f"the key {_what(name)}", "object keys that are strings"
            if (found := _json_problem(item, depth + 1)) is not None:
                found[0].append(name)
                return found
    else:
        for index, item in enumerate(value):
            if (found := _json_problem(item, depth + 1)) is not None:
                found[0].append(index)
                return found
    return None


JSON_ITEMS = "objects with string keys, arrays, strings, finite numbers, true, false, null"


def _show(value: Any) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_problem(value: Any) -> tuple[str, str] | None:
    """``(what was found and where, what JSON allows there)`` for the first part of ``value`` that
    is not JSON (``what`` is "" when it nests too deep); None when it is all JSON."""
    if (found := _json_problem(value, 0)) is None:
        return None
    parts, what, allowed = found
    return (f"{what} at {_path(parts)}" if what else "", allowed)


def value_problem(value: Any, noun: str = "document") -> str | None:
    """``got ...; expected ...`` for a value that is not JSON as a document takes it (a part that
    is not JSON, nested deeper than ``MAX_DOCUMENT_DEPTH``, a lone surrogate in a string), else
    None. Its size is not checked. ``noun`` names what was given (``a document``, ``a value``).

    >>> value_problem([[1 << 64]], "value")
    'got a value holding 18446744073709551616 (an int) at $[0][0]; expected JSON: integers within 64 bits'
    """
    if (found := json_problem(value)) is not None:
        what, allowed = found
        if not what:
            return too_deep(noun)
        return f"got a {noun} holding {what}; expected JSON: {allowed}"
    try:
        document_bytes(value)
    except UnicodeEncodeError:
        return f"got a {noun} holding a string that is not Unicode text (a lone surrogate); expected JSON text"
    return None


def too_deep(noun: str = "document") -> str:
    """The refusal of a value nested deeper than ``MAX_DOCUMENT_DEPTH``, ``got ...; expected ...``."""
    return (f"got a {noun} nested deeper than {MAX_DOCUMENT_DEPTH} levels; expected objects and arrays nested "
            f"at most {MAX_DOCUMENT_DEPTH} deep")


def is_plain(value: Any) -> bool:
    """Whether ``value`` is made of exactly ``dict``, ``list`` and JSON scalars (no subclasses)."""
    kind = type(value)
    if kind is dict:
        return all(type(name) is str and is_plain(item) for name, item in value.items())
    if kind is list:
        return all(is_plain(item) for item in value)
    return kind in _JSON_TYPES
