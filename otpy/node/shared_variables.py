"""Bound variables written on another node: this node makes its own tree run them.

With ``[registry] storage = "postgresql://..."`` several nodes share one variable space. A
write of a bound variable (``program``, ``enabled``, ``replicas``) on node A is reconciled by A
before A stores it (``node.variable_writes``); node B hears of it from its own registry, which
folds in A's row and publishes ``VariableChanged`` on B (``otpy.variables.postgres``). This
module, B's side, subscribes to those events and reconciles B's tree as for a local write (make,
then break; nothing is written again: the value is stored already):

- a value this node runs already (its own write, or one it followed) only updates the version;
- a child that cannot start with it: the tree goes back to what it ran (declared = running),
  and the node says so in node.log and an event ``follow_failed`` naming the variable, the
  value and why; the stored value stays what A wrote (B runs the old one until a later write);
- done: an event ``variables_followed`` with the changes.

Each time the registry starts (the node's start, a restart after a crash), the bound values it
holds are compared with what the tree runs, and a newer one is followed, and every running
program resolves its configuration again: what other nodes wrote while nobody here listened
is not lost, and a tree that runs other values than the node holds (a way back that failed while
the registry hung) is reconciled with them (``VariableWrites.repair``). Only a node whose
registry uses a shared database runs this.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..variables.placement import REGISTRY_ID, REGISTRY_PROGRAM
from ..variables.storage import is_postgresql
from ..wire.protocol import NodeEvent

if TYPE_CHECKING:
    from .variable_writes import VariableWrites

log = logging.getLogger("otpy")


def shared_storage(root_spec: Any) -> str | None:
    """The PostgreSQL URL the tree's registry stores its values in, or None."""
    for child in getattr(root_spec, "children", ()):
        if child.id == REGISTRY_ID and getattr(child, "program", None) == REGISTRY_PROGRAM:
            storage = child.args.get("storage")
            return storage if is_postgresql(storage) else None
    return None


