"""Variables decide what runs: the node's side of a write, and the values it starts with.

The node keeps one ``BoundValues`` (``specs.bindings``): the value of every variable the
topology binds a spec field to (``program = { variable = "global.classifier" }``), and the
registry version of each. Every supervisor resolves a child with it when it starts it. A
``SetVariables`` (one scope, or several in ``scopes``) goes through here, one write at a time:

1. the registry checks the write without committing it (a dry run): refused, nothing happens;
2. make: the bound values change, and every supervisor, top down, does its replacements
   (make-before-break) and starts (``Supervisor.reconcile("make")``);
3. a target that fails to start: the values go back, the tree with them (what was replaced is
   replaced back, what was started stops; nothing had stopped yet), and the reply is
   ``start_failed`` naming the child and the reason. Nothing was stored;
3b. check: every running program whose scope chain holds a written scope (a target the make
   phase started among them) is asked whether it would run the write (``config_sync.check_configs``:
   its ``check_config`` over the configuration it would have, nothing stored); a refusal undoes
   the make phase as 3 does, and the reply is ``invalid`` naming the child and why. Nothing was
   stored, nothing restarted;
4. commit: the registry stores the write (``reconciled``, with the node's secret ``writer``:
   it refuses any other write of a bound variable). An unanswered commit is read back, not
   assumed lost (``_read_back``);
5. break: every supervisor does its stops (disabled children, replicas above the count);
6. knobs: every running program whose scope chain holds a written scope confirms it runs the
   new values (``config_sync``); the reply lists what changed, and names late programs;
7. a program whose ``on_config`` refused the values (``otpy.ConfigRefused``: it runs its old
   ones; one whose ``check_config`` refuses them refused at 3b already) undoes the write: the
   previous values are written again, through 2 to 6 without 3b (the programs that took the new
   ones get the old back), as a compare-and-set on the versions the write got (a value someone
   wrote meanwhile is kept, and the reply says so), and the reply is ``invalid``, naming who
   refused what, and a child that refused the previous values too (it runs the refused ones).
   Between 4 and 7 the new values are stored: a documented window, as the one above.

Going back (3, 3b, a refused or unanswered commit) is itself a reconciliation, and may fail: the
child it would start again cannot get its configuration from a registry that hangs on its
database, say. The tree then runs values nobody declares, so the node does not leave it so: it
says exactly what runs in the reply (``_tree_words``), and keeps going back (``_repairing``,
with a backoff) to the values the registry held before the write until the tree runs them
(declared = running), said in node.log. A write whose outcome was unknown and that was stored
after all reaches the tree as another node's write does (``node.shared_variables`` follows it);
a registry that starts again triggers the same check.

``expected`` (``{scope: {name: version}}``: ``otpy vars set --expected-version``) makes the
commit (and the dry run of 1) a compare-and-set in the registry's transaction.

Between 2 and 5 (a documented make-before-break window) a child that restarts is started with
the new values. A write that binds nothing skips 2, 3 and 5; one of bound variables only skips
6. ``dry_run`` answers the plan: the same ``Change``s, from each supervisor's ``plan``, with
nothing changed; the running programs are asked as in 3b (a target the write would start is
not: it is not started), and a refusal is the answer.

At node start, before the tree, ``stored_values`` reads what the registry's file holds for the
bound variables (the registry is not running yet: this node holds the run lock), so a node
started again runs what was stored, not the defaults.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from typing import Any, Callable

import msgspec

from ..specs.bindings import BoundValues, variables_of
from ..specs.model import SupervisorSpec
from ..supervision.spec_diff import describe
from ..variables.placement import REGISTRY_ID, REGISTRY_PROGRAM
from ..variables.scopes import ScopedValues, spaces_from_topology
from ..variables.storage import is_postgresql
from ..variables.types import VariableError
from ..wire.protocol import Change, Outcome
from .config_sync import SYNC_TIMEOUT, Listeners, Synced, check_configs, follower_pids, followers, sync_configs
from .supervisor import Supervisor

log = logging.getLogger("otpy")

REGISTRY_FILE = "registry.db"
READ_BACK_TIMEOUT = 30.0  # seconds to learn what became of an unanswered commit
REPAIR_DELAYS = (0.5, 5.0)  # seconds between two tries to make the tree run the declared values: first, most


def registry_args(root: SupervisorSpec) -> dict[str, Any] | None:
    """The args of the tree's registry child (its ``[variables]`` tables), or None without one."""
    for child in root.children:
        if child.id == REGISTRY_ID and getattr(child, "program", None) == REGISTRY_PROGRAM:
            return dict(child.args)
    return None


