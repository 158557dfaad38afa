"""A node: one supervision tree, its process manager, and the operations OTP names.

``AsyncNode`` runs on an asyncio loop; ``Node`` wraps it for plain scripts, running the loop
in a background thread::

    import otpy
    with otpy.Node.from_toml("examples/hello/topology.toml") as node:
        print(node.which_children("root"))
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import threading
import time
from typing import Any, Callable

import msgspec
import zmq

from .control import open_control
from .remote_events import open_remote_events
from .event_lines import describe_event, log_line
from .reload import reload_topology
from .errors import NodeAlreadyRunning, NodeStartError
from .node_logs import NodeLogs
from ..supervision.exit import ExitReason
from ..host.limits import raise_fd_limit
from ..host.node_run import AlreadyRunning, RunLock, kill_run, new_run_id, remove_leftovers
from ..processes.manager import ProcessManager, StartFailed
from ..host.runtime_dir import node_dir, node_path_problem, node_sockets, socket_path_problem
from ..specs.rules import id_problem, node_problems, replica_clash, replica_templates, reconfigure_problems, spec_problems, template_start_problems
from ..specs.model import AnySpec, NodeSpec, SupervisorSpec, walk
from ..supervision.spec_diff import Adopt, only_standby_changed
from .supervisor import Supervisor
from .variable_writes import VariableWrites, bound_variable_problems, stored_values
from ..specs.bindings import variables_of
from ..variables.placement import REGISTRY_ID, with_writer
from ..wire.codec import clip
from ..wire.operations import Operations
from ..wire.protocol import (
    ChildInfo, Children, CountChildren, Counts, DeleteChild, FromNode, GetStatus, NodeEvent, Outcome,
    Announce, Reconfigure, Refused, Reload, RestartChild, SetVariables, SignalChild, StartChild,
    StartFromTemplate, Status, StopNode, Stopping, TerminateChild, ToNode, WhichChildren,
)

log = logging.getLogger("otpy")

Listener = Callable[[NodeEvent], None]


class AsyncNode(Operations):
    """A supervision tree on the running asyncio loop."""

    def __init__(self, spec: NodeSpec, *, on_output: Callable[[str, str, str], None] | None = None) -> None:
        """``on_output(child_id, stream, line)`` gets every line a child writes (``stream``:
        "out" or "err"); by default they go to stderr with the child's id as prefix."""
        self.spec = spec
        self.name = spec.name
        self.root: Supervisor | None = None
        self.processes: ProcessManager | None = None
        self.listeners: list[Listener] = []
        self.logs = NodeLogs(spec, on_output, describe_event)  # its files; on_output gets each line after
        self._services: list[Any] = []  # things with an async close(), closed after the tree stops
        self.service_openers: list[Callable[["AsyncNode"], Any]] = [open_control, open_remote_events]
        self.stopping = False
        # Set by whoever runs the node (``otpy start``) to hear ``otpy stop``; else the node stops itself.
        self.on_stop_request: Callable[[], None] | None = None
        self._stop_task: asyncio.Task | None = None
        self._run: RunLock | None = None  # held from start to the end of stop
        self.started = False  # every child of the tree is up (``status`` says "starting" before)
        self.topology_path: str | None = None  # the file the node was made from, if any: what a reload reads
        self.cluster = None  # the topology's [cluster] (wire.remote_cluster.ClusterSpec): AGENT@NODE of its agents

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **kwargs) -> "AsyncNode":
        from ..topology.load import load_topology

        topology = load_topology(path)
        node = cls(topology.node, **kwargs)
        node.cluster = topology.cluster
        node.topology_path = os.path.abspath(path)
        return node

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the tree in order; returns once every child is READY. Raises NodeStartError.

        First the node's lock (NodeAlreadyRunning if another process holds it), then the sweep
        of what the previous run left, then the tree. The lock is held until ``stop`` ends.
        """
        if problems := node_problems(self.spec) or self._path_problems(self.spec.root) or \
                bound_variable_problems(self.spec.root):
            raise NodeStartError("invalid spec: " + "; ".join(problems))
        raise_fd_limit()
        self.dir = node_dir(self.name)
        try:
            self._run = RunLock.take(self.dir, new_run_id())
        except AlreadyRunning as exc:
            raise NodeAlreadyRunning(already_running(self.name, exc.pid)) from None
        try:
            self.logs.open(self.topology_path, self.listeners)
            self._sweep_previous_run()
            await self._start_tree()
        except BaseException:
            await self._close_services()
            raise

    def _path_problems(self, spec: AnySpec) -> list[str]:
        """The socket paths this node cannot bind for ``spec``'s children (AF_UNIX's limit), before
        any is tried: a too-long runtime folder, node name or id is one line, not a ZMQError."""
        if problem := node_path_problem(self.name):
            return [problem]
        return [problem for _, sub in walk(spec) if not isinstance(sub, SupervisorSpec)
                if (problem := socket_path_problem(self.name, sub.id))]

    def _sweep_previous_run(self) -> None:
        """Kill what the last run of this node left, and remove its socket files: it is over,
        since we hold the lock (a stale ``agents/registry.sock`` must not outlive its node)."""
        if self._run.previous_run:
            for pid in kill_run(self._run.previous_run):
                log.warning("otpy[%s]: stopped pid %d left by an earlier run of this node", self.name, pid)
        remove_leftovers(node_sockets(self.name))

    async def _start_tree(self) -> None:
        self.processes = ProcessManager(node_name=self.name, on_output=self.logs.child_line, run_id=self._run.run_id,
                                        program_folders=self.spec.program_folders)
        await self.processes.open()
        values = stored_values(self.dir, self.spec.root)
        self._replica_templates = replica_templates(self.spec.root)  # ids their replicas keep
        writer = secrets.token_hex(16)  # this run's: only the node stores a bound variable
        self.writes = VariableWrites(self.name, values, variables_of(self.spec.root), lambda: self.root,
                                     self.listeners, writer)
        self._services.append(self.writes)
        self.root = Supervisor(with_writer(self.spec.root, writer), processes=self.processes, report=self._report,
                               node=self.name, child_env=tree_env(self.dir, self.spec.root), values=values)
        for open_service in self.service_openers:  # before the children: `status`/`stop` reach a starting node
            try:
                self._services.append(await open_service(self))
            except NodeStartError:
                raise
            except (OSError, zmq.ZMQError) as exc:  # a socket that cannot be bound: one line, not a traceback
                raise NodeStartError(f"cannot open the node's control sockets: {exc}") from None
        try:
            await self.root.start()
        except StartFailed as exc:
            raise NodeStartError(self.writes.start_failure(str(exc))) from None
        self.started = True

    async def stop(self) -> ExitReason:
        """Ordered shutdown: children in reverse start order, then the node's own sockets.

        Calling it again while it runs (or after) waits for the same shutdown.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        return await asyncio.shield(self._stop_task)

    def request_stop(self) -> None:
        """``otpy stop`` arrived: let the node's runner stop it, or stop it here if nobody runs it."""
        if self.on_stop_request is not None:
            self.on_stop_request()
        elif self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())

    async def _stop(self) -> ExitReason:
        self.stopping = True
        self._report(NodeEvent(kind="node_stopping", node=self.name, supervisor=self.name, pid=os.getpid(),
                               time=time.time()))
        reason = await self.root.stop("infinity") if self.root else ExitReason(kind="shutdown")
        await self._close_services()
        return reason

    async def wait(self) -> ExitReason:
        """Wait until the root supervisor exits by itself or is stopped."""
        reason = await asyncio.shield(self.root.exited)
        await self._close_services()
        return reason

    async def _close_services(self) -> None:
        while self._services:
            await self._services.pop().close()
        if self.processes is not None:
            await self.processes.close()
        if self._run is not None and self._run.fd >= 0:
            remove_leftovers(node_sockets(self.name))  # under the lock: no later start's sockets
            self.logs.close()
            self._run.release()

    # --- requests: the one place where a control request becomes an operation ------------

    async def handle(self, request: ToNode) -> FromNode:
        """The reply to one control request (the control socket's, ``Node.request``'s, the helpers').

        A child operation answers an ``Outcome`` (``not_found`` for an unknown child or
        supervisor); a query of a supervisor the node does not have is ``Refused(not_found)``.
        Anything raised here is a bug: the control socket answers it as ``internal``.
        """
        rid = request.request_id
        if self.stopping and not isinstance(request, (StopNode, *QUERIES)):  # queries answer the truth
            return Refused(rid, "stopping", f"node {self.name!r} is stopping")
        match request:
            case WhichChildren(supervisor=sup_id):
                sup = self.supervisor(sup_id)
                return Children(rid, sup.children_info()) if sup else _no_supervisor(rid, sup_id)
            case CountChildren(supervisor=sup_id):
                sup = self.supervisor(sup_id)
                return _counts(rid, sup.children_info()) if sup else _no_supervisor(rid, sup_id)
            case StartChild():
                return _reply(rid, await self._start_child(request))
            case StartFromTemplate():
                return _reply(rid, await self._start_from_template(request))
            case TerminateChild(id=child_id, supervisor=sup_id) | RestartChild(id=child_id, supervisor=sup_id) | \
                    DeleteChild(id=child_id, supervisor=sup_id):
                if problem := id_problem(child_id):  # never a child's id: say so, not "no child"
                    return _reply(rid, Outcome("invalid", detail=problem))
                sup = self.owner(child_id, sup_id)
                return _reply(rid, await sup.call(request) if sup else _no_owner(child_id, sup_id))
            case SignalChild(id=child_id, signal=number, supervisor=sup_id):
                if problem := id_problem(child_id):
                    return _reply(rid, Outcome("invalid", detail=problem))
                sup = self.owner(child_id, sup_id)
                return _reply(rid, sup.signal_child(child_id, number) if sup else _no_owner(child_id, sup_id))
            case Reload():
                return _reply(rid, await reload_topology(self, request))
            case Reconfigure():
                return _reply(rid, await self._reconfigure(request))
            case SetVariables(scope=scope, values=values, dry_run=dry_run, scopes=scopes, expected=expected):
                config = {**scopes, scope: {**scopes.get(scope, {}), **values}} if scope or values else scopes
                return _reply(rid, await self._set_variables(config, dry_run, expected))
            case Announce(kind=kind, detail=detail):
                return _reply(rid, self._announce(kind, detail))
            case GetStatus():
                return self._status(rid)
            case StopNode():
                await self.stop()
                return Stopping(rid, pid=os.getpid(), process_exits=False)
        raise TypeError(f"not a control request: {type(request).__name__}")

    async def _ask(self, request: ToNode, take: Callable[[FromNode], Any]) -> Any:
        return take(await self.handle(request))

    def adopt_spec(self, spec: NodeSpec) -> None:
        """``spec`` is what the node declares from now on (a reload's file)."""
        self.spec = spec
        self._replica_templates = replica_templates(spec.root)  # the ids their replicas keep

    def supervisor(self, sup_id: str | None) -> Supervisor | None:
        return self.root.find_supervisor(sup_id or self.root.spec.id)

    def owner(self, child_id: str, sup_id: str | None) -> Supervisor | None:
        """The supervisor named ``sup_id``, or else the one ``child_id`` is under."""
        return self.supervisor(sup_id) if sup_id else self.root.find(child_id)

    async def _start_child(self, request: StartChild) -> Outcome:
        sup = self.supervisor(request.supervisor)
        if sup is None:
            return Outcome("not_found", detail=_no_supervisor_text(request.supervisor))
        if problems := spec_problems(request.spec, sup.spec) or self._path_problems(request.spec) or \
                self.writes.registry_problems(request.spec) or self.writes.unknown_bindings(request.spec):
            return Outcome("invalid", detail="; ".join(problems))
        if clash := self._id_clash([sub.id for _, sub in walk(request.spec)], sup):
            return clash
        return await sup.call(request)

    async def _start_from_template(self, request: StartFromTemplate) -> Outcome:
        child_id = request.id
        if problem := socket_path_problem(self.name, child_id):  # id_problem, with its socket's length
            return Outcome("invalid", detail=problem)  # before anything: the id names a socket file
        sup = self.supervisor(request.supervisor)
        if sup is None:
            return Outcome("not_found", detail=_no_supervisor_text(request.supervisor))
        if problems := template_start_problems(sup.spec, request.template, child_id, request.args):
            return Outcome("invalid", detail="; ".join(problems))
        if clash := self._id_clash((child_id,), sup):
            return clash
        return await sup.call(request)

    async def _reconfigure(self, request: Reconfigure) -> Outcome:
        if problem := id_problem(request.source):
            return Outcome("invalid", detail=f"source: {problem}")
        sup = self.owner(request.source, request.supervisor)
        if sup is None:
            return _no_owner(request.source, request.supervisor)
        problems = reconfigure_problems(request.source, request.target, sup.spec)
        if problems := problems or self._path_problems(request.target) or \
                self.writes.registry_problems(request.target, request.source) or \
                self.writes.unknown_bindings(request.target):
            return Outcome("invalid", detail="; ".join(problems))
        below = [sub.id for _, sub in walk(request.target)][1:]  # the target keeps the source's id
        if clash := self._id_clash(below, sup, replacing=request.source):
            return clash
        child = sup.machine.children.get(request.source)
        if child is not None and child.state == "running" and only_standby_changed(child.spec, request.target):
            # as a reload: the child keeps running, its hot standbys go or come to the new count
            outcome = await sup.call(Adopt(sup.spec, {request.source: request.target}))
            return msgspec.structs.replace(outcome, pid=child.pid) if outcome.ok else outcome
        return await sup.call(request)

    async def _set_variables(self, config: dict[str, dict[str, Any]], dry_run: bool,
                             expected: dict[str, dict[str, int]] | None = None) -> Outcome:
        """Set ``config`` (``{scope: {name: value}}``) once the tree runs it (``variable_writes``)."""
        if self.root.find(REGISTRY_ID) is None:
            return Outcome("not_found", detail="this node has no registry: declare [variables] in the topology")
        return await self.writes.set(config, dry_run=dry_run, expected=expected)

    def _announce(self, kind: str, detail: str) -> Outcome:
        if not re.fullmatch(r"[a-z][a-z_]{0,39}", kind):
            return Outcome("invalid", detail=f"kind: got {clip(repr(kind), 80)}; expected lower-case letters and '_'")
        self._report(NodeEvent(kind=kind, node=self.name, supervisor="", detail=clip(detail, MAX_DETAIL),
                               time=time.time()))
        return Outcome("ok")

    def _status(self, request_id: int) -> Status:
        """The tree; its root's state is "starting" until every child is up, "stopping" once the
        node stops (the control socket answers from before the first child to after the last)."""
        tree = self.root.snapshot()
        if tree.state == "running" and (self.stopping or not self.started):
            tree = msgspec.structs.replace(tree, state="stopping" if self.stopping else "starting", uptime=None)
        return Status(request_id, node=self.name, pid=os.getpid(), tree=tree)

    def _id_clash(self, ids, target: Supervisor, replacing: str | None = None) -> Outcome | None:
        """The refusal of ``ids`` going under ``target`` when one is already used in the node: a
        child's id elsewhere, or a supervisor's id anywhere (ids name sockets and scopes: one
        thing each). What runs below ``replacing`` (a reconfigure's source) is on its way out."""
        leaving = {sub.id for _, sub in walk(replacing_spec)} if (replacing_spec := self._spec_of(replacing, target)) else set()
        for child_id in ids:
            if child_id in leaving:
                continue
            if clash := replica_clash(child_id, target.spec.id, self._replica_templates):
                return Outcome("invalid", detail=f"id: {clash}")
            owner = self.root.find(child_id)
            if owner is not None and owner is not target or self.root.find_supervisor(child_id):
                where = owner.spec.id if owner else child_id
                return Outcome("invalid", detail=f"id {child_id!r} is already used in this node (under {where!r})")
        return None

    def _spec_of(self, child_id: str | None, sup: Supervisor):
        child = sup.machine.children.get(child_id) if child_id is not None else None
        return child.spec if child is not None else None

    # --- reports: logs and events -----------------------------------------------------------

    def _report(self, event: NodeEvent) -> None:
        log.log(*log_line(event))
        for listener in list(self.listeners):
            listener(event)


