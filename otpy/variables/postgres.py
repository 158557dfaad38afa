"""The registry's values in a PostgreSQL database that several nodes share (``[registry] storage``).

Three tables, made if absent (a database whose otpy tables have other columns is refused,
naming the table): ``otpy_registry_value`` (scope, name, value as JSON text, version),
``otpy_registry_meta`` (the global version counter, row ``version``) and
``otpy_registry_space`` (spaces registered at run time).

A write (``transaction``) locks the counter's row (``SELECT ... FOR UPDATE``): writers from every
node are serialized there. Inside that transaction the registry folds in the rows other nodes
committed since the version it knows (``newer``), checks its compare-and-set against them, writes
its rows and the counter, and ``NOTIFY otpy_registry`` with the new version; it acknowledges the
write only once COMMIT returned.

A second connection, in its own thread (``listen``), LISTENs on ``otpy_registry``: a version
newer than the registry knows makes it call the registry back, which reads the newer rows
(``catch_up``, under its lock) and publishes them on the node. When that connection breaks, the
database counts as unreachable: writes are refused at once (``StorageUnavailable``), reads go
on from memory, and the thread reconnects with a backoff (``RETRY_FIRST`` doubling up to
``RETRY_MAX`` seconds), then opens a new write connection and catches up. The URL is only ever
shown with its password masked (``specs.values.mask_url``).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import psycopg

from ..specs.values import mask_secret, mask_url
from .storage import Row, StorageUnavailable
from .store import RegistryFileError

CHANNEL = "otpy_registry"
TABLES = {"otpy_registry_value": ("scope", "name", "value", "version"),
          "otpy_registry_meta": ("key", "value"),
          "otpy_registry_space": ("scope", "name", "definition")}
SCHEMA = """
CREATE TABLE IF NOT EXISTS otpy_registry_value (scope TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
                                                version BIGINT NOT NULL, PRIMARY KEY (scope, name));
CREATE INDEX IF NOT EXISTS otpy_registry_value_version ON otpy_registry_value (version);
CREATE TABLE IF NOT EXISTS otpy_registry_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS otpy_registry_space (scope TEXT NOT NULL, name TEXT NOT NULL, definition TEXT NOT NULL,
                                                PRIMARY KEY (scope, name));
INSERT INTO otpy_registry_meta VALUES ('version', 0) ON CONFLICT (key) DO NOTHING;
"""
SCHEMA_LOCK = 0x6F7470790001  # an advisory lock: two nodes making the tables at once wait for each other
START_WAIT = 8.0  # seconds a starting registry tries to reach the database (below a child's start_timeout)
RETRY_FIRST, RETRY_MAX = 0.05, 2.0  # the reconnection's backoff, seconds
LISTEN_WAKE = 1.0  # seconds between the listener's looks at a broken write connection (no busy polling)
LOST = (psycopg.OperationalError, psycopg.InterfaceError)  # the connection, not the statement
CONNECT = {"connect_timeout": 3, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
           "keepalives_count": 2, "tcp_user_timeout": 4000, "application_name": "otpy-registry"}


def address(url: str) -> str:
    """``HOST:PORT`` of ``url`` (5432 when the URL names no port)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"


