"""A reload: the running tree made to match its topology file again (``otpy reload``, SIGHUP),
as ``supervisorctl update`` does.

The node reads the file itself (``Reload.path``, empty: the file it was started from) and
checks it as ``otpy start`` would; an invalid file, or a change that cannot be made while the
node runs (its name, ``control_tcp``, ``[logs]``, the folders programs are imported from,
the root's id, ``[variables]`` and ``[constraints]``: the registry), is refused (``invalid``)
and nothing changes. Otherwise it compares the file with the one it runs (``node.spec``, and
``node.cluster``: a ``[cluster]`` change is applied first, in place, ``apply_cluster``), then
supervisor by supervisor, top down (``supervision.spec_diff``):

1. make, top down: a supervisor's own settings and the declared specs of its children that
   need no restart are updated in place (``Adopt``, OTP's ``code_change``); added children are
   started (``StartChild``: they go last in start order); changed running children are
   replaced make-before-break (``Reconfigure``); then the supervisor reconciles (a child
   switched on starts, a dynamic supervisor's replicas follow their templates).
2. break, bottom up: the reconcile's stops (a child switched off, replicas above a count),
   then the children the file removed, stopped then deleted.
3. ``code``: every running program child (the registry aside) not replaced by this reload is
   replaced, make-before-break, one at a time, so it runs its source as it is on disk now;
   every hot standby is retired first and made again (``StandbyPool.renew``).

The first failure ends it (``start_failed``: the failed child keeps running its old spec;
what was done stays done and is listed in ``changes``). The node then compares the next
file with what runs (``declared_tree``), so applying the fixed file finishes the work and
the old file undoes it. ``dry_run`` answers the plan. A reload that
changed the tree is published as a ``reloaded`` event. Reloads and variable writes are
carried out one at a time (both make the tree match what is declared).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import msgspec

from ..host.runtime_dir import RuntimeDirError
from ..specs.bindings import variables_of
from ..specs.model import AnySpec, ChildSpec, DynamicSupervisorSpec, NodeSpec, SupervisorSpec
from ..supervision import reconcile
from ..supervision.spec_diff import Adopt, AnySupervisor, adopted, describe, diff, replica_takeovers
from ..topology.load import TopologyError, load_topology
from ..variables.scopes import parents_of
from ..variables.placement import REGISTRY_ID, WRITER_ENV, with_writer
from ..wire.protocol import Change, DeleteChild, NodeEvent, Outcome, Reconfigure, Reload, StartChild, TerminateChild
from .supervisor import Supervisor



async def reload_topology(node: Any, request: Reload) -> Outcome:
    """The reply to ``request`` on ``node`` (an ``AsyncNode``): see the module's docstring."""
    if node.root is None or not node.started:
        return Outcome("not_running", detail=f"node {node.name!r} is still starting; reload once it runs")
    path = request.path or node.topology_path
    if not path:
        return Outcome("invalid", detail="this node was not started from a topology file: give the file to read "
                                         "(otpy reload FILE)")
    try:
        topology = await asyncio.to_thread(load_topology, path)
    except TopologyError as exc:
        return Outcome("invalid", detail=str(exc))
    if problems := unrealisable(node.spec, topology.node) or takeovers(node, topology.node.root):
        return Outcome("invalid", detail="; ".join(problems))
    async with node.writes.lock:  # a reload and a variable write both make the tree match what is declared
        work = _Reload(node, request.dry_run)
        if (cluster := cluster_change(getattr(node, "cluster", None), topology.cluster)) is not None:
            work.changes.append(cluster)  # first: a child this reload starts may call AGENT@NODE at once
            if not request.dry_run:
                try:
                    await asyncio.to_thread(apply_cluster, node, topology.cluster)
                except (OSError, RuntimeDirError) as exc:  # its folder: nothing else was changed
                    return Outcome("start_failed", detail=f"[cluster]: the node's cluster file was not written: {exc}")
        outcome = await work.run(node.spec.root, topology.node.root, request.code)
        if request.dry_run:
            return outcome
        # What the next reload compares with: the file, or (stopped half way) what runs now.
        node.adopt_spec(topology.node if outcome.ok else msgspec.structs.replace(
            node.spec, root=declared_tree(node, node.spec.root, topology.node.root)))
        if outcome.changes or not outcome.ok:
            node._report(NodeEvent(kind="reloaded", node=node.name, supervisor=node.spec.root.id,
                                   detail=f"{path}: {reload_summary(outcome)}", time=time.time()))
        return outcome