QUERIES = (WhichChildren, CountChildren, GetStatus)  # answered while the node stops too: they change nothing

MAX_DETAIL = 4096  # characters of an outcome's detail: room for a FAILED line, not for an echoed 100k-char id


def _reply(request_id: int, outcome: Outcome) -> Outcome:
    """``outcome`` as the reply to request ``request_id``, its detail clipped to ``MAX_DETAIL``."""
    return msgspec.structs.replace(outcome, detail=clip(outcome.detail, MAX_DETAIL), request_id=request_id)


def _no_supervisor(request_id: int, sup_id: str) -> Refused:
    return Refused(request_id, "not_found", clip(_no_supervisor_text(sup_id)))


def _no_owner(child_id: str, sup_id: str) -> Outcome:
    return Outcome("not_found", detail=_no_supervisor_text(sup_id) if sup_id else f"no child {child_id!r}")


def _no_supervisor_text(sup_id: str) -> str:
    """The one wording of a supervisor the node does not have (a reply or a refusal)."""
    return f"no supervisor {sup_id!r}"


def _counts(request_id: int, children: list[ChildInfo]) -> Counts:
    """OTP's counts: ``specs``, ``active`` (running), ``supervisors`` and ``workers`` (specs)."""
    return Counts(request_id, specs=len(children), active=sum(c.state == "running" for c in children),
                  supervisors=sum(c.kind != "worker" for c in children),
                  workers=sum(c.kind == "worker" for c in children))


