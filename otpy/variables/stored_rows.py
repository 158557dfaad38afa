"""Rows as a storage gives them, read one by one: a value's JSON text and its version checked.

The node's own SQLite file has one writer, the node: a row it cannot read means a broken file,
refused whole rather than read in part (``RegistryFileError`` naming the file and the row). A
shared database has many writers, and anyone with its password: there a row that cannot be read
is skipped, with one line on the registry's stderr (at most ``SKIP_LINES``, then their count),
and the node goes on: another party's row never stops a node.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .store import RegistryFileError

SKIP_LINES = 5


def parse_json(text: object) -> Any:
    """A stored JSON text, or ValueError saying what it is."""
    try:
        if isinstance(text, (str, bytes)):
            return json.loads(text)
        raise ValueError(f"a {type(text).__name__}")
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"got {text!r:.60} ({exc}); expected JSON") from None


def parse_version(value: object) -> int:
    """A stored version: an integer >= 0, or ValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"got {value!r:.60}; expected an integer >= 0")


def bad_row(path: str, where: str, why: str) -> RegistryFileError:
    """The refusal of the row ``where`` of the storage at ``path`` (its ``where`` and ``why`` kept)."""
    error = RegistryFileError(f"registry database {path}: {where}: {why}; the file holds acknowledged values, "
                              "so it is refused rather than read in part. Repair or remove it")
    error.where, error.why = where, why
    return error


def value_rows(rows: list, path: str) -> tuple[list[tuple[str, str, Any, int]], list[RegistryFileError]]:
    """The value rows read (value parsed, version checked), and one refusal per row that is not."""
    parsed, bad = [], []
    for scope, name, value, version in rows:
        where = f"value row ({scope!r:.60}, {name!r:.60})"
        try:
            read = parse_json(value)
        except ValueError as why:
            bad.append(bad_row(path, where, str(why)))
            continue
        try:
            parsed.append((scope, name, read, parse_version(version)))
        except ValueError as why:
            bad.append(bad_row(path, where + " version", str(why)))
    return parsed, bad


def skip_or_refuse(bad: list[RegistryFileError], shared: bool, say: Callable[[str], None]) -> None:
    """The node's own file: raise the first refusal. A shared database: one line per row skipped."""
    if not bad:
        return
    if not shared:
        raise bad[0]
    for error in bad[:SKIP_LINES]:
        say(f"otpy: registry: skipping stored {error.where}: {error.why} (a row this node cannot read; left as it is)")
    if len(bad) > SKIP_LINES:
        say(f"otpy: registry: skipping {len(bad) - SKIP_LINES} more rows this node cannot read")
