"""The registry: a built-in program that serves the node's variable spaces, durably.

It runs as a supervised child like any other (id ``registry``), and answers calls whose
``op`` is one of ``register_space``, ``get``, ``set``, ``set_many``, ``resolve``, ``explain``,
``list``. Its state (values, and spaces registered at run time)
lives in SQLite (WAL) in the node's state folder: a write is acknowledged only after its
transaction committed, so a registry SIGKILLed and restarted by its supervisor serves every
acknowledged write, and an unacknowledged one is either wholly there or wholly absent.

After each commit the registry publishes one ``VariableChanged`` per written value on a PUB
socket at ``ipc://<OTPY_NODE_DIR>/registry-events.sock`` (0600; see ``_protocol``). Workers
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

import json
import os
import sqlite3
import sys
import threading
import traceback
from typing import Any

import zmq

from ..agent.program import Program
from ..wire.protocol import ENCODER, VariableChanged
from .store import RegistryFileError, open_database  # RegistryFileError: re-exported
from .scopes import ScopedValues, VariableSpace, VersionConflict, spaces_from_topology
from .types import VariableError

from .placement import events_endpoint


class Registry(Program):
    """Serves ``ScopedValues`` over calls; every change is committed before the reply."""

    def setup(self, args, config) -> None:
        self._lock = threading.Lock()  # the store, the database and the PUB: one request at a time
        self.store = ScopedValues(spaces_from_topology(args.get("variables", {})), args.get("parents", {}))
        path = args.get("path") or os.path.join(os.environ.get("OTPY_NODE_DIR", "."), "registry.db")
        self.path = path
        self.db = open_database(path)
        try:
            self._load_spaces()
            self._load()
        except sqlite3.Error as exc:
            raise RegistryFileError(f"registry database {path}: cannot read it: {exc}") from None
        self._context = self.pub = self._cap = None
        if endpoint := args.get("events") or events_endpoint():
            self._open_events(endpoint)

    def _open_events(self, endpoint: str) -> None:
        """The events PUB, private (0600), its connections capped like every listener of a node
        (``_connections``): a flood of idle connections would abort the registry at EMFILE."""
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
        self.db.close()
        if self._cap is not None:
            self._cap.close()
        if self.pub is not None:
            self.pub.close(linger=0)
            self._context.term()

    def forward(self, op: str = "", **request: Any) -> dict[str, Any]:
        """Every answer is typed: a malformed request of any shape is ``bad_request`` naming the
        field; an exception otpy did not expect is logged with its traceback and is ``internal``."""
        if (problem := request_problem(op, request)) is not None:
            return {"ok": False, "error": "bad_request", "problems": [problem]}
        try:
            with self._lock:
                return self._serve(op, **request)
        except VariableError as error:
            return {"ok": False, "error": "invalid", "problems": error.problems}
        except VersionConflict as conflict:
            return {"ok": False, "error": "conflict", "problems": [str(conflict)], "current": conflict.current}
        except Exception as error:  # an otpy bug or a broken file: said loudly, answered typed
            traceback.print_exc(file=sys.stderr)
            return {"ok": False, "error": "internal", "problems": [f"{op}: {type(error).__name__}: {error}"]}

    def _serve(self, op: str, **request: Any) -> dict[str, Any]:
        store = self.store
        match op:
            case "get":
                return _entry(store.get(request["scope"], request["name"]))
            case "list":
                return {"ok": True, "values": [_entry(e) for e in store.list(request.get("scope"))]}
            case "resolve":
                self._learn_chain(request["child"], request.get("chain"))
                return {"ok": True, "config": store.resolve(request["child"])}
            case "explain":
                self._learn_chain(request["child"], request.get("chain"))
                scope, value, reason = store.explain(request["child"], request["name"])
                return {"ok": True, "scope": scope, "value": value, "reason": reason}
            case "register_space":
                added = self._register_space(request["scope"], request["variables"])
                return {"ok": True, "scope": request["scope"], "added": added}
            case "set":
                version = self._write(lambda: store.set(request["scope"], request["name"], request["value"],
                                                        request.get("expected_version")))
                return {"ok": True, "version": version}
            case "set_many":
                versions = self._write(lambda: store.set_many(request["values"]))
                return {"ok": True, "versions": versions}
        return {"ok": False, "error": "bad_request",
                "problems": [f"unknown op {op!r}; expected get, set, set_many, resolve, explain or list"]}

    def _learn_chain(self, child: str, chain: list[str] | None) -> None:
        """Children started at run time tell their supervisors, nearest first (``OTPY_SUPERVISORS``).

        Only a child the tree does not know yet is learnt, and only from a list of known ids
        (``request_problem`` checked the shapes)."""
        if child in self.store.parents or not chain:
            return
        known = {*self.store.parents, *self.store.parents.values()}
        links = list(zip([child, *chain], chain))
        for depth, (_, above) in enumerate(links):
            if above in known:  # the chain reaches the tree: learn the new links below it
                for below, parent in links[:depth + 1]:
                    self.store.parents.setdefault(below, parent)
                return

    def _register_space(self, scope: str, tables: dict[str, dict]) -> list[str]:
        """Declare variables (topology form) in ``scope`` at run time: new ones are added and
        committed; one declared already must be declared the same way (else VariableError).

        Nothing is stored if a child that resolves now would not resolve with the new variables
        (a variable with no default in a scope children read): else every restart would fail
        for as long as the file holds the declaration."""
        if not scope:
            raise VariableError(["register_space: scope: got ''; expected a name"])
        space = self.store.spaces.get(scope)
        added, problems = {}, []
        for name, table in tables.items():
            variable = spaces_from_topology({scope: {name: table}})[scope].variables[name]
            if space is not None and name in space.variables:
                if space.variables[name] != variable:
                    problems.append(f"{scope}.{name}: already declared as {space.variables[name]!r}")
                continue
            added[name] = (variable, table)
        if problems:
            raise VariableError(problems)
        if added:
            self._check_still_resolves(scope, [variable for variable, _ in added.values()])
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("INSERT OR REPLACE INTO space VALUES (?, ?, ?)",
                                    [(scope, name, json.dumps(table)) for name, (_, table) in added.items()])
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise RegistryFileError(f"registry database {self.path}: cannot write: {exc}") from exc
            self._declare(scope, [variable for variable, _ in added.values()])
        return sorted(added)

    def _check_still_resolves(self, scope: str, variables: list) -> None:
        """VariableError naming each known child whose resolution the new ``variables`` would break."""
        store = self.store
        ids = sorted({*store.parents, *store.parents.values(), *store.spaces, scope})
        before = {child for child in ids if _resolves(store, child)}
        saved = store.spaces.get(scope)
        trial = VariableSpace(scope, [*(saved.variables.values() if saved else ()), *variables])
        if saved is not None:
            trial.constraints = list(saved.constraints)
        store.spaces[scope] = trial
        store.values.setdefault(scope, {})
        try:
            broken = [child for child in sorted(before) if not _resolves(store, child)]
        finally:
            if saved is None:
                del store.spaces[scope]
                if not store.values[scope]:
                    del store.values[scope]
            else:
                store.spaces[scope] = saved
        if broken:
            raise VariableError([f"register_space: scope {scope!r}: the new variables would make the "
                                 f"configuration of {', '.join(map(repr, broken))} unresolvable (a variable "
                                 "without a default, or a composite or constraint that fails); "
                                 "expected every new variable to have a default there"])

    def _declare(self, scope: str, variables) -> None:
        if scope not in self.store.spaces:
            self.store.spaces[scope] = VariableSpace(scope)
            self.store.values[scope] = {}
        for variable in variables:
            self.store.spaces[scope].add(variable)

    def _load_spaces(self) -> None:
        """Spaces registered at run time by an earlier incarnation (the topology's come first)."""
        rows: dict[str, dict[str, dict]] = {}
        for scope, name, definition in self.db.execute("SELECT * FROM space"):
            table = self._json(definition, f"space row ({scope!r}, {name!r})")
            if not isinstance(scope, str) or not isinstance(name, str) or not isinstance(table, dict):
                raise self._bad_row(f"space row ({scope!r}, {name!r})", "expected names and a JSON table")
            rows.setdefault(scope, {})[name] = table
        for scope, tables in rows.items():
            known = self.store.spaces.get(scope)
            fresh = {n: t for n, t in tables.items() if known is None or n not in known.variables}
            if not fresh:
                continue
            try:
                declared = spaces_from_topology({scope: fresh})[scope].variables.values()
            except VariableError as error:
                raise self._bad_row(f"space rows of scope {scope!r}", "; ".join(error.problems)) from None
            self._declare(scope, declared)

    # --- durability ---------------------------------------------------------------------

    def _write(self, change):
        """Apply ``change`` to the store, commit what it wrote, and only then return its result."""
        before = self.store.version
        result = change()
        if self.store.version == before:
            return result
        written = [(scope, name, json.dumps(self.store.values[scope][name]), version)
                   for (scope, name), version in self.store.versions.items() if version == self.store.version]
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR REPLACE INTO value VALUES (?, ?, ?, ?)", written)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (self.store.version,))
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self._load()  # memory back to what is committed
            raise RegistryFileError(f"registry database {self.path}: cannot write: {exc}") from exc
        self._publish(written)
        return result

    def _publish(self, written) -> None:
        """Tell the subscribers, once the values are committed (never before)."""
        if self.pub is None:
            return
        for scope, name, _, version in written:
            event = VariableChanged(scope=scope, name=name, value=self.store.values[scope][name], version=version)
            self.pub.send(ENCODER.encode(event))

    def _bad_row(self, where: str, why: str) -> RegistryFileError:
        return RegistryFileError(f"registry database {self.path}: {where}: {why}; the file holds acknowledged "
                                 "values, so it is refused rather than read in part. Repair or remove it")

    def _json(self, text: object, where: str) -> Any:
        """A stored JSON text, or RegistryFileError naming the file and the row: never dropped."""
        try:
            if isinstance(text, (str, bytes)):
                return json.loads(text)
            raise ValueError(f"a {type(text).__name__}")
        except ValueError as exc:
            raise self._bad_row(where, f"got {text!r:.60} ({exc}); expected JSON") from None

    def _counter(self, value: object, where: str) -> int:
        """A stored version: an integer >= 0, or RegistryFileError naming the file and the row."""
        if isinstance(value, int) and value >= 0:
            return value
        raise self._bad_row(where, f"got {value!r:.60}; expected an integer >= 0")

    def _load(self) -> None:
        store = self.store
        for space in store.values.values():
            space.clear()
        store.versions.clear()
        row = self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        store.version = self._counter(row[0], "meta.version") if row else 0
        for scope, name, value, version in self.db.execute("SELECT * FROM value"):
            where = f"value row ({scope!r}, {name!r})"
            stored, version = self._json(value, where), self._counter(version, where + " version")
            if scope not in store.values or name not in store.spaces[scope].variables:
                continue  # the topology no longer declares it
            try:  # the topology may have narrowed the variable since the value was written
                store.values[scope][name] = store.spaces[scope].validate_one(name, stored)
            except (VariableError, ValueError) as refused:
                print(f"otpy: registry: dropping stored {scope}.{name}: {refused}", file=sys.stderr, flush=True)
                continue
            store.versions[scope, name] = version


# The fields of each op: (name, expected types, required). Checked before the op runs, so a
# malformed request is a bad_request naming its field, never an exception of the store.
_NAME, _TABLE, _ANY = (str,), (dict,), (object,)
REQUEST_FIELDS: dict[str, tuple[tuple[str, tuple[type, ...], bool], ...]] = {
    "get": (("scope", _NAME, True), ("name", _NAME, True)),
    "list": (("scope", _NAME, False),),
    "resolve": (("child", _NAME, True), ("chain", (list,), False)),
    "explain": (("child", _NAME, True), ("name", _NAME, True), ("chain", (list,), False)),
    "register_space": (("scope", _NAME, True), ("variables", _TABLE, True)),
    "set": (("scope", _NAME, True), ("name", _NAME, True), ("value", _ANY, True),
            ("expected_version", (int,), False)),
    "set_many": (("values", _TABLE, True),),
}


def request_problem(op: object, request: dict[str, Any]) -> str | None:
    """Why ``request`` is not a well-formed ``op`` request (naming the field), or None.

    An unknown op is left to ``_serve``, which lists the known ones."""
    fields = REQUEST_FIELDS.get(op) if isinstance(op, str) else None
    if fields is None:
        return None if isinstance(op, str) else f"op: got {type(op).__name__}; expected a string"
    expected_names = {name for name, _, _ in fields}
    if extra := sorted(map(str, set(request) - expected_names)):
        return f"{op}: unexpected field {extra[0]!r}; expected {', '.join(sorted(expected_names))}"
    for name, types, required in fields:
        value = request.get(name)
        if name not in request or (value is None and not required):
            if required:
                return f"{op}: missing field {name!r}"
            continue
        if not isinstance(value, types) or (types != _ANY and isinstance(value, bool)):
            kind = {str: "a string", dict: "a table", list: "an array", int: "an integer"}[types[0]]
            return f"{op}: {name}: got {type(value).__name__}; expected {kind}"
    return _nested_problem(op, request)


def _nested_problem(op: str, request: dict[str, Any]) -> str | None:
    """The shapes inside the tables and lists: keys are names, set_many's scopes are tables."""
    if op in ("resolve", "explain") and not all(isinstance(s, str) for s in request.get("chain") or ()):
        return f"{op}: chain: expected a list of supervisor ids (strings)"
    if op == "register_space" and not all(isinstance(k, str) and isinstance(t, dict)
                                          for k, t in request["variables"].items()):
        return "register_space: variables: expected a table of variable tables, by name"
    if op == "set_many":
        for scope, values in request["values"].items():
            if not isinstance(scope, str) or not isinstance(values, dict) \
                    or not all(isinstance(name, str) for name in values):
                return f"set_many: values.{scope}: expected a table of values by name, per scope"
    return None


def _resolves(store: ScopedValues, child: str) -> bool:
    try:
        store.resolve(child)
    except (VariableError, ValueError):
        return False
    return True


def _entry(e) -> dict[str, Any]:
    return {"ok": True, "scope": e.scope, "name": e.name, "value": e.value, "version": e.version,
            "reason": e.reason}