def reload_summary(outcome: Outcome) -> str:
    """One line for a log: what a reload did, or why it did nothing."""
    if not outcome.ok:
        done = f" after {len(outcome.changes)} change(s)" if outcome.changes else ""
        return f"{outcome.outcome}{done}: {outcome.detail}"
    return f"{len(outcome.changes)} change(s)" if outcome.changes else "no changes"


RESTART = "restart the node to apply it (otpy stop, then otpy start)"


def unrealisable(old: NodeSpec, new: NodeSpec) -> list[str]:
    """What of ``new`` a running node started from ``old`` cannot take: each names the field."""
    problems = [f"{what}: {_show(before)} -> {_show(after)} cannot change while the node runs; {RESTART}"
                for what, before, after in (
                    ("[node] name", old.name, new.name), ("[node] control_tcp", old.control_tcp, new.control_tcp),
                    ("[logs]", old.logs, new.logs),
                    ("the program folders (the folder of the file's path as given, for a symlink its own folder, "
                     "not its target's; and the current directory)", old.program_folders,
                     new.program_folders),
                    ("the root supervisor's id", old.root.id, new.root.id)) if before != after]
    if (storage_before := _storage(old.root)) != (storage_now := _storage(new.root)):
        problems.append(f"[registry] storage: {_masked(storage_before)} -> {_masked(storage_now)} cannot change while "
                        f"the node runs (its registry holds the values there); {RESTART}")
    if (bound_before := variables_of(old.root)) != (bound_now := variables_of(new.root)):
        problems.append(f"the variables the tree binds: {_show(sorted(bound_before))} -> {_show(sorted(bound_now))} "
                        f"cannot change while the node runs (its registry guards them); {RESTART}")
    elif _registry(old.root) != _registry(new.root):
        problems.append(f"[variables] or [constraints] changed: the node's registry is not replaced while it runs; "
                        f"{RESTART} (stored values are kept)")
    elif _registry(new.root) is not None:
        before, now = parents_of(old.root), parents_of(new.root)
        problems += [f"child {id!r} moved from {before[id]!r} to {now[id]!r}: the registry keeps the scopes of a "
                     f"child it knows; {RESTART}" for id in sorted(before.keys() & now.keys()) if before[id] != now[id]]
    return problems


def takeovers(node: Any, new: SupervisorSpec) -> list[str]:
    """Run-time children of the running dynamic supervisors that ``new``'s replicas would take
    over (``spec_diff.replica_takeovers``): refused before anything changes."""
    from ..specs.model import walk

    before = {spec.id: spec for _, spec in walk(node.spec.root) if isinstance(spec, DynamicSupervisorSpec)}
    problems = []
    for _, spec in walk(new):
        if isinstance(spec, DynamicSupervisorSpec) and spec.id in before and \
                (sup := node.root.find_supervisor(spec.id)) is not None:
            problems += replica_takeovers(before[spec.id], spec, sup.machine.children.values(),
                                          node.root.values.resolve)
    return problems


CLUSTER = "[cluster]"  # a cluster change's ``Change.name``


def cluster_change(old: Any, new: Any) -> Change | None:
    """The change from cluster ``old`` to ``new`` (``ClusterSpec``, resolved; None: no
    ``[cluster]``), None if they are the same: ``update``, ``name`` "[cluster]", ``before`` and
    ``after`` each ``{"source": where it is declared, "nodes": {name: {"endpoint", "keys"}}}``
    (None: no cluster)."""
    if old == new:
        return None
    return Change(action="update", name=CLUSTER, before=_cluster_nodes(old), after=_cluster_nodes(new))


def _cluster_nodes(cluster: Any) -> dict[str, Any] | None:
    if cluster is None:
        return None
    return {"source": cluster.source, "nodes": {name: {"endpoint": entry.endpoint, "keys": entry.keys}
                                                for name, entry in sorted(cluster.nodes.items())}}