def bound_variable_problems(root: SupervisorSpec) -> list[str]:
    """Why the tree's bound fields cannot be resolved: a variable its ``[variables]`` (the
    registry child's tables) does not declare, of the wrong type or with no default. A topology
    file is checked so when it is read; a ``NodeSpec`` built in Python is checked here."""
    from ..topology.load import binding_problems

    return [f"{path}: {message}" for path, message in binding_problems(root, (registry_args(root) or {}).get("variables", {}))]


def stored_values(folder: str | os.PathLike, root: SupervisorSpec) -> BoundValues:
    """The values the tree's bound variables have: stored in ``folder``'s registry file (read
    only), else their defaults. A file the registry would refuse is not read here: the registry
    fails its own start over it, naming the file, and the node with it."""
    names = variables_of(root)
    args = registry_args(root)
    if not names or args is None:
        return BoundValues()
    store = ScopedValues(spaces_from_topology(args.get("variables", {})), args.get("parents", {}))
    try:
        from .shared_variables import read_shared_rows

        version, rows = (read_shared_rows(args["storage"]) if is_postgresql(args.get("storage"))
                         else _read_rows(os.path.join(folder, REGISTRY_FILE)))
        for dropped in store.load(version, rows):
            log.warning("otpy: a stored value is no longer accepted, its default is used: %s", dropped)
    except (OSError, sqlite3.Error, ValueError, TypeError) as exc:
        log.debug("otpy: the registry file is not read (%s); bound variables start at their defaults", exc)
    values, versions = {}, {}
    for name in sorted(names):
        scope, _, variable = name.rpartition(".")
        try:
            entry = store.get(scope, variable)
        except VariableError:
            continue  # not declared: the topology's check says so; a start resolving it fails naming it
        if entry.reason != "missing":
            values[name], versions[name] = entry.value, entry.version
    return BoundValues(values, versions)


def _read_rows(path: str) -> tuple[int, list[tuple[str, str, Any, int]]]:
    if not os.path.isfile(path) or os.path.islink(path):
        return 0, []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        meta = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        rows = [(scope, name, json.loads(value), version)
                for scope, name, value, version in db.execute("SELECT scope, name, value, version FROM value")]
    finally:
        db.close()
    return (meta[0] if meta else 0), rows


