"""The registry's SQLite file: otpy's own regular file in the node's folder, or refused by name.

A write is acknowledged only after its transaction committed, so the file holds acknowledged
values: a file that is not otpy's, is empty, is a symlink (SQLite would follow it out of the
node's folder), or holds rows that cannot be read is refused with ``RegistryFileError`` naming
the path (and the row), never served in part or replaced by defaults.
"""

from __future__ import annotations

import os
import sqlite3
import stat

SCHEMA = """
CREATE TABLE IF NOT EXISTS value (scope TEXT, name TEXT, value TEXT NOT NULL, version INTEGER NOT NULL,
                                  PRIMARY KEY (scope, name));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS space (scope TEXT, name TEXT, definition TEXT NOT NULL, PRIMARY KEY (scope, name));
"""


DB_MODE = 0o600  # the database and its -wal/-shm: values may be secrets; whatever the umask
# otpy's tables and their columns: an existing file without them is not otpy's registry.
TABLES = {"value": ("scope", "name", "value", "version"), "meta": ("key", "value"),
          "space": ("scope", "name", "definition")}
REQUIRED_TABLES = ("value", "meta")  # 'space' came later: an older registry gains it


class RegistryFileError(RuntimeError):
    """The registry's database file cannot be used. The message names the file.

    Raised in ``setup``, it is the child's ``FAILED`` line: the registry does not start, and the
    node says why, rather than serving defaults over a file that held acknowledged values."""


def open_database(path: str) -> sqlite3.Connection:
    """The registry's database at ``path``, in WAL mode with otpy's tables, mode 0600.

    A new database is made only where no file is: a 0-byte, foreign or unreadable file is
    refused (RegistryFileError naming it), since SQLite would take a 0-byte file as a new empty
    database and the registry would start with defaults, the acknowledged values lost."""
    if not os.path.lexists(path):
        _create(path)
    _check_own_files(path)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        _check_same_file(db, path)
        _check_tables(db, path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
    except sqlite3.Error as exc:
        raise RegistryFileError(f"registry database {path}: {exc}; expected otpy's registry (SQLite)") from None
    _make_private(path)
    return db


def _check_own_files(path: str) -> None:
    """RegistryFileError unless ``path`` is a non-empty regular file and its -wal/-shm, where
    present, regular files too: never a symlink (``lstat``), which would make SQLite write the
    values, and create its WAL files, wherever the link points, outside the node's folder."""
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            info = os.lstat(name)
        except FileNotFoundError:
            if name == path:
                raise RegistryFileError(f"registry database {path}: it vanished while opening it") from None
            continue
        except OSError as exc:
            raise RegistryFileError(f"registry database {name}: cannot read it: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            raise RegistryFileError(f"registry database {name} is a symbolic link; expected a regular file "
                                    "in the node's folder (a link is never followed)")
        if not stat.S_ISREG(info.st_mode) or (name == path and info.st_size == 0):
            what = "is empty" if stat.S_ISREG(info.st_mode) else "is not a regular file"
            raise RegistryFileError(f"registry database {name} {what}; expected otpy's registry (SQLite). "
                                    "Remove it to start with no stored values")


def _check_same_file(db: sqlite3.Connection, path: str) -> None:
    """O_NOFOLLOW's effect as far as Python's ``connect`` allows (it passes no open flags):
    once SQLite has opened the file, ``path`` must still be the regular file ``lstat`` saw."""
    db.execute("PRAGMA schema_version").fetchone()  # makes SQLite open the file now
    if stat.S_ISLNK(os.lstat(path).st_mode):
        db.close()
        raise RegistryFileError(f"registry database {path} became a symbolic link while opening it; "
                                "expected a regular file in the node's folder")


def _create(path: str) -> None:
    """A new database with otpy's tables at ``path``, made beside it and renamed into place, so a
    registry killed while making it leaves no file, or a whole one (never an empty one)."""
    fresh = f"{path}.new"
    for leftover in (fresh, f"{fresh}-wal", f"{fresh}-shm"):
        if os.path.lexists(leftover):
            os.unlink(leftover)
    try:
        os.close(os.open(fresh, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, DB_MODE))
        os.chmod(fresh, DB_MODE)
        db = sqlite3.connect(fresh, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        finally:
            db.close()
        os.rename(fresh, path)
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except (OSError, sqlite3.Error) as exc:
        raise RegistryFileError(f"registry database {path}: cannot create it: {exc}") from None


def _check_tables(db: sqlite3.Connection, path: str) -> None:
    """RegistryFileError unless the database holds otpy's tables (reading it also proves it SQLite)."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    found = {name: tuple(column[1] for column in db.execute(f"PRAGMA table_info({name})"))
             for name in TABLES if name in tables}  # only otpy's own names go into the statement
    wrong = [name for name, columns in TABLES.items()
             if (name in REQUIRED_TABLES or name in found) and found.get(name) != columns]
    if wrong:
        raise RegistryFileError(f"registry database {path}: table {wrong[0]!r} has columns "
                                f"{list(found.get(wrong[0], ()))}, expected {list(TABLES[wrong[0]])}: "
                                "this SQLite file is not otpy's registry")


def _make_private(path: str) -> None:
    """Mode 0600 on the database and the WAL files SQLite made beside it."""
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            os.chmod(name, DB_MODE)
        except FileNotFoundError:
            pass