def tree_env(folder, root: SupervisorSpec) -> dict[str, str]:
    """What every child of the tree finds in its environment from the node: its folder,
    ``OTPY_REGISTRY=1`` when the tree has a registry (a child asks it for its configuration;
    never guessed from a socket file, which a previous run may have left), and the variables
    the tree binds (``OTPY_BOUND``)."""
    from ..agent.registry_link import BOUND_ENV
    from ..variables.placement import REGISTRY_ENV, REGISTRY_ID, REGISTRY_PROGRAM

    env = {"OTPY_NODE_DIR": str(folder)}
    if any(sub.id == REGISTRY_ID and getattr(sub, "program", None) == REGISTRY_PROGRAM for _, sub in walk(root)):
        env[REGISTRY_ENV] = "1"
    if bound := variables_of(root):
        env[BOUND_ENV] = ",".join(sorted(bound))
    return env


def already_running(name: str, pid: int) -> str:
    """The one wording of a refused second start (the node, and ``otpy start --detach``)."""
    return f"node {name!r} is already running (pid {pid or 'unknown'})"


class Node(Operations):
    """The synchronous face of a node, for scripts: the loop runs in a background thread.

    Every method blocks until the operation is done, with the same outcomes as AsyncNode.
    """

    def __init__(self, spec: NodeSpec, **kwargs) -> None:
        self._spec = spec
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.aio: AsyncNode | None = None
        self._caller = None  # an otpy.Caller, made on the first call

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **kwargs) -> "Node":
        from ..topology.load import load_topology

        topology = load_topology(path)
        node = cls(topology.node, **kwargs)
        node.cluster = topology.cluster
        node.topology_path = os.path.abspath(path)
        return node

    @classmethod
    def from_spec(cls, root: SupervisorSpec, name: str = "node", **kwargs) -> "Node":
        return cls(NodeSpec(name=name, root=root), **kwargs)

    def start(self) -> "Node":
        if self._loop is not None:  # this object runs its node already: refuse, and keep it running
            raise NodeAlreadyRunning(f"{already_running(self.name, os.getpid())}: this Node object started it")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"otpy-{self._spec.name}", daemon=True)
        self._thread.start()

        async def make_and_start():
            self.aio = AsyncNode(self._spec, **self._kwargs)
            self.aio.topology_path = getattr(self, "topology_path", None)
            self.aio.cluster = getattr(self, "cluster", None)
            await self.aio.start()

        try:
            self._run(make_and_start())
        except BaseException:
            self._close_loop()
            raise
        return self

    def stop(self) -> ExitReason | None:
        if self._caller is not None:
            self._caller.close()
            self._caller = None
        if self._loop is None:
            return None
        try:
            return self._run(self.aio.stop())
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        loop, self._loop = self._loop, None
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def request(self, request: ToNode) -> FromNode:
        """The reply to one control request, answered by this node (``AsyncNode.handle``)."""
        return self._run(self.aio.handle(request))

    def _ask(self, request: ToNode, take: Callable[[FromNode], Any]) -> Any:
        return take(self.request(request))

    def call(self, agent_id: str, inputs: dict[str, Any] | None = None, *, timeout: float = 5.0,
             retries: int = 0) -> dict[str, Any]:
        """Call an agent of this node: straight to its socket (see ``otpy.Caller.call``)."""
        from ..wire.calls import Caller

        if self._caller is None:
            self._caller = Caller(self.name)
        return self._caller.call(agent_id, inputs, timeout=timeout, retries=retries)

    @property
    def name(self) -> str:
        return self._spec.name

