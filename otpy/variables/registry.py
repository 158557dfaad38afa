"""The registry: a built-in program that serves the node's variable spaces, durably.

It runs as a supervised child like any other (id ``registry``). A call's inputs are one of the
typed requests of ``otpy.wire.registry_protocol`` (``get``, ``list``, ``set``, ``set_many``,
``resolve``, ``explain``, ``register_space``, ``get_space``), read by its prebuilt decoder and answered by one
``match`` (``_serve``) with a typed reply or a ``RegistryRefusal``; ``otpy.variables.client`` is the
client. Its state (values, and spaces registered at run time) lives in SQLite (WAL) in the node's state folder,
or, with ``args["storage"]`` a ``postgresql://`` URL (``[registry] storage``), in a database that
several nodes share (``otpy.variables.storage``, ``otpy.variables.postgres``): a write is acknowledged only after its
transaction committed, so a registry SIGKILLed and restarted by its supervisor serves every
acknowledged write, and an unacknowledged one is either wholly there or wholly absent.

On a shared database, a write first folds in the rows other nodes committed since the version
this registry knows, inside its own transaction (the writers are serialized there), so its
compare-and-set is checked against the database's truth; a thread LISTENing on the database
folds in and publishes every other node's write. While the database is unreachable the
registry answers reads from memory and refuses writes (``unavailable``), and it catches up once
the database is back.

The node tells it which variables are **bound** (``args["bound"]``: they decide which
programs run, ``otpy.specs.bindings``): a write of one is refused (``bound``) unless the node
sends it with ``reconciled`` once its tree runs the value, so the registry never stores a value
the system does not run. A ``dry_run`` write is checked as the write and commits nothing.

After each commit the registry publishes one ``VariableChanged`` per written value on a PUB
socket at ``ipc://<OTPY_NODE_DIR>/registry-events.sock`` (0600; see ``otpy.wire.protocol``). Workers
subscribe to it to hand their program its new configuration (``otpy.agent.worker``).

>>> import tempfile
>>> reg = Registry()
>>> reg.setup({"variables": {"global": {"t": {"type": "float", "low": 0, "high": 2, "default": 1.0}}},
...            "path": tempfile.mktemp(suffix=".db")}, {})
>>> reg.forward(op="set", scope="global", name="t", value=1.5)["version"]
1
>>> reg.forward(op="get", scope="global", name="t")["value"]
1.5
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import threading
import traceback
from typing import Any, Callable, TypeVar

import msgspec
import zmq

from ..wire.protocol import ENCODER, VariableChanged
from ..wire.registry_protocol import (
    Explain,
    Explained,
    GetSpace,
    GetValue,
    ListValues,
    RegistryRefusal,
    RegisterSpace,
    RegistryReply,
    Resolve,
    Resolved,
    SetValue,
    SetValues,
    SpaceRegistered,
    SpaceTables,
    ToRegistry,
    ValueEntry,
    ValueList,
    Written,
    WrittenMany,
    read_request,
    reply_outputs,
)
from ..specs.values import mask_url
from .placement import WRITER_ENV, events_endpoint
from .registry_cache import CacheWriter, cache_path, read_cache
from .scopes import ScopedValue, ScopedValues, VersionConflict, spaces_from_topology
from .space import VariableSpace, dependency_problems
from .storage import SqliteStorage, StorageUnavailable, is_postgresql
from .stored_rows import bad_row, parse_json, parse_version, skip_or_refuse, value_rows
from .store import RegistryFileError  # re-exported
from .types import VariableError, variable_from_table

T = TypeVar("T")


class Registry:
    """Serves ``ScopedValues`` over calls; every change is committed before the reply.

    A program for the worker (``setup``, calls, ``teardown``) without being a ``Program``:
    it never calls other agents."""

    def setup(self, args, config) -> None:
        # Two locks: ``_lock`` guards memory (the store, the PUB) and is held only briefly, so
        # reads never wait on the database; ``_db`` makes the writes (and the listener's reads of
        # the database) take turns on its connection, each bounded in time.
        self._lock, self._db = threading.Lock(), threading.Lock()
        spaces = spaces_from_topology(args.get("variables", {}), args.get("constraints"))
        self.store = ScopedValues(spaces, args.get("parents", {}))
        self.bound = frozenset(args.get("bound", ()))  # "SCOPE.NAME": written only by the node, reconciled
        # The node's secret (in this child's environment only): a reconciled write must carry it.
        self.writer = os.environ.get(WRITER_ENV)
        path = args.get("path") or os.path.join(os.environ.get("OTPY_NODE_DIR", "."), "registry.db")
        shared = is_postgresql(args.get("storage"))
        self.cache, self._url = cache_path(args) if shared else None, args.get("storage")
        cached = self._read_cache() if self.cache else None
        self.storage = open_storage(args.get("storage"), path, lock=self._db,
                                    wait=0.0 if cached else _start_wait(), offline=cached is not None)
        self.path = self.storage.where  # for messages: a URL's password is masked
        self._context = self.pub = self._cap = self._cache = None
        self._space_rows: list[tuple[str, str, str]] = []
        try:
            if getattr(self.storage, "down", None) is not None:
                version, values, spaces = cached
                _say(f"otpy: registry: the database at {self.storage.address} is unreachable ({self.storage.down}): "
                     f"serving the values this node last knew ({self.cache}, version {version}); writes are "
                     "refused until it is back, then the registry catches up")
            else:
                version, values, spaces = self.storage.load(sorted(self.store.spaces))
            self._load_spaces(spaces)
            self._load(version, values)
            if endpoint := args.get("events") or events_endpoint():
                self._open_events(endpoint)
        except BaseException:
            self.storage.close()
            raise
        if self.cache is not None:
            self._cache = CacheWriter(self.cache, self.storage.where, self._cached_rows)
            self._cache.save()
        if self.storage.shared:  # the other nodes' writes, folded in and published here
            self.storage.listen(self._catch_up, lambda: self.store.version, _say)

    @property
    def db(self):
        """The SQLite connection (the node's own file)."""
        return self.storage.db

    def _open_events(self, endpoint: str) -> None:
        """The events PUB, private (0600), its connections capped like every listener of a node
        (``wire.connections``): a flood of idle connections would abort the registry at EMFILE."""
        from ..wire.connections import ThreadConnectionCap, connection_cap, prepare

        def bind() -> None:
            self.pub.bind(endpoint)  # libzmq unlinks the file a SIGKILLed incarnation left
            os.chmod(endpoint.removeprefix("ipc://"), 0o600)

        self._context = zmq.Context(io_threads=1)
        self.pub = self._context.socket(zmq.PUB)
        self.pub.linger = 0
        prepare(self.pub)
        bind()
        self._cap = ThreadConnectionCap(self.pub, connection_cap(2), bind, self._lock,
                                        say=lambda text: print(text, file=sys.stderr, flush=True))

    def teardown(self) -> None:
        self.storage.close()
        if self._cache is not None:
            self._cache.close()
        if self._cap is not None:
            self._cap.close()
        if self.pub is not None:
            self.pub.close(linger=0)
            self._context.term()

    def forward(self, **inputs: Any) -> dict[str, Any]:
        """A call: its inputs are a request (``otpy.wire.registry_protocol``), its outputs the reply."""
        request = read_request(inputs)
        reply = request if isinstance(request, RegistryRefusal) else self.answer(request)
        try:
            return reply_outputs(reply)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:  # not msgpack: an otpy bug
            traceback.print_exc(file=sys.stderr)
            return reply_outputs(_internal(request, exc))

    __call__ = forward  # the worker calls its program with the call's inputs

    def answer(self, request: ToRegistry) -> RegistryReply | RegistryRefusal:
        """The reply to ``request``, or its refusal: ``invalid`` and ``conflict`` say why the store
        refused; anything else raised is an otpy bug or a broken file, logged with its traceback
        and answered ``internal``."""
        try:
            if isinstance(request, (SetValue, SetValues, RegisterSpace)):
                with self._db:  # the writes take turns; memory is locked only around its own changes
                    return self._serve(request)
            with self._lock:  # reads answer from memory, never waiting on the database
                return self._serve(request)
        except VariableError as error:
            return RegistryRefusal(kind="invalid", problems=error.problems)
        except VersionConflict as conflict:
            return RegistryRefusal(kind="conflict", problems=[str(conflict)], current=conflict.current)
        except BoundWrite as refused:
            return RegistryRefusal(kind="bound", problems=refused.problems)
        except StorageUnavailable as down:
            return RegistryRefusal(kind="unavailable", problems=[str(down)])
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            return _internal(request, error)

    def _serve(self, request: ToRegistry) -> RegistryReply:
        store = self.store
        match request:
            case GetValue(scope=scope, name=name):
                return _entry(store.get(scope, name))
            case ListValues(scope=scope):
                return ValueList(values=[_entry(e) for e in store.list(scope)])
            case Resolve(child=child, chain=chain, overlay=overlay):
                store.learn_chain(child, chain)
                return Resolved(config=store.resolve_with(child, overlay))
            case Explain(child=child, name=name, chain=chain):
                store.learn_chain(child, chain)
                scope, value, reason = store.explain(child, name)
                return Explained(scope=scope, value=value, reason=reason)
            case RegisterSpace(scope=scope, variables=tables):
                return SpaceRegistered(scope=scope, added=self._register_space(scope, tables))
            case GetSpace(scope=scope):
                return self._space_tables(scope)
            case SetValue(scope=scope, name=name, value=value, expected_version=expected, dry_run=dry):
                self._check_bound({scope: [name]}, request)
                return Written(version=self._write(lambda: store.set(scope, name, value, expected, dry_run=dry), dry))
            case SetValues(values=values, dry_run=dry, expected=expected):
                self._check_bound(values, request)
                with self._lock:
                    before = self._current(values)
                versions = self._write(lambda: store.set_many(values, dry_run=dry, expected=expected), dry)
                return WrittenMany(versions=versions, before=before)
        raise TypeError(f"no case for {type(request).__name__}")  # a request type added without its case

    def _current(self, written: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The values (set or default) of the variables ``written`` names, before the write; an
        unknown one is left out (the write itself refuses it, naming it)."""
        current: dict[str, dict[str, Any]] = {}
        for scope, names in written.items():
            for name in names:
                try:
                    current.setdefault(scope, {})[name] = self.store.get(scope, name).value
                except VariableError:
                    continue
        return current

    def _check_bound(self, written: dict[str, Any], request: SetValue | SetValues) -> None:
        """Raise BoundWrite for a write of bound variables the node has not reconciled (a dry
        run never is: it changes nothing)."""
        if request.dry_run or request.reconciled and self._from_node(request.writer):
            return
        if problems := unreconciled(self.bound, written):
            raise BoundWrite(problems)

    def _from_node(self, writer: str) -> bool:
        """Whether a ``reconciled`` write comes from the node: it carries the secret the node put
        in this registry's environment. Without one, only a registry that knows of no bound
        variable (run outside a node) takes it: a bound one never goes unguarded."""
        if self.writer is None:
            return not self.bound
        return hmac.compare_digest(writer.encode(), self.writer.encode())

    def _space_tables(self, scope: str | None) -> SpaceTables:
        """The declared variables (topology and run time) of ``scope`` or of every scope."""
        spaces = self.store.spaces if scope is None else {scope: self.store.space(scope)}
        return SpaceTables(
            spaces={name: space.tables() for name, space in spaces.items()},
            constraints={name: [c.table() for c in space.constraints] for name, space in spaces.items()
                         if space.constraints},
            bound=sorted(self.bound))

    def _register_space(self, scope: str, tables: dict[str, dict]) -> list[str]:
        """Declare variables (topology form) in ``scope`` at run time: new ones are added and
        committed; one declared already must be declared the same way (else VariableError).

        Nothing is stored if a child that resolves now would not resolve with the new variables
        (a variable with no default in a scope children read): else every restart would fail
        for as long as the file holds the declaration."""
        if not scope:
            raise VariableError(["register_space: scope: got ''; expected a name"])
        with self._lock:
            added = self._new_variables(scope, tables)
        if added:
            rows = [(scope, name, json.dumps(table)) for name, (_, table) in added.items()]
            with self.storage.transaction() as tx:
                tx.put_spaces(rows)
            with self._lock:
                self.store.declare(scope, [variable for variable, _ in added.values()])
                self._space_rows.extend(rows)
            self._save_cache()
        return sorted(added)

    def _new_variables(self, scope: str, tables: dict[str, dict]) -> dict[str, tuple[Any, dict]]:
        """The variables ``tables`` adds to ``scope``, checked (VariableError if any is refused)."""
        space = self.store.spaces.get(scope)
        added, problems = {}, []
        for name, table in tables.items():
            variable = variable_from_table(name, table, scope=scope)
            if space is not None and name in space.variables:
                if space.variables[name] != variable:
                    problems.append(f"{scope}.{name}: already declared as {space.variables[name]!r}")
                continue
            added[name] = (variable, table)
        if added and not problems:
            extended = (space or VariableSpace(scope)).extended(
                variable for variable, _ in added.values())
            problems = dependency_problems(extended)
        if problems:
            raise VariableError(problems)
        if added:
            variables = [variable for variable, _ in added.values()]
            if too_heavy := self.store.weight_problem(scope, variables):
                raise VariableError([f"register_space: {too_heavy}"])
            if broken := self.store.unresolvable_with(scope, variables):
                raise VariableError([f"register_space: scope {scope!r}: the new variables would make the "
                                     f"configuration of {', '.join(map(repr, broken))} unresolvable (a variable "
                                     "without a default, or a composite or constraint that fails); "
                                     "expected every new variable to have a default there"])
        return added

    def _load_spaces(self, stored: list) -> None:
        """Spaces registered at run time by an earlier incarnation (the topology's come first)."""
        rows: dict[str, dict[str, dict]] = {}
        skipped = []
        for scope, name, definition in stored:
            where = f"space row ({scope!r:.60}, {name!r:.60})"
            try:
                table = parse_json(definition)
                if not isinstance(scope, str) or not isinstance(name, str) or not isinstance(table, dict):
                    raise ValueError("expected names and a JSON table")
            except ValueError as bad:
                skipped.append(bad_row(self.path, where, str(bad)))
                continue
            rows.setdefault(scope, {})[name] = table
            self._space_rows.append((scope, name, definition))
        self._skip(skipped)
        for scope, tables in rows.items():
            known = self.store.spaces.get(scope)
            fresh = {n: t for n, t in tables.items() if known is None or n not in known.variables}
            if not fresh:
                continue
            try:
                declared = [variable_from_table(name, table, scope=scope) for name, table in fresh.items()]
            except VariableError as error:
                self._skip([bad_row(self.path, f"space rows of scope {scope!r:.60}", "; ".join(error.problems))])
                continue
            self.store.declare(scope, declared)

    # --- durability ---------------------------------------------------------------------

    def _write(self, change: Callable[[], T], dry_run: bool = False) -> T:
        """Apply ``change`` to the store, commit what it wrote, and only then return its result
        (the caller holds ``_db``: writes take turns).

        In the write's transaction first: the rows other registries committed since the version
        this one knows (a shared database; its writers wait for each other there), folded in, so
        ``change``'s checks (its compare-and-set) see the database's truth. Memory holds only what
        is committed: ``change`` is made, its rows taken, memory put back, and the rows applied
        again once COMMIT returned (reads meanwhile answer the committed values, never waiting).
        A dry run commits nothing and is checked against memory (refused at once while the
        database is unreachable)."""
        if dry_run:
            self.storage.check_available()
            with self._lock:
                return change()
        folded: list[ScopedValue] = []
        written: list[ScopedValue] = []
        try:
            with self.storage.transaction() as tx:
                version, rows = tx.newer(self.store.version, sorted(self.store.spaces))
                with self._lock:
                    folded = self._fold(version, rows) if rows or version > self.store.version else []
                    try:
                        result = change()
                    finally:
                        written = self.store.take_changes(undo=True)
                if written:
                    tx.put_values([(e.scope, e.name, json.dumps(e.value), e.version) for e in written],
                                  max(e.version for e in written))
        finally:
            if folded:  # committed by others: true whatever became of this write
                with self._lock:
                    self._publish(folded)
        if written:
            with self._lock:
                self.store.fold(0, [(e.scope, e.name, e.value, e.version) for e in written])
                self._publish(written)
        if folded or written:
            self._save_cache()
        return result

    def _fold(self, version: object, rows: list) -> list[ScopedValue]:
        """Rows another registry committed (newer than this one knows), taken into the store: the
        values taken; one the declarations here refuse is dropped, and said (as ``_load`` does);
        one that is not a value at all is skipped, and said."""
        taken, dropped = self.store.fold(self._version(version), self._values(rows))
        for problem in dropped:
            _say(f"otpy: registry: dropping stored {problem}")
        return taken

    def _catch_up(self) -> None:
        """The listener's call: what other registries committed since the version this one
        knows, taken in and published (StorageUnavailable: the listener reconnects)."""
        with self._db:
            version, rows = self.storage.catch_up(self.store.version, sorted(self.store.spaces))
            with self._lock:
                taken = self._fold(version, rows)
                self._publish(taken)
            if taken:
                self._save_cache()

    def _publish(self, written: list[ScopedValue]) -> None:
        """Tell the subscribers, once the values are committed (never before)."""
        if self.pub is None:
            return
        for entry in written:
            event = VariableChanged(scope=entry.scope, name=entry.name, value=entry.value, version=entry.version)
            self.pub.send(ENCODER.encode(event))

    def _skip(self, bad: list[RegistryFileError]) -> None:
        skip_or_refuse(bad, self.storage.shared, _say)

    def _values(self, rows: list) -> list[tuple[str, str, Any, int]]:
        parsed, bad = value_rows(rows, self.path)
        self._skip(bad)
        return parsed

    def _version(self, value: object) -> int:
        try:
            return parse_version(value)
        except ValueError as why:
            self._skip([bad_row(self.path, "meta.version", str(why))])
            return self.store.version

    def _load(self, version: object, values: list) -> None:
        """The values and the version counter as committed (a value the topology no longer
        accepts is dropped, and said)."""
        version = self._version(version)
        stored = self._values(values)
        for dropped in self.store.load(version, stored):
            _say(f"otpy: registry: dropping stored {dropped}")

    # --- the last values known, for a restart while the database is down --------------------

    def _read_cache(self) -> tuple | None:
        try:
            return read_cache(self.cache, mask_url(self._url))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            _say(f"otpy: registry: ignoring {self.cache}: {exc}")
            return None

    def _cached_rows(self) -> tuple[int, list, list]:
        with self._lock:
            return self.store.version, [(scope, name, json.dumps(self.store.values[scope][name]), version)
                                        for (scope, name), version in self.store.versions.items()], \
                list(self._space_rows)

    def _save_cache(self) -> None:
        if self._cache is not None:
            self._cache.touch()




class BoundWrite(Exception):
    """A write of bound variables that did not come through the node (``problems``: one each)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def unreconciled(bound: frozenset[str], written: dict[str, Any]) -> list[str]:
    """One problem per bound variable among ``written`` (``{scope: names}``), saying what to do."""
    return [f"{variable}: bound (it decides what runs in the node's tree), so the registry alone does not "
            f"set it: set it through the node (otpy vars set {variable} VALUE, the SetVariables request, "
            "Node.set_variables), which makes the tree run it before the value is stored"
            for variable in (f"{scope}.{name}" for scope, names in written.items() for name in names)
            if variable in bound]


def open_storage(storage: str | None, path: str, lock: threading.Lock, wait: float, offline: bool = False):
    """The registry's storage: ``storage`` a PostgreSQL URL (psycopg imported only then; with
    ``offline``, returned unconnected when unreachable), else the node's SQLite file at ``path``."""
    if is_postgresql(storage):
        from .postgres import PostgresStorage

        return PostgresStorage.open(storage, lock, wait, offline=offline)
    return SqliteStorage(path)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


START_WAIT_ENV = "OTPY_REGISTRY_START_WAIT"  # seconds a starting registry tries to reach a shared database


def _start_wait() -> float:
    """``START_WAIT_ENV`` (default 8 s, below a child's start_timeout of 10 s)."""
    try:
        return max(0.0, float(os.environ.get(START_WAIT_ENV, "8")))
    except ValueError:
        return 8.0


def _internal(request: object, error: BaseException) -> RegistryRefusal:
    op = type(request).__struct_config__.tag if hasattr(request, "__struct_config__") else "request"
    return RegistryRefusal(kind="internal", problems=[f"{op}: {type(error).__name__}: {error}"])


def _entry(e: ScopedValue) -> ValueEntry:
    return ValueEntry(scope=e.scope, name=e.name, value=e.value, version=e.version, reason=e.reason)
