"""The values ``otpy vars set`` is given, as text, turned into the values it writes.

``VALUE`` is parsed as JSON, else taken as a plain string (``examples.digits.agents:SVM``). A
document variable (``type = "document"``) takes JSON text only (text that is not JSON is
refused whatever it starts with, never stored as a string: a string document is given as JSON,
``'"text"'``) or ``@FILE``: a JSON file, read by the one safe reader
(``topology.files.read_bounded_file``: a regular file of at most the variable's ``max_bytes``;
a FIFO, a folder or ``/dev/zero`` is refused at once). Which variables are documents is asked
of the registry only when it matters (a value starting with ``@``, or text that is not JSON).

Every value is then checked as the wire and the registry will take it (``value_problem``: JSON
values, integers within 64 bits, no lone surrogate, nested at most 32 deep; no variable of any
type takes more), so that what cannot be sent is one line naming the variable, never a
traceback: a lone surrogate (an argv byte that is not UTF-8), ``1 << 64``, ``[[[...]]]`` 5,000
deep.

>>> assignment("program_state=@state.json")
('program_state', '@state.json')
>>> assignment("examples.digits.agents:SVM") is None
True
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from ..topology.files import read_bounded_file
from ..variables.json_values import too_deep, value_problem
from ..variables.types import DOCUMENT_DEFAULT_BYTES
from ..wire.protocol import ENCODER, SetVariables
from ..wire.registry_protocol import MAX_WRITE_BYTES

__all__ = ["assignment", "parse", "too_big"]

_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)


def assignment(text: str) -> tuple[str, str] | None:
    """``(NAME, VALUE)`` of ``NAME=VALUE`` (NAME a Python identifier), else None."""
    match = _ASSIGNMENT.fullmatch(text)
    return (match[1], match[2]) if match else None


def parse(texts: Mapping[str, str], declared: Callable[[], Mapping[str, Mapping[str, Any]]],
          fail: Callable[[str], NoReturn]) -> dict[str, Any]:
    """``{name: value}`` from ``{name: VALUE text}``; ``declared()`` gives the scope's variable
    tables (asked once, only if needed); ``fail(message)`` for a file or text a document refuses
    (the message starts with the variable's name)."""
    tables: list[Mapping[str, Mapping[str, Any]]] = []

    def table_of(name: str) -> Mapping[str, Any]:
        if not tables:
            tables.append(declared())
        return tables[0].get(name, {})

    values = {}
    for name, text in texts.items():
        values[name] = value = _value(name, text, table_of, fail)
        if problem := value_problem(value, "value"):
            fail(f"{name}: {problem}")
    return values


def _value(name: str, text: str, table_of: Callable[[str], Mapping[str, Any]],
           fail: Callable[[str], NoReturn]) -> Any:
    if text.startswith("@"):
        table = table_of(name)
        if table.get("type") == "document":
            return _read_document(name, text[1:], table.get("max_bytes", DOCUMENT_DEFAULT_BYTES), fail)
        return text  # @ means a file for a document only: elsewhere it is the text it is
    try:
        return json.loads(text)
    except RecursionError:
        fail(f"{name}: {too_deep('value')}")
    except ValueError as exc:
        if table_of(name).get("type") == "document":
            fail(f"{name}: the value is not JSON: {exc}; give JSON text (a string in quotes: '\"text\"') or @FILE")
        return text


def _read_document(name: str, path: str, max_bytes: int, fail: Callable[[str], NoReturn]) -> Any:
    """The JSON value in the file ``path``, or ``fail`` naming the variable and the file."""
    try:
        data = read_bounded_file(path, max_bytes, allowed=f"the variable's max_bytes ({max_bytes:,})",
                                 hint="give a JSON file (compact JSON counts fewest bytes)")
    except ValueError as exc:  # its message names the file and says why
        fail(f"{name}: {exc}")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        fail(f"{name}: {path}: the file is not UTF-8 text ({exc.reason} at byte {exc.start}); expected JSON")
    except RecursionError:
        fail(f"{name}: {path}: {too_deep('document')}")
    except ValueError as exc:
        fail(f"{name}: {path}: the file is not JSON ({exc})")


def too_big(scope: str, values: dict[str, Any], dry_run: bool) -> str | None:
    """Why the write cannot travel to the node in one message (over ``MAX_WRITE_BYTES``), else
    None: said at once, where the node would drop the message and the command wait its timeout."""
    try:
        size = len(ENCODER.encode(SetVariables(0, scope, values, dry_run)))
    except (TypeError, ValueError, OverflowError):
        return None  # not carried at all: the write's own refusal says why
    if size <= MAX_WRITE_BYTES:
        return None
    return (f"the write is {size:,} bytes on the wire, over the {MAX_WRITE_BYTES:,} bytes a message to the node "
            "carries (a document of many floats weighs more as msgpack than as JSON: 9 bytes a float)")