def read_shared_rows(url: str) -> tuple[int, list[tuple[str, str, Any, int]]]:
    """The stored rows in the shared database (``[registry] storage``), read once, without
    waiting: an unreachable one leaves the defaults, and the registry's start fails saying so
    (or, reached later, the registry's values are followed: ``SharedFollower``)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as db:
            if db.execute("SELECT to_regclass('otpy_registry_value')").fetchone()[0] is None:
                return 0, []
            meta = db.execute("SELECT value FROM otpy_registry_meta WHERE key = 'version'").fetchone()
            rows = [(scope, name, json.loads(value), version) for scope, name, value, version in
                    db.execute("SELECT scope, name, value, version FROM otpy_registry_value")]
    except psycopg.Error as exc:  # its text is the registry's to say (masked), at its own start
        log.debug("otpy: the shared database is not read (%s); bound variables start at their defaults",
                  type(exc).__name__)
        return 0, []
    return (meta[0] if meta else 0), rows


class SharedFollower:
    """Follows the bound variables other nodes write (see the module's docstring)."""

    def __init__(self, writes: "VariableWrites", endpoint: str):
        import zmq
        import zmq.asyncio

        self.writes = writes
        self._context = zmq.asyncio.Context()
        self._sub = self._context.socket(zmq.SUB)
        self._sub.linger = 0
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(endpoint)  # before the registry binds: ZeroMQ connects when it does
        self._tasks: set[asyncio.Task] = set()
        self.stopped = False
        self._spawn(self._receive())

    def _spawn(self, coro) -> None:
        if self.stopped:
            coro.close()
            return
        task = asyncio.ensure_future(self._logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _logged(self, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # an otpy bug: said in node.log, and the node goes on
            log.exception("otpy[%s]: following the shared variables failed", self.writes.node)

    def stop(self) -> None:
        """The node stops: nothing is followed from now on."""
        self.stopped = True
        for task in list(self._tasks):
            task.cancel()

    def registry_started(self) -> None:
        """The registry (re)started: follow what it holds that the tree does not run yet."""
        self._spawn(self._resync())

    async def _receive(self) -> None:
        import zmq

        from ..wire.protocol import VARIABLE_CHANGED

        while True:
            frames = [await self._sub.recv()]
            while await self._sub.poll(0, zmq.POLLIN):  # a set_many is several events: followed together
                frames.append(await self._sub.recv())
            changes: dict[str, tuple[Any, int]] = {}
            for frame in frames:
                try:
                    event = VARIABLE_CHANGED.decode(frame)
                except Exception:  # noqa: BLE001 - not ours to crash on: the registry is otpy's
                    continue
                if (key := f"{event.scope}.{event.name}") in self.writes.bound:
                    changes[key] = (event.value, event.version)
            if changes:
                await self.follow(changes)

    async def _resync(self) -> None:
        from ..wire.errors import CallError
        from ..wire.registry_protocol import GetValue, ValueEntry

        changes = {}
        try:
            registry = self.writes._registry()
            for key in sorted(self.writes.bound):
                scope, _, name = key.rpartition(".")
                entry = await registry.aask(GetValue(scope=scope, name=name))
                if isinstance(entry, ValueEntry) and entry.reason == "set":
                    changes[key] = (entry.value, entry.version)
        except CallError as exc:
            log.warning("otpy[%s]: cannot read the shared bound variables from the registry: %s",
                        self.writes.node, exc)
            return
        if changes:
            await self.follow(changes)
        self.writes.repair()  # a tree left running values nobody declares (a way back that failed) goes back
        await self._sync_knobs()

    async def _sync_knobs(self) -> None:
        """Every running program resolves its configuration again (``config_sync``): values
        other nodes wrote while this registry was not running were never published here."""
        from .config_sync import followers, sync_configs

        if (root := self.writes._root()) is None:
            return
        ids = list(followers(root, "global"))  # every chain ends in global: every running program
        if ids:
            late, refused = await sync_configs(self.writes.node, ids, self.writes.listeners, timeout=10.0)
            for child, why in refused.items():
                log.warning("otpy[%s]: child %r refused the shared values after the registry started: %s",
                            self.writes.node, child, why)

    async def follow(self, changes: dict[str, tuple[Any, int]]) -> None:
        """Make the tree run ``changes`` (``{SCOPE.NAME: (value, version)}``) that are newer than
        what it runs, as a local write would (make, then break), storing nothing."""
        writes = self.writes
        async with writes.lock:
            if self.stopped:
                return
            values = writes.values
            newer = {key: change for key, change in changes.items() if change[1] > values.version(key)}
            same = {key: version for key, (value, version) in newer.items() if values.values.get(key) == value}
            values.versions.update(same)
            todo = {key: change for key, change in newer.items() if key not in same}
            if not todo:
                return
            undo = values.update({key: value for key, (value, _) in todo.items()},
                                 {key: version for key, (_, version) in todo.items()})
            made: list = []
            failed = await writes._each("make", made)
            shown = ", ".join(f"{key} = {value!r} (version {version})" for key, (value, version) in todo.items())
            if failed is not None:
                back = await writes._undo(undo, made)
                self._report("follow_failed", f"another node set {shown}; this node cannot run it: "
                             f"{failed.detail}; " + (back or "it keeps running the previous value"))
                return
            broken: list = []
            await writes._each("break", broken)
            did = "; ".join(f"{c.action} {c.child}" for c in made + broken) or "nothing to change"
            self._report("variables_followed", f"another node set {shown}: {did}")

    def _report(self, kind: str, detail: str) -> None:
        from .event_lines import log_line

        root = self.writes._root()
        event = NodeEvent(kind=kind, node=self.writes.node, supervisor=root.spec.id if root else "",
                          detail=detail, time=time.time())
        level, *line = log_line(event)
        log.log(logging.WARNING if kind == "follow_failed" else level, *line)
        for listener in list(self.writes.listeners):
            listener(event)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sub.close(linger=0)
        self._context.term()