class PostgresStorage:
    """The registry's values in a shared database; used under the registry's lock."""

    shared = True

    def __init__(self, url: str, lock: threading.Lock):
        self.url, self.where, self.address = url, mask_url(url), address(url)
        self._lock = lock  # the registry's: the write connection is used and replaced under it
        self.conn: psycopg.Connection | None = None
        self.down: str | None = None  # why the database is unreachable, while it is
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, url: str, lock: threading.Lock | None = None, wait: float = START_WAIT) -> "PostgresStorage":
        """Connected, with otpy's tables; the database is tried for ``wait`` seconds, then
        RegistryFileError in one line (the password masked)."""
        storage = cls(url, lock or threading.Lock())
        deadline, delay = time.monotonic() + wait, RETRY_FIRST
        while True:
            try:
                storage.conn = storage._connect()
                break
            except psycopg.Error as exc:
                if time.monotonic() + delay > deadline:
                    raise RegistryFileError(f"registry storage {storage.where}: the database at {storage.address} "
                                            f"is unreachable (tried for {wait:g} s: {storage._reason(exc)}); "
                                            "start it or check [registry] storage") from None
                time.sleep(delay)  # a bounded retry of a connection refused: nothing to wait on
                delay = min(delay * 2, RETRY_MAX)
        storage._make_tables()
        return storage

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, **CONNECT)

    def _reason(self, exc: BaseException) -> str:
        """A psycopg error in one line, without the password (a server may echo a conninfo)."""
        text = " ".join(str(exc).split()).split(" This probably means")[0][:200] or type(exc).__name__
        return mask_secret(text, self.url)

    def _make_tables(self) -> None:
        try:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                found: dict[str, list[str]] = {}
                for table, column in self.conn.execute(
                        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = "
                        "current_schema() AND table_name = ANY(%s) ORDER BY table_name, ordinal_position",
                        (list(TABLES),)):
                    found.setdefault(table, []).append(column)
                for table, columns in found.items():
                    if tuple(columns) != TABLES[table]:
                        raise RegistryFileError(
                            f"registry storage {self.where}: table {table!r} has columns {columns}, expected "
                            f"{list(TABLES[table])}: this database's {table} is not otpy's registry")
                for statement in filter(str.strip, SCHEMA.split(";")):
                    self.conn.execute(statement)
        except psycopg.Error as exc:
            raise RegistryFileError(f"registry storage {self.where}: cannot make otpy's tables: "
                                    f"{self._reason(exc)}") from None

    # --- reading ---------------------------------------------------------------------------

    def load(self) -> tuple[int, list[Row], list[tuple[Any, Any, Any]]]:
        try:
            with self.conn.transaction():
                version = self._version()
                values = self.conn.execute("SELECT scope, name, value, version FROM otpy_registry_value").fetchall()
                spaces = self.conn.execute("SELECT scope, name, definition FROM otpy_registry_space").fetchall()
            return version, values, spaces
        except LOST as exc:
            raise RegistryFileError(f"registry storage {self.where}: the database at {self.address} became "
                                    f"unreachable while reading it: {self._reason(exc)}") from None

    def _version(self, lock: bool = False) -> int:
        row = self.conn.execute("SELECT value FROM otpy_registry_meta WHERE key = 'version'"
                                + (" FOR UPDATE" if lock else "")).fetchone()
        return row[0] if row else 0

    def _rows_after(self, known: int) -> list[Row]:
        return self.conn.execute("SELECT scope, name, value, version FROM otpy_registry_value WHERE version > %s "
                                 "ORDER BY version", (known,)).fetchall()

    def catch_up(self, known: int) -> tuple[int, list[Row]]:
        """The counter and the rows committed after version ``known`` (under the registry's lock)."""
        self.check_available()
        try:
            with self.conn.transaction():
                version = self._version()
                return version, self._rows_after(known) if version > known else []
        except LOST as exc:
            raise self._lost(exc, False) from None

    # --- writing ---------------------------------------------------------------------------

    def check_available(self) -> None:
        if self.down is not None or self.conn is None or self.conn.broken:
            raise StorageUnavailable(self._unreachable(self.down or "its connection is closed", False))

    @contextmanager
    def transaction(self) -> Iterator["PostgresStorage"]:
        """One write: committed when the block ends; StorageUnavailable if the database is lost."""
        self.check_available()
        committing = False
        try:
            with self.conn.transaction():
                yield self
                committing = True
        except LOST as exc:
            raise self._lost(exc, committing) from None
        except psycopg.Error as exc:
            raise RegistryFileError(f"registry storage {self.where}: cannot write: {self._reason(exc)}") from None

    def newer(self, known: int) -> tuple[int, list[Row]]:
        """Inside a write: lock the counter (other writers wait), the rows committed after ``known``."""
        version = self._version(lock=True)
        return version, self._rows_after(known) if version > known else []

    def put_values(self, rows: list[tuple[str, str, str, int]], version: int) -> None:
        with self.conn.cursor() as cursor:
            cursor.executemany("INSERT INTO otpy_registry_value VALUES (%s, %s, %s, %s) ON CONFLICT (scope, name) "
                               "DO UPDATE SET value = EXCLUDED.value, version = EXCLUDED.version", rows)
        self.conn.execute("UPDATE otpy_registry_meta SET value = %s WHERE key = 'version'", (version,))
        self.conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(version)))

    def put_spaces(self, rows: list[tuple[str, str, str]]) -> None:
        self._version(lock=True)  # serialized with the writes
        with self.conn.cursor() as cursor:
            cursor.executemany("INSERT INTO otpy_registry_space VALUES (%s, %s, %s) ON CONFLICT (scope, name) "
                               "DO UPDATE SET definition = EXCLUDED.definition", rows)

    def _lost(self, exc: BaseException, committing: bool) -> StorageUnavailable:
        self.down = self._reason(exc)
        return StorageUnavailable(self._unreachable(self.down, committing), unknown=committing)

    def _unreachable(self, why: str, committing: bool) -> str:
        if committing:
            return (f"the database at {self.address} became unreachable while committing ({why}): whether the write "
                    "was stored is not known; once the database is back, otpy vars get says (the registry "
                    "catches up by itself)")
        return (f"the database at {self.address} is unreachable ({why}): the write was not stored; retry when "
                "it is back (the node runs its children on the last values)")

    # --- change events from the other nodes -------------------------------------------------

    def listen(self, newer: Callable[[], None], known: Callable[[], int],
               say: Callable[[str], None]) -> None:
        """LISTEN in a thread of its own: ``newer()`` (which takes the registry's lock and calls
        ``catch_up``) whenever a version above ``known()`` is notified, and after each reconnection."""
        self._thread = threading.Thread(target=self._listen, args=(newer, known, say), name="otpy-registry-listen",
                                        daemon=True)
        self._thread.start()

    def _listen(self, newer: Callable[[], None], known: Callable[[], int], say: Callable[[str], None]) -> None:
        delay, first = RETRY_FIRST, True
        while not self._stop.is_set():
            listener = None
            try:
                listener = self._connect()
                listener.execute(f"LISTEN {CHANNEL}")
                if not first or self.down is not None or self.conn is None or self.conn.broken:
                    self._revive(say)
                newer()  # what was committed before this LISTEN: since the load, or while we were away
                first, delay = False, RETRY_FIRST
                while not self._stop.is_set():
                    for note in listener.notifies(timeout=LISTEN_WAKE):
                        if not note.payload.isdigit() or int(note.payload) > known():
                            newer()
                    if self.conn is None or self.conn.broken or self.down is not None:
                        break  # the write connection was lost: a new pair of connections
            except psycopg.Error as exc:
                self._mark_down(self._reason(exc), say)
            except StorageUnavailable:
                pass  # the write connection was lost meanwhile (down is set)
            finally:
                if listener is not None:
                    listener.close()
            if not self._stop.is_set() and self.down is not None:
                self._stop.wait(delay)  # a bounded backoff, whatever failed: never a busy loop
                delay = min(delay * 2, RETRY_MAX)

    def _mark_down(self, why: str, say: Callable[[str], None]) -> None:
        if self.down is None:
            self.down = why
            say(f"otpy: registry: the database at {self.address} is unreachable ({why}): writes are refused, "
                "the values in memory still answer; reconnecting")

    def _revive(self, say: Callable[[str], None]) -> None:
        """A new write connection (the listener's works again), swapped in under the registry's lock."""
        fresh = self._connect()
        with self._lock:
            old, self.conn = self.conn, fresh
            was, self.down = self.down, None
        if old is not None:
            old.close()
        if was is not None:
            say(f"otpy: registry: the database at {self.address} is reachable again; catching up")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=LISTEN_WAKE + 1)  # it wakes at least every LISTEN_WAKE seconds
        if self.conn is not None:
            self.conn.close()