class VariableWrites:
    """``SetVariables`` for one node: its registry, its bound values, its supervisors."""

    def __init__(self, node: str, values: BoundValues, bound: set[str],
                 root: Callable[[], Supervisor | None], listeners: Listeners, writer: str = "") -> None:
        self.node = node
        self._writer = writer  # the secret the registry asks of a reconciled write
        self.listeners = listeners  # the node's: a sync hears a restarted child's "started"
        self.values = values
        self.bound = bound  # "SCOPE.NAME" of every variable the topology binds
        self._root = root
        self._caller = None  # an otpy.Caller to the registry, made at the first write
        self.lock = asyncio.Lock()  # writes change the shared values and the tree
        self._unchecked: dict[str, int] = {}  # child id -> the pid of its process without check_config
        self._follower = None  # a SharedFollower once a registry on a shared database started
        self._repair: asyncio.Task | None = None  # going back to the declared values, while it fails
        self.start_refusal = ""  # why the node's start failed, when a stored bound value is why
        self._stopping = False
        listeners.append(self._registry_event)

    def _registry_event(self, event) -> None:
        """The registry started (the node's start, a restart): on a shared database, follow the
        bound variables other nodes write (``node.shared_variables``), and what it holds now."""
        if event.kind == "node_stopping":
            self._stopping = True  # a stopping tree follows nothing more, nor goes back
            if self._follower is not None:
                self._follower.stop()
            if self._repair is not None:
                self._repair.cancel()
        if event.kind == "start_failed" and event.child and not self.start_refusal:
            self._start_failed(event.supervisor, event.child, event.detail)
        if event.kind != "started" or event.child != REGISTRY_ID:
            return
        if self._follower is None:
            from .shared_variables import SharedFollower, shared_storage

            if (root := self._root()) is None or not shared_storage(root.spec):
                return
            from ..host.runtime_dir import node_dir
            from ..variables.placement import events_endpoint

            self._follower = SharedFollower(self, events_endpoint(node_dir(self.node)))
        self._follower.registry_started()

    def _start_failed(self, supervisor: str, child: str, why: str) -> None:
        """A child failed to start while the node starts: the node does not start (OTP: a child
        that cannot start fails its supervisor's start). When the child is bound to a value the
        registry stores (written by this node, or by another on a shared database), the node's
        log says so: the variable, its value and version, where it is stored, and what to do."""
        from ..specs.bindings import bindings
        from ..specs.values import mask_url
        from .shared_variables import shared_storage

        root = self._root()
        if root is None or root.started_at is not None:
            return  # a running tree: its supervisor restarts the child, or gives up, as any
        found = [b.bound.variable for b in bindings(root.spec, "") if b.supervisor == supervisor and (
            b.child == child or (b.template and child.rpartition("-")[0] == b.child))]
        stored = [(key, self.values.values.get(key), version) for key in dict.fromkeys(found)
                  if (version := self.values.version(key)) > 0]
        if not stored:
            return
        url = shared_storage(root.spec)
        where = (f"the shared database at {mask_url(url)} (any node on it may have written it)" if url
                 else "this node's registry")
        shown = ", ".join(f"{key} = {value!r} (version {version})" for key, value, version in stored)
        fix = "; ".join(f"otpy vars set {key} VALUE --node NODE" for key, _, _ in stored)
        self.start_refusal = (
            f"child {child!r} cannot start with {shown}, stored in {where}: {why}; set it to a value this node "
            f"can run ({fix}, on a node that runs), or make the program start on this host, then start this "
            "node again")
        log.error("otpy[%s]: %s", self.node, self.start_refusal)

    def start_failure(self, message: str) -> str:
        """``message`` (why the tree did not start), with the stored bound value that is why, if one is."""
        return f"{message}; {self.start_refusal}" if self.start_refusal else message

    def registry_problems(self, spec, replacing: str | None = None) -> list[str]:
        """A spec from the wire may neither replace the node's registry nor add another one: the
        registry holds what the tree runs, and only the node gives it its secret and its list of
        bound variables (a registry made over the wire would store bound values unguarded)."""
        from ..specs.model import walk

        if replacing == REGISTRY_ID:
            return [f"{REGISTRY_ID}: the node's registry is not replaced over the wire; restart the node to change it"]
        return [f"{sub.id}: program {REGISTRY_PROGRAM} is the node's own registry; a topology's [variables] "
                "makes it" for _, sub in walk(spec) if getattr(sub, "program", None) == REGISTRY_PROGRAM]

    def unknown_bindings(self, spec) -> list[str]:
        """A spec from the wire may bind only the variables the topology binds: those the node
        holds values for and the registry reconciles (any other would change behind its back)."""
        from ..specs.bindings import bindings

        known = ", ".join(sorted(self.bound)) or "none"
        return [f"{b.path}: {b.bound.variable} is not a variable this node's topology "
                f"binds (bindable here: {known})" for b in bindings(spec, "") if b.bound.variable not in self.bound]

    def _registry(self):
        from ..variables.client import RegistryClient
        from ..wire.calls import Caller

        if self._caller is None:
            self._caller = Caller(self.node)
        return RegistryClient(self._caller)

    async def close(self) -> None:
        """Close the caller (a node service: closed after the tree stopped)."""
        if self._registry_event in self.listeners:
            self.listeners.remove(self._registry_event)
        if self._follower is not None:
            await self._follower.close()
            self._follower = None
        if self._repair is not None:
            self._repair.cancel()
            await asyncio.gather(self._repair, return_exceptions=True)
        if self._caller is not None:
            self._caller.close()
            self._caller = None

    async def set(self, config: dict[str, dict[str, Any]], *, dry_run: bool = False,
                  expected: dict[str, dict[str, int]] | None = None) -> Outcome:
        """Set ``config`` (``{scope: {name: value}}``) once the tree runs it (see the module's
        docstring): all or nothing, one write at a time, from the control socket and the
        Python API alike. ``expected`` (``{scope: {name: version}}``, 0: never set): a
        compare-and-set the registry makes in the same transaction as the commit."""
        async with self.lock:
            return await self._set({scope: dict(values) for scope, values in config.items() if values}, dry_run,
                                   expected=expected or {})

    async def _set(self, config: dict[str, dict[str, Any]], dry_run: bool, undoing: bool = False,
                   expected: dict[str, dict[str, int]] | None = None) -> Outcome:
        from ..wire.errors import CallError, RemoteError
        from ..wire.registry_protocol import RegistryRefusal, SetValues, WrittenMany

        if not config:
            return Outcome("ok")
        expected = expected or {}
        bound = {f"{scope}.{name}": value for scope, values in config.items() for name, value in values.items()
                 if f"{scope}.{name}" in self.bound}
        try:
            registry = self._registry()
            checked = await registry.aask(SetValues(values=config, dry_run=True, expected=expected))
            if isinstance(checked, RegistryRefusal):
                return _refused(checked)
        except RemoteError:
            raise  # the registry program failed on it: otpy's bug, answered as internal
        except CallError as exc:
            return Outcome("unavailable", detail=f"the registry did not answer: {exc}")
        sets = [Change(action="set", scope=scope, name=name, before=checked.before.get(scope, {}).get(name),
                       after=value) for scope, values in config.items() for name, value in values.items()]
        if dry_run:  # the same questions, nothing changed (a target a bound change would start is not asked)
            if refused := await self._check(config):
                return Outcome("invalid", detail=f"{_refusals(refused)} (dry run: nothing changed)")
            return Outcome("ok", changes=sets + self.plan(bound))
        made: list[Change] = []
        undo = self.values.update(bound)
        if bound and (failed := await self._each("make", made)) is not None:
            back = await self._undo(undo, made)
            return Outcome("start_failed", detail=f"{failed.detail}; " + (
                "the tree is as it was and nothing was stored" if back is None else f"nothing was stored; {back}"))
        if not undoing and (refused := await self._check(config)):
            back = await self._undo(undo, made) if bound else None
            return Outcome("invalid", detail=f"{_refusals(refused)}; nothing was stored and " + (
                "every program runs what it ran" if back is None else back))
        try:
            written = await registry.aask(SetValues(values=config, reconciled=True, writer=self._writer,
                                                    expected=expected))
        except CallError as exc:
            written = await self._read_back(config, checked.versions, exc)
        if not isinstance(written, WrittenMany):
            outcome = written if isinstance(written, Outcome) else _refused(written)
            if bound:  # unknown or refused: the tree goes back to what the registry holds, and says what runs
                back = await self._undo(undo, made)
                outcome = msgspec.structs.replace(outcome, detail="; ".join(filter(None, [
                    outcome.detail, back or f"the tree went back: {self._running(made)}"])))
            return outcome
        self.values.versions.update({key: version for scope, versions in written.versions.items()
                                     for name, version in versions.items()
                                     if (key := f"{scope}.{name}") in bound})
        broken: list[Change] = []
        if bound:
            await self._each("break", broken)  # stops: they cannot fail
        late, refused = await self._sync(config, bound)
        if refused and not undoing:
            return await self._undo_refused(config, checked.before, refused, written.versions)
        detail = (f"stored; {len(late)} program(s) had not confirmed running it after {SYNC_TIMEOUT:g} s: "
                  f"{', '.join(late)}") if late else ""
        if refused:  # refused even the values it ran before: said, not undone again
            detail = "; ".join(filter(None, [detail, "; ".join(
                f"child {child!r} refused the previous values too ({why}): it runs the refused ones, which are "
                "no longer stored" for child, why in refused.items())]))
        return Outcome("ok", detail=detail, changes=sets + made + broken)

    async def _undo_refused(self, config: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]],
                            refused: dict[str, str], versions: dict[str, dict[str, int]]) -> Outcome:
        """Step 7: a program refused the write in ``on_config`` (it had no ``check_config``, or that
        let the values through); the values before it (set or default) are written again as a
        compare-and-set on the ``versions`` the write got (a value someone wrote meanwhile is
        kept, and said), and the reply is ``invalid``, naming who refused what and what is
        stored and run after the undo."""
        previous = {scope: {name: before[scope][name] for name in values if name in before.get(scope, {})}
                    for scope, values in config.items()}
        previous = {scope: values for scope, values in previous.items() if values}
        expected = {scope: {name: versions.get(scope, {}).get(name, 0) for name in values}
                    for scope, values in previous.items()}
        back = await self._set(previous, False, undoing=True, expected=expected)
        if back.ok and not back.detail:
            tail = "the previous values are stored and run again"
        elif back.ok:
            tail = f"the previous values are stored; {back.detail}"
        elif "expected version" in back.detail:
            tail = (f"the previous values were not written back: another write came meanwhile, and is kept "
                    f"({back.detail}); the refused values may still be run by the programs that took them")
        else:
            tail = (f"writing the previous values back failed too ({back.outcome}: {back.detail}); the refused "
                    "values are stored")
        return Outcome("invalid", detail=f"{_refusals(refused)}; {tail}")

    async def _check(self, config: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Before the commit: the running programs the write concerns (a target the make phase
        started among them) that would not run it (``check_configs``: id -> why)."""
        root = self._root()
        if root is None:
            return {}
        pids = {child: pid for scope in config for child, pid in follower_pids(root, scope)}
        ids = [child for child, pid in pids.items() if pid is None or self._unchecked.get(child) != pid]
        refused, unchecked = await check_configs(self.node, ids, config)
        self._unchecked.update((child, pids[child]) for child in unchecked)  # that process has no check_config
        return refused

    async def _read_back(self, config: dict[str, dict[str, Any]], versions: dict[str, dict[str, int]],
                         error: Exception):
        """The commit was not answered (the registry stalled or died): whether it was stored.

        The request may still be waiting at the registry, which serves one call at a time, in
        order: a read sent after it, given time, says what became of it. The write's versions
        (the dry run's, or later ones) with the values written mean stored; anything else, not stored. No answer at all:
        unknown, and the tree goes back to the old values (a registry that died took the
        request with it); the reply says so."""
        from ..variables.client import RegistryClient
        from ..wire.errors import CallError
        from ..wire.registry_protocol import GetValue, RegistryRefusal, WrittenMany

        reader = RegistryClient(self._caller, READ_BACK_TIMEOUT)
        try:
            stored = [await reader.aask(GetValue(scope=scope, name=name)) for scope, values in config.items()
                      for name in values]
        except CallError as again:
            return Outcome("unavailable", detail=f"the registry did not answer ({error}; then {again}): whether the "
                                                 "write was stored is unknown (see otpy vars get, and write again)")
        if all(not isinstance(entry, RegistryRefusal) and entry.value == config[entry.scope][entry.name]
               and entry.version >= versions.get(entry.scope, {}).get(entry.name, 0) for entry in stored):
            return WrittenMany(versions={scope: {e.name: e.version for e in stored if e.scope == scope} for scope in config})
        return Outcome("unavailable", detail=f"the registry did not answer: {error}; nothing was stored")

    async def _sync(self, config: dict[str, dict[str, Any]], bound: dict[str, Any]) -> Synced:
        """Knobs: wait until the programs run them (the ids that did not confirm, and those that
        refused). A write of bound variables only was carried out by the reconciliation already
        (a program's on_config hears of it as it comes)."""
        root = self._root()
        if root is None or len(bound) == sum(len(values) for values in config.values()):
            return Synced([], {})
        await root.sync_standbys(set(config))  # first: a restart for this write promotes a standby
        ids = list(dict.fromkeys(child for scope in config for child in followers(root, scope)))
        return await sync_configs(self.node, ids, self.listeners)

    def plan(self, bound: dict[str, Any]) -> list[Change]:
        """What reconciling the tree with ``bound`` set would do (nothing is changed)."""
        if not bound or (root := self._root()) is None:
            return []
        undo = self.values.update(bound)
        try:
            return [change for sup in root.supervisors() for change in sup.plan()]
        finally:
            self.values.restore(undo)

    async def _each(self, phase: str, done: list[Change]) -> Outcome | None:
        """``phase`` of the reconciliation in every supervisor, top down (``done`` gets what
        changed); the first failure ends it. A supervisor that exited meanwhile (its parent
        restarts it) is passed over: its next incarnation starts its children with these values."""
        root = self._root()
        for sup in root.supervisors() if root is not None else []:
            outcome = await sup.reconcile(phase)
            done += outcome.changes
            if not outcome.ok and not sup.exited.done():
                return outcome
        return None

    async def _undo(self, undo: dict[str, tuple[Any, int]], made: list[Change] = ()) -> str | None:
        """A refused write: the values back, and the tree with them (what the make phase
        replaced or started is replaced back or stopped; nothing was stopped yet). None when
        the tree runs them again; else what it runs, in words, and the node keeps going back
        (``_repairing``) until it does."""
        self.values.restore(undo)
        if (failure := await self._each("all", [])) is None:
            return None
        drift = self._tree_words()
        log.warning("otpy[%s]: going back to the stored values failed (%s): %s; trying again", self.node,
                    failure.detail, drift)
        self.repair(REPAIR_DELAYS[0])
        return (f"going back to the stored values failed ({failure.detail}): {drift or self._running(made)}; the "
                "node keeps going back until the tree runs the stored values (said in node.log)")

    def _tree_words(self) -> str:
        """Where the tree does not run what its values declare, in words ("" when it does)."""
        root = self._root()
        steps = [change for sup in (root.supervisors() if root is not None else []) for change in sup.plan()]
        return "; ".join(
            f"child {c.child!r} runs {c.before} where the stored values say {c.after}" if c.action == "reconfigure"
            else f"child {c.child!r} is stopped where the stored values start it" if c.action == "start"
            else f"child {c.child!r} runs where the stored values stop it" for c in steps)

    def _running(self, made: list[Change]) -> str:
        """What the children a write changed run now, in words."""
        root = self._root()
        sups = {sup.spec.id: sup for sup in root.supervisors()} if root is not None else {}
        said = []
        for change in {(c.supervisor, c.child): c for c in made}.values():
            child = sups[change.supervisor].machine.children.get(change.child) if change.supervisor in sups else None
            if child is not None and child.state == "running" and child.running is not None:
                said.append(f"child {change.child!r} runs {describe(child.running)} (pid {child.pid})")
            else:
                said.append(f"child {change.child!r} is {child.state if child is not None else 'gone'}")
        return ", ".join(said) or "the tree runs the stored values"

    def repair(self, delay: float = 0.0) -> None:
        """Make the tree run the declared values again, in the background, until it does (see
        the module's docstring); one at a time."""
        if not self._stopping and (self._repair is None or self._repair.done()):
            self._repair = asyncio.ensure_future(self._repairing(delay))

    async def _repairing(self, delay: float) -> None:
        tries = 0
        while True:
            await asyncio.sleep(delay)
            async with self.lock:
                if self._stopping:
                    return
                if not (drift := self._tree_words()):
                    if tries:
                        log.warning("otpy[%s]: the tree runs the stored values again", self.node)
                    return
                tries += 1
                failure = await self._each("all", [])
                if failure is None:
                    log.warning("otpy[%s]: the tree runs the stored values again (it ran other ones: %s)",
                                self.node, drift)
                    return
                log.warning("otpy[%s]: the tree still does not run the stored values (%s; %s); trying again",
                            self.node, drift, failure.detail)
            delay = min(max(delay, REPAIR_DELAYS[0]) * 2, REPAIR_DELAYS[1])


def _refusals(refused: dict[str, str]) -> str:
    return "; ".join(f"child {child!r} refused the new values: {why}" for child, why in refused.items())


def _refused(refusal) -> Outcome:
    if refusal.kind == "internal":
        raise RuntimeError(f"the registry failed: {'; '.join(refusal.problems)}")
    if refusal.kind == "unavailable":  # the shared database is lost: the tree runs what it ran
        return Outcome("unavailable", detail="; ".join(refusal.problems))
    return Outcome("invalid", detail="; ".join(refusal.problems) or refusal.kind)
