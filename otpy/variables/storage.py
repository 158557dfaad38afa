"""Where the registry keeps its values: the node's SQLite file, or a PostgreSQL database shared by nodes.

The registry picks by the value of ``[registry] storage``: none (or a path) is the
node's own SQLite file (``otpy.variables.store``), a ``postgresql://`` URL a database several
nodes share (``otpy.variables.postgres``; psycopg is imported only then). Both give the
registry the same few operations:

- ``load(scopes)``: the version counter, the value rows (on a shared database only those of
  ``scopes`` and of the spaces registered at run time: another party's rows are never read) and
  the rows of spaces registered at run time;
- ``transaction()``: one write, committed when the block ends (rolled back if it raises). Inside
  it, ``newer(known, scopes)`` gives the rows other writers committed since version ``known`` (the
  shared database serializes its writers there: the write then checks its compare-and-set
  against the database's truth); ``put_values`` and ``put_spaces`` write;
- ``check_available()``: raises ``StorageUnavailable`` while a shared database is unreachable
  (a write is refused at once, not made to wait); ``catch_up(known, scopes)``: rows newer than ``known``.

A storage that cannot be written raises ``StorageUnavailable`` (the database is unreachable: the
write refused, ``unavailable``) or ``RegistryFileError`` (the file is broken).
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any, Iterator, Protocol

from .store import RegistryFileError, open_database

Row = tuple[Any, Any, Any, Any]  # (scope, name, value as JSON text, version) as stored, unchecked


class StorageUnavailable(Exception):
    """The shared database cannot be reached: nothing was written (``unknown``: the connection
    broke while committing, so whether the write was stored is not known)."""

    def __init__(self, message: str, unknown: bool = False):
        self.unknown = unknown
        super().__init__(message)


class Transaction(Protocol):
    def newer(self, known: int, scopes: list[str]) -> tuple[int, list[Row]]: ...
    def put_values(self, rows: list[tuple[str, str, str, int]], version: int) -> None: ...
    def put_spaces(self, rows: list[tuple[str, str, str]]) -> None: ...


class Storage(Protocol):
    where: str  # for messages: a path, or a URL with its password masked
    shared: bool  # other registries write there too

    def load(self, scopes: list[str]) -> tuple[Any, list[Row], list[tuple[Any, Any, Any]]]: ...
    def transaction(self) -> contextlib.AbstractContextManager[Transaction]: ...
    def check_available(self) -> None: ...
    def catch_up(self, known: int, scopes: list[str]) -> tuple[int, list[Row]]: ...
    def close(self) -> None: ...


def is_postgresql(storage: str | None) -> bool:
    return bool(storage) and storage.split(":", 1)[0] in ("postgresql", "postgres")


class SqliteStorage:
    """The node's own file: this registry is its only writer (the node's run lock)."""

    shared = False

    def __init__(self, path: str):
        self.where = self.path = path
        self.db = open_database(path)

    def load(self, scopes: list[str]):
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            return (row[0] if row else 0, self.db.execute("SELECT * FROM value").fetchall(),
                    self.db.execute("SELECT * FROM space").fetchall())
        except sqlite3.Error as exc:
            raise RegistryFileError(f"registry database {self.path}: cannot read it: {exc}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator["SqliteStorage"]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            yield self
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise RegistryFileError(f"registry database {self.path}: cannot write: {exc}") from exc
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def newer(self, known: int, scopes: list[str]) -> tuple[int, list[Row]]:
        return known, []  # nobody else writes this file

    def put_values(self, rows: list[tuple[str, str, str, int]], version: int) -> None:
        self.db.executemany("INSERT OR REPLACE INTO value VALUES (?, ?, ?, ?)", rows)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (version,))

    def put_spaces(self, rows: list[tuple[str, str, str]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO space VALUES (?, ?, ?)", rows)

    def check_available(self) -> None:
        return None

    def catch_up(self, known: int, scopes: list[str]) -> tuple[int, list[Row]]:
        return known, []

    def close(self) -> None:
        self.db.close()
