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

import os
import socket
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import psycopg

from ..specs.values import mask_secret, mask_url
from .storage import Row, StorageUnavailable
from .store import RegistryFileError

CHANNEL = "otpy_registry"
TABLES = {"otpy_registry_value": (("scope", "text"), ("name", "text"), ("value", "text"), ("version", "bigint")),
          "otpy_registry_meta": (("key", "text"), ("value", "bigint")),
          "otpy_registry_space": (("scope", "text"), ("name", "text"), ("definition", "text"))}
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
HEARTBEAT = 5.0  # seconds of silence after which the listener asks the database (a hung server is noticed)
DEADLINE = 4.0  # seconds any exchange with the database may take before its socket is shut (a hung server)
LOST = (psycopg.OperationalError, psycopg.InterfaceError)  # the connection, not the statement
TIMED_OUT = (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable)  # the server's own timeouts
# Every wait on the database is bounded: the connection (connect_timeout), a statement and a lock
# (the server's statement_timeout / lock_timeout), a transaction left open by a hung client
# (idle_in_transaction_session_timeout), a dead peer (TCP keepalives, tcp_user_timeout), and a
# server that accepts and never answers (a SIGSTOPped or frozen one: ``_deadline`` shuts the socket).
CONNECT = {"connect_timeout": 3, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
           "keepalives_count": 2, "tcp_user_timeout": 4000, "application_name": "otpy-registry",
           "options": "-c statement_timeout=3000 -c lock_timeout=3000 -c idle_in_transaction_session_timeout=10000"}