def apply_cluster(node: Any, cluster: Any) -> None:
    """Node ``node`` runs with ``cluster`` from now on: its ``cluster`` and the file its agents'
    ``Caller`` and ``otpy call`` read (``calls.node_cluster``), replaced whole at once (a reader
    never sees half a file); no ``[cluster]`` removes the file. A running ``Caller`` reads it
    again at its next ``AGENT@NODE`` call. Nothing of the tree is replaced."""
    from ..host.runtime_dir import node_dir, write_private
    from ..wire.remote_cluster import CLUSTER_FILE, encode_cluster

    path = node_dir(node.name) / CLUSTER_FILE
    if cluster is None:
        path.unlink(missing_ok=True)
    else:
        staged = path.with_name(CLUSTER_FILE + ".new")
        write_private(staged, encode_cluster(cluster))
        os.replace(staged, path)
    node.cluster = cluster


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, list) else ", ".join(value) or "none"


def _registry(root: SupervisorSpec) -> AnySpec | None:
    """The root's registry child without the tree's scopes (``parents``: a child added at run
    time, or by a reload, tells the registry its supervisors itself)."""
    registry = next((child for child in root.children if child.id == REGISTRY_ID), None)
    if isinstance(registry, ChildSpec) and {"parents", "storage"} & registry.args.keys():
        return msgspec.structs.replace(registry, args={k: v for k, v in registry.args.items()
                                                       if k not in ("parents", "storage")})  # storage: said apart
    return registry


def _storage(root: SupervisorSpec) -> str | None:
    """``[registry] storage`` as the root's registry child holds it (None: the node's file)."""
    registry = next((child for child in root.children if child.id == REGISTRY_ID), None)
    return registry.args.get("storage") if isinstance(registry, ChildSpec) else None


def _masked(storage: str | None) -> str:
    from ..specs.values import mask_url

    return repr(mask_url(storage)) if storage else "none (the node's file)"


def declared_tree(node: Any, old: SupervisorSpec, new: SupervisorSpec) -> SupervisorSpec:
    """The tree a reload that stopped half way leaves: each supervisor's settings and the
    declared specs of its children now, of the children either file has (not those an
    operator added at run time). A reload compares the next file with it, so what was done
    is not done again and what was not is."""
    from ..specs.model import walk

    files = {spec.id for _, spec in walk(old)} | {spec.id for _, spec in walk(new)}
    root = _declared(node.root, files)
    children = tuple(child for child in old.children if child.id == REGISTRY_ID)  # as the file has it
    return msgspec.structs.replace(root, children=children + tuple(c for c in root.children if c.id != REGISTRY_ID))


def _declared(sup: Supervisor, files: set[str]) -> AnySupervisor:
    if isinstance(sup.spec, DynamicSupervisorSpec):
        return sup.spec
    children = []
    for id in sup.machine.order:
        child = sup.machine.children[id]
        if id not in files:
            continue
        below = sup.find_supervisor(id) if not isinstance(child.spec, ChildSpec) and child.state == "running" else None
        children.append(_declared(below, files) if below is not None else child.spec)
    return msgspec.structs.replace(sup.spec, children=tuple(children))


def _without_registry(root: SupervisorSpec) -> SupervisorSpec:
    return msgspec.structs.replace(root, children=tuple(c for c in root.children if c.id != REGISTRY_ID))