def address(url: str) -> str:
    """``HOST:PORT`` of ``url`` (5432 when the URL names no port)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class PostgresStorage:
    """The registry's values in a shared database; its connection used under ``lock`` (the
    registry's database lock: one transaction at a time, never the lock its reads take)."""

    shared = True

    def __init__(self, url: str, lock: threading.Lock):
        self.url, self.where, self.address = url, mask_url(url), address(url)
        self._lock = lock  # the write connection is used and replaced under it
        self.conn: psycopg.Connection | None = None
        self.down: str | None = None  # why the database is unreachable, while it is
        self.say: Callable[[str], None] = _say
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, url: str, lock: threading.Lock | None = None, wait: float = START_WAIT,
             offline: bool = False) -> "PostgresStorage":
        """Connected, with otpy's tables; the database is tried for ``wait`` seconds, then
        RegistryFileError in one line (the password masked); with ``offline``, the storage is
        returned unconnected instead (``down`` says why: writes refused, the listener connects)."""
        storage = cls(url, lock or threading.Lock())
        deadline, delay = time.monotonic() + wait, RETRY_FIRST
        while True:
            try:
                conn = storage._connect()
                break
            except psycopg.Error as exc:
                if time.monotonic() + delay > deadline:
                    if offline:
                        storage.down = storage._reason(exc)
                        return storage
                    raise RegistryFileError(f"registry storage {storage.where}: the database at {storage.address} "
                                            f"is unreachable (tried for {wait:g} s: {storage._reason(exc)}); "
                                            "start it or check [registry] storage") from None
                time.sleep(delay)  # a bounded retry of a connection refused: nothing to wait on
                delay = min(delay * 2, RETRY_MAX)
        try:
            storage._make_tables(conn)
        except BaseException:
            conn.close()
            raise
        storage.conn = conn
        return storage

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, **CONNECT)

    def _reason(self, exc: BaseException) -> str:
        """A psycopg error in one line, without the password (a server may echo a conninfo)."""
        text = " ".join(str(exc).split()).split(" This probably means")[0][:200] or type(exc).__name__
        return mask_secret(text, self.url)

    @contextmanager
    def _deadline(self, conn: psycopg.Connection, seconds: float = DEADLINE) -> Iterator[None]:
        """The block's exchanges with the database bounded by ``seconds``: past them, the socket
        is shut (the server may accept and never answer: stopped, frozen), so the waiting call
        fails as a lost connection (``LOST``) instead of waiting for ever."""
        try:
            fd = conn.pgconn.socket
        except psycopg.Error:
            yield  # already closed: whatever is tried fails at once
            return
        timer = threading.Timer(seconds, _shut, (fd,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _make_tables(self, conn: psycopg.Connection) -> None:
        try:
            with self._deadline(conn), conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                found: dict[str, list[tuple[str, str]]] = {}
                for table, column, kind in conn.execute(
                        "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE "
                        "table_schema = current_schema() AND table_name = ANY(%s) ORDER BY table_name, "
                        "ordinal_position", (list(TABLES),)):
                    found.setdefault(table, []).append((column, kind))
                for table, columns in found.items():
                    if tuple(columns) != TABLES[table]:
                        raise RegistryFileError(
                            f"registry storage {self.where}: table {table!r} has columns "
                            f"{', '.join(' '.join(c) for c in columns)}; expected "
                            f"{', '.join(' '.join(c) for c in TABLES[table])}: this database's {table} is not "
                            "otpy's registry")
                for statement in filter(str.strip, SCHEMA.split(";")):
                    conn.execute(statement)
        except psycopg.Error as exc:
            raise RegistryFileError(f"registry storage {self.where}: cannot make otpy's tables: "
                                    f"{self._reason(exc)}") from None

    # --- reading ---------------------------------------------------------------------------

    def load(self, scopes: list[str]) -> tuple[int, list[Row], list[tuple[Any, Any, Any]]]:
        """The version, the value rows of ``scopes`` (and of the scopes registered at run time;
        another party's rows elsewhere are never read) and the space rows."""
        try:
            with self._deadline(self.conn), self.conn.transaction():
                version = self._version()
                spaces = self.conn.execute("SELECT scope, name, definition FROM otpy_registry_space").fetchall()
                known = sorted({*scopes, *(row[0] for row in spaces)})
                values = self.conn.execute("SELECT scope, name, value, version FROM otpy_registry_value "
                                           "WHERE scope = ANY(%s)", (known,)).fetchall()
            return version, values, spaces
        except LOST as exc:
            raise RegistryFileError(f"registry storage {self.where}: the database at {self.address} became "
                                    f"unreachable while reading it: {self._reason(exc)}") from None

    def _version(self, lock: bool = False) -> int:
        """The version counter, never below a stored row's version (a counter another party moved
        back must not make versions be given twice)."""
        row = self.conn.execute("SELECT value FROM otpy_registry_meta WHERE key = 'version'"
                                + (" FOR UPDATE" if lock else "")).fetchone()
        top = self.conn.execute("SELECT max(version) FROM otpy_registry_value").fetchone()
        return max(row[0] if row else 0, top[0] or 0)

    def _rows_after(self, known: int, scopes: list[str]) -> list[Row]:
        return self.conn.execute("SELECT scope, name, value, version FROM otpy_registry_value WHERE version > %s "
                                 "AND scope = ANY(%s) ORDER BY version", (known, scopes)).fetchall()

    def catch_up(self, known: int, scopes: list[str]) -> tuple[int, list[Row]]:
        """The counter and the rows of ``scopes`` committed after version ``known`` (under the
        registry's database lock)."""
        self.check_available()
        try:
            with self._deadline(self.conn), self.conn.transaction():
                version = self._version()
                return version, self._rows_after(known, scopes) if version > known else []
        except TIMED_OUT as exc:
            raise StorageUnavailable(self._slow(exc)) from None
        except LOST as exc:
            raise self._lost(exc, False) from None

    # --- writing ---------------------------------------------------------------------------

    def check_available(self) -> None:
        if self.down is not None or self.conn is None or self.conn.broken:
            raise StorageUnavailable(self._unreachable(self.down or "its connection is closed", False))

    @contextmanager
    def transaction(self) -> Iterator["PostgresStorage"]:
        """One write: committed when the block ends; StorageUnavailable if the database is lost
        or does not answer within ``DEADLINE`` seconds."""
        self.check_available()
        committing = False
        try:
            with self._deadline(self.conn), self.conn.transaction():
                yield self
                committing = True
        except TIMED_OUT as exc:  # the server's timeouts: the transaction was rolled back
            raise StorageUnavailable(self._slow(exc)) from None
        except LOST as exc:
            raise self._lost(exc, committing) from None
        except psycopg.Error as exc:
            raise RegistryFileError(f"registry storage {self.where}: cannot write: {self._reason(exc)}") from None

    def newer(self, known: int, scopes: list[str]) -> tuple[int, list[Row]]:
        """Inside a write: lock the counter (other writers wait), the rows committed after ``known``."""
        version = self._version(lock=True)
        return version, self._rows_after(known, scopes) if version > known else []

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

    def _slow(self, exc: BaseException) -> str:
        return (f"the database at {self.address} did not answer in time ({self._reason(exc)}): the write was not "
                "stored; retry (another writer may hold the counter's lock)")

    def _lost(self, exc: BaseException, committing: bool) -> StorageUnavailable:
        self._mark_down(self._reason(exc))
        return StorageUnavailable(self._unreachable(self.down or self._reason(exc), committing), unknown=committing)

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
        """LISTEN in a thread of its own: ``newer()`` (which takes the registry's locks and calls
        ``catch_up``) whenever a version above ``known()`` is notified, and after each
        (re)connection. Nothing another party writes or sends ends the thread."""
        self.say = say
        self._thread = threading.Thread(target=self._listen, args=(newer, known), name="otpy-registry-listen",
                                        daemon=True)
        self._thread.start()

    def _listen(self, newer: Callable[[], None], known: Callable[[], int]) -> None:
        delay, failed = RETRY_FIRST, None
        while not self._stop.is_set():
            listener, trouble = None, None
            try:
                listener = self._connect()
                with self._deadline(listener):
                    listener.execute(f"LISTEN {CHANNEL}")
                if self.down is not None or self.conn is None or self.conn.broken:
                    self._revive()
                newer()  # what was committed before this LISTEN: since the load, or while we were away
                delay, failed = RETRY_FIRST, None
                self._follow(listener, newer, known)
            except psycopg.Error as exc:
                self._mark_down(self._reason(exc))
            except StorageUnavailable:
                pass  # the write connection was lost meanwhile (down is set)
            except Exception as exc:  # an otpy bug or a refused table: said once, and the listener goes on
                trouble = f"{type(exc).__name__}: {exc}"
                if trouble != failed:
                    self.say(f"otpy: registry: following the other nodes failed ({trouble}); retrying")
                    if not isinstance(exc, RegistryFileError):
                        traceback.print_exc(file=sys.stderr)
                failed = trouble
            finally:
                if listener is not None:
                    listener.close()
            if not self._stop.is_set() and (self.down is not None or trouble is not None):
                self._stop.wait(delay)  # a bounded backoff, whatever failed: never a busy loop
                delay = min(delay * 2, RETRY_MAX)

    def _follow(self, listener: psycopg.Connection, newer: Callable[[], None], known: Callable[[], int]) -> None:
        """Until the connection is lost: ``newer()`` on each notification of a version above
        ``known()`` (a payload that is not a version makes it look); after ``HEARTBEAT`` seconds
        of silence, the database is asked (a hung one is noticed within ``DEADLINE``)."""
        quiet = time.monotonic()
        while not self._stop.is_set():
            for note in listener.notifies(timeout=LISTEN_WAKE):
                quiet = time.monotonic()
                if _version_of(note.payload) > known():
                    newer()
            if time.monotonic() - quiet >= HEARTBEAT:
                with self._deadline(listener):
                    listener.execute("SELECT 1")
                quiet = time.monotonic()
            if self.conn is None or self.conn.broken or self.down is not None:
                return  # the write connection was lost: a new pair of connections

    def _mark_down(self, why: str) -> None:
        if self.down is None:
            self.down = why
            self.say(f"otpy: registry: the database at {self.address} is unreachable ({why}): writes are refused, "
                     "the values in memory still answer; reconnecting")

    def _revive(self) -> None:
        """A new write connection (the listener's works again), its tables checked, swapped in
        under the registry's database lock."""
        fresh = self._connect()
        try:
            self._make_tables(fresh)
        except BaseException:
            fresh.close()
            raise
        with self._lock:
            old, self.conn = self.conn, fresh
            was, self.down = self.down, None
        if old is not None:
            old.close()
        if was is not None:
            self.say(f"otpy: registry: the database at {self.address} is reachable again; catching up")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=LISTEN_WAKE + DEADLINE + 1)  # it wakes at least every LISTEN_WAKE seconds
        if self.conn is not None:
            self.conn.close()


def _version_of(payload: str) -> int:
    """The version a notification names; one that names none (any text another party sends)
    counts as news (the registry looks: a cheap read of the counter)."""
    if payload.isascii() and payload.isdigit() and len(payload) <= 19:
        return int(payload)
    return 1 << 63


def _shut(fd: int) -> None:
    """Shut the socket ``fd`` both ways: the call waiting on it fails at once (the connection lost)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