class _Reload:
    """One reload's work on one node: the make steps top down, the break steps bottom up."""

    def __init__(self, node: Any, dry_run: bool) -> None:
        self.node = node
        self.dry_run = dry_run
        self.resolve = node.root.values.resolve
        self.changes: list[Change] = []
        self.breaks: list[tuple[Supervisor, list[Change], list[str]]] = []  # top down; carried out reversed
        self.replaced: set[str] = set()  # ids this reload started or replaced: --code leaves them
        self.moved: set[str] = set()  # ids moved to another supervisor: stopped first (``_moves``)

    async def run(self, old: SupervisorSpec, new: SupervisorSpec, code: bool) -> Outcome:
        failed = await self._moves(old, new)
        failed = failed or await self._make(self.node.root, old, new)
        for sup, planned, stops in reversed(self.breaks):
            failed = failed or await self._break(sup, planned, stops)
        if failed is None and code:
            failed = await self._code()
        if failed is not None:
            return Outcome("start_failed", detail=failed, changes=self.changes)
        return Outcome("ok", changes=self.changes)

    # --- moves: break, then make (the one gap a reload leaves) ---------------------------------

    async def _moves(self, old: SupervisorSpec, new: SupervisorSpec) -> str | None:
        """Stop and delete each child the file moved to another supervisor, before anything
        else: ids are unique in a node, so the new one cannot start beside the old one (as
        ``supervisorctl update`` stops a changed group, then starts it). The make step then
        starts it under its new supervisor; the old supervisor's removal finds it gone."""
        before, now = parents_of(old), parents_of(new)
        for id in [id for id in before if id in now and before[id] != now[id]]:
            sup = self.node.root.find_supervisor(before[id])
            child = sup.machine.children.get(id) if sup is not None else None
            if child is None:
                continue
            change = Change(action="stop", supervisor=before[id], child=id, before=reconcile.program_of(child.running),
                            pid=child.pid)
            self.changes.append(change)
            self.moved.add(id)
            if self.dry_run:
                continue
            stopped = _outcome(await self.node.handle(TerminateChild(0, id, before[id])))
            if not stopped.ok and stopped.outcome != "not_found":
                return f"child {id!r} (under {before[id]!r}) was not stopped: {stopped.detail or stopped.outcome}"
            await self.node.handle(DeleteChild(0, id, before[id]))
        return None

    # --- make: settings in place, starts, replacements, top down ------------------------------

    async def _make(self, sup: Supervisor, old: AnySupervisor, new: AnySupervisor) -> str | None:
        table = sup.machine.children
        if sup is self.node.root:  # the registry is the node's, not a reload's (``unrealisable``)
            found = diff(_without_registry(old), _without_registry(new), table.values(), self.resolve)
        else:
            found = diff(old, new, table.values(), self.resolve)
        spec = self._own(sup, new)
        request = Adopt(spec, found.adopt)
        if found.update is not None:
            self.changes.append(found.update)
        self.changes += found.updates  # children not running: their new spec runs at their next start
        if self.dry_run:
            self._plan(sup, request, found.starts, found.replaces, found.stops)
        else:
            if sup.spec != spec or found.adopt:
                adopted_ = await sup.call(request)
                if not adopted_.ok:
                    return f"supervisor {sup.spec.id!r}: {adopted_.detail or adopted_.outcome}"
                sup.spec = spec
            for child in found.starts:
                if (failed := await self._apply(StartChild(0, sup.spec.id, child), "start", sup, child)) is not None:
                    return failed
            for id, child in found.replaces:
                before = describe(table[id].running)
                if (failed := await self._apply(Reconfigure(0, sup.spec.id, id, child), "reconfigure", sup, child,
                                                before)) is not None:
                    return failed
            reconciled = await sup.reconcile("make")
            self.changes += reconciled.changes
            self.replaced.update(c.child for c in reconciled.changes)
            if not reconciled.ok:
                return reconciled.detail
            self.breaks.append((sup, [], found.stops))
        for old_sub, new_sub in found.nested:
            sub = sup.find_supervisor(new_sub.id)
            if sub is not None and (failed := await self._make(sub, old_sub, new_sub)) is not None:
                return failed
        return None

    def _own(self, sup: Supervisor, new: AnySupervisor) -> AnySupervisor:
        """``new`` as ``sup`` runs it: the root keeps the node's secret in its registry's env."""
        if sup is not self.node.root or (registry := _registry(sup.spec)) is None:
            return new
        return with_writer(new, getattr(registry, "env", {}).get(WRITER_ENV, ""))

    async def _apply(self, request: StartChild | Reconfigure, action: str, sup: Supervisor, child: AnySpec,
                     before: str | None = None) -> str | None:
        """Ask the node (its checks, then the supervisor); the change, or why it failed."""
        done = _outcome(await self.node.handle(request))
        if not done.ok:
            return f"child {child.id!r} (under {sup.spec.id!r}): {done.detail or done.outcome}"
        self.replaced.add(child.id)
        show = describe if action == "reconfigure" else reconcile.program_of  # a command's argv, not None
        self.changes.append(Change(action=action, supervisor=sup.spec.id, child=child.id, before=before,
                                   after=show(_resolved(self.resolve, child)), pid=done.pid))
        return None

    # --- break: stops, bottom up ---------------------------------------------------------------

    async def _break(self, sup: Supervisor, planned: list[Change], stops: list[str]) -> str | None:
        if self.dry_run:
            self.changes += planned
            return None
        reconciled = await sup.reconcile("break")
        self.changes += reconciled.changes
        for id in stops:
            child = sup.machine.children.get(id)
            if child is None:
                continue
            change = Change(action="stop", supervisor=sup.spec.id, child=id, before=reconcile.program_of(child.running),
                            pid=child.pid)
            stopped = _outcome(await self.node.handle(TerminateChild(0, id, sup.spec.id)))
            if not stopped.ok and stopped.outcome != "not_found":
                return f"child {id!r} (under {sup.spec.id!r}) was not stopped: {stopped.detail or stopped.outcome}"
            await self.node.handle(DeleteChild(0, id, sup.spec.id))  # a dynamic supervisor's: gone already
            self.changes.append(change)
        return None

    # --- a dry run: the same steps, planned ---------------------------------------------------

    def _plan(self, sup: Supervisor, request: Adopt, starts: list[AnySpec], replaces: list[tuple[str, AnySpec]],
              stops: list[str]) -> None:
        table = sup.machine.children
        for child in starts:
            self.changes.append(Change(action="start", supervisor=sup.spec.id, child=child.id,
                                       after=reconcile.program_of(_resolved(self.resolve, child))))
        for id, child in replaces:
            self.replaced.add(id)
            self.changes.append(Change(action="reconfigure", supervisor=sup.spec.id, child=id,
                                       before=describe(table[id].running),
                                       after=describe(_resolved(self.resolve, child))))
        spec = request.spec
        templates = ({n: t for n, t in spec.templates.items() if t.replicas is not None}
                     if isinstance(spec, DynamicSupervisorSpec) else None)
        steps = reconcile.plan(adopted(table.values(), request), self.resolve, sup.spec.id, templates,
                               getattr(spec, "max_children", None), "all")
        self.changes += [step.change for step in steps if step.action in ("start", "replace")]
        self.replaced.update(step.id for step in steps if step.action in ("start", "replace"))
        planned = [step.change for step in steps if step.action in ("stop", "remove")]
        planned += [Change(action="stop", supervisor=sup.spec.id, child=id,
                           before=reconcile.program_of(table[id].running), pid=table[id].pid)
                    for id in stops if id not in self.moved]
        self.breaks.append((sup, planned, stops))

    # --- code: every program child replaced, one at a time -----------------------------------

    async def _code(self) -> str | None:
        if not self.dry_run:  # hot standbys hold the code imported before the edit (in setup() too):
            self.node.root._processes.standbys.renew()  # every one goes, new ones are made from the disk
        for sup in self.node.root.supervisors():
            for id in sup.machine.order:
                child = sup.machine.children.get(id)
                if child is None or child.state != "running" or id == REGISTRY_ID or id in self.replaced:
                    continue
                program = reconcile.program_of(child.running)
                if program is None:  # a command, a supervisor
                    continue
                if self.dry_run:
                    self.changes.append(Change(action="reconfigure", supervisor=sup.spec.id, child=id,
                                               before=program, after=program))
                    continue
                if (failed := await self._apply(Reconfigure(0, sup.spec.id, id, child.spec), "reconfigure", sup,
                                                child.spec, program)) is not None:
                    return failed
        return None


def _outcome(reply: Any) -> Outcome:
    """A reply as an outcome: a refusal (the node began to stop meanwhile) is a failure."""
    return reply if isinstance(reply, Outcome) else Outcome(reply.kind, detail=reply.message)


def _resolved(resolve, spec: AnySpec) -> AnySpec | None:
    return reconcile.try_resolve(resolve, spec) if isinstance(spec, ChildSpec) else spec

