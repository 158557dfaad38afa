"""Wire messages between otpy's processes: tagged, frozen msgspec Structs, one union per channel.

Each channel has a section below with its messages, a union per direction and one decoder
per direction, built once. A message's tag is its class name, so names are unique across
the whole file. Rules for changing a message (msgspec's schema evolution): new fields get
defaults, field types never change.

>>> msg = Reply(call_id=7, outputs={"answer": 42})
>>> FROM_AGENT.decode(ENCODER.encode(msg)) == msg
True
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from ..specs.model import AnySpec

ENCODER = msgspec.msgpack.Encoder()
MAX_REQUEST_BYTES = 1 << 20  # 1 MiB: a node's control socket drops a bigger frame (``node.control``)


def first_unencodable(values: dict[str, Any]) -> str:
    """The name of the first entry of ``values`` msgpack cannot encode, or that nests too deep
    to be received inside a message (a Call's or Reply's two levels above it); '' if none."""
    from .codec import MAX_DEPTH, WireError, encode

    for name, value in values.items():
        if not isinstance(name, str):
            return repr(name)
        try:
            encode(ENCODER, value, MAX_DEPTH - 2)
        except WireError:
            return name
    return ""



class Message(msgspec.Struct, frozen=True, tag=True):
    """Base of every wire message: frozen, tagged with the class name."""


# --- node <-> zygote: otpy/wire/zygote_protocol.py ---------------------------------------


# --- caller <-> agent (calls) -------------------------------------------------------------
# The agent binds a ROUTER at its call endpoint; callers connect DEALERs. Frames: one
# message per ZeroMQ message (after the ROUTER's identity frame). ``call_id`` is unique per
# caller socket; a reply whose call_id is no longer awaited is dropped.


class Call(Message):
    """caller -> agent: run ``forward(**inputs)``."""

    call_id: int
    inputs: dict[str, object] = {}


class Reply(Message):
    """agent -> caller: ``forward`` returned ``outputs``."""

    call_id: int
    outputs: dict[str, object] = {}


class CallFailed(Message):
    """agent -> caller: the call did not produce outputs.

    ``kind``: ``raised`` (forward raised: ``error_type``, ``message`` and ``traceback`` are the
    remote exception's), ``overloaded`` (the agent's queue is full), ``bad_request`` (the
    message could not be decoded), ``unencodable`` (an output cannot be encoded; ``message``
    names the field), ``draining`` (the agent is shutting down and did not run the call: send
    it again, on a new connection).

    ``call_id`` ``DRAIN_NOTICE`` (0, never a call's) with ``kind`` ``draining``: unasked, sent
    once to every caller the agent has served when it starts to drain, so that a caller's next
    call goes on a new connection rather than to an agent about to exit.
    """

    call_id: int
    kind: str
    error_type: str = ""
    message: str = ""
    traceback: str = ""


DRAIN_NOTICE = 0  # the call_id of an unasked "draining" (callers number calls from 1)


class ConfigSync(Message):
    """node -> agent, after a variable write committed: reply once the program runs the
    registry's configuration as it is now. The agent resolves again at once; a different
    configuration goes to ``on_config`` and the reply waits for it to return; a program
    without ``on_config`` ends to be restarted with it. ``Reply.outputs`` is ``{"config":
    "unchanged" | "applied" | "restarting" | "unavailable"}``."""

    call_id: int


CONFIG_STATES = ("unchanged", "applied", "restarting", "unavailable")


class ConfigCheck(Message):
    """node -> agent, before a variable write is stored: would the program run the configuration
    it would have with ``overlay`` (``{scope: {name: value}}``) written? The agent resolves it
    (the registry's ``resolve`` with the overlay: nothing stored) and asks its program's
    ``check_config``, which changes nothing. ``Reply.outputs`` is ``{"config": "ok" | "refused:
    WHY" | "unchecked" | "unavailable"}``: a refusal makes the node refuse the write;
    ``unchecked`` says the program has no ``check_config`` (the node need not ask that process
    again)."""

    call_id: int
    overlay: dict[str, dict[str, Any]] = {}


ToAgent = Union[Call, ConfigSync, ConfigCheck]
FromAgent = Union[Reply, CallFailed]

TO_AGENT = msgspec.msgpack.Decoder(ToAgent)
FROM_AGENT = msgspec.msgpack.Decoder(FromAgent)


# --- client <-> node (control) ------------------------------------------------------------
# The node binds a ROUTER at ``host.runtime_dir.control_endpoint(name)`` (socket file 0600 in the
# node's 0700 folder); clients connect DEALERs. One request or reply per ZeroMQ message
# (after the ROUTER's identity frame). Every request gets exactly one reply carrying its
# ``request_id``; a request that cannot be decoded (or nested deeper than ``codec.MAX_DEPTH``,
# or over 1 MiB in all its frames) gets ``Refused(request_id=0, kind="bad_request")`` (tag ``ControlError``).
# Requests to one supervisor are served one at a time in arrival order; different
# supervisors' requests proceed independently and ``GetStatus`` waits for none
# (``node/control_lanes``). A frame over 1 MiB makes ZeroMQ drop it and disconnect the sender
# (ZMQ_MAXMSGSIZE): no reply.
# ``supervisor=""`` means the root supervisor; for child operations it means "find the
# supervisor that has this child".


class WhichChildren(Message):
    """client -> node: the children of ``supervisor`` in start order."""

    request_id: int
    supervisor: str = ""


class CountChildren(Message):
    """client -> node: OTP's counts for ``supervisor``."""

    request_id: int
    supervisor: str = ""


class StartChild(Message):
    """client -> node: add ``spec`` (a worker, supervisor or dynamic supervisor) under ``supervisor``."""

    request_id: int
    supervisor: str
    spec: AnySpec


class StartFromTemplate(Message):
    """client -> node: start ``id`` from a dynamic supervisor's ``template``, ``args`` merged over its own."""

    request_id: int
    supervisor: str
    template: str
    id: str
    args: dict[str, Any] = {}


class TerminateChild(Message):
    request_id: int
    id: str
    supervisor: str = ""


class RestartChild(Message):
    request_id: int
    id: str
    supervisor: str = ""


class DeleteChild(Message):
    request_id: int
    id: str
    supervisor: str = ""


class SignalChild(Message):
    """client -> node: send the signal number ``signal`` to the running worker ``id`` (its process
    only, as ``kill`` does; its supervisor then sees whatever the signal does). The reply is an
    ``Outcome``: ``ok`` with the pid, ``not_running``, ``not_found``, or ``invalid`` (no such
    signal; a supervisor is not signalled)."""

    request_id: int
    id: str
    signal: int
    supervisor: str = ""


class Reload(Message):
    """client -> node: read the topology file ``path`` again (empty: the file the node was started
    from) and make the running tree match it, as ``supervisorctl update`` does: children added
    are started, removed ones stopped, changed ones replaced make-before-break; unchanged ones
    keep their processes. ``code``: every program child is also replaced (one at a time,
    make-before-break), so each runs its source as it is on disk now. ``dry_run``: the plan
    only. The reply is an ``Outcome`` whose ``changes`` say what was (or would be) done; an
    invalid file is ``invalid`` with the file's error, and nothing changes."""

    request_id: int
    path: str = ""
    code: bool = False
    dry_run: bool = False


class Reconfigure(Message):
    """client -> node (an action): replace the running child ``source`` of the supervisor
    ``supervisor`` (static or dynamic) by ``target`` (same id), make-before-break: the target starts beside the
    source and reports READY, then takes the name, then the source is stopped. A target that
    fails to start leaves the source running; the reply says why."""

    request_id: int
    supervisor: str
    source: str
    target: AnySpec


class SetVariables(Message):
    """client -> node (an action): set ``values`` in the registry's ``scope``, all or nothing.

    The node first makes the running tree match the new values (children bound to a written
    variable are reconfigured make-before-break, started or stopped), then commits the write;
    the reply's ``changes`` say what it did. A target that fails to start leaves the old
    program serving and the old value stored (``start_failed``). With ``dry_run`` nothing
    changes: the reply's ``changes`` are the plan. ``scopes``: the values of more scopes,
    ``{scope: {name: value}}``, in the same all-or-nothing write (an optimizer's configuration).
    ``expected``: ``{scope: {name: version}}`` (0: never set), a compare-and-set the registry
    makes in the same transaction as the commit (``otpy vars set --expected-version``)."""

    request_id: int
    scope: str
    values: dict[str, Any]
    dry_run: bool = False
    scopes: dict[str, dict[str, Any]] = {}  # more scopes' values, in the same all-or-nothing write
    expected: dict[str, dict[str, int]] = {}  # compare-and-set: the versions the written variables must have


class Announce(Message):
    """client -> node: publish a decision made outside the node (an optimizer's watch loop) as
    a ``NodeEvent`` of ``kind`` (lower-case letters and '_', at most 40) on the events socket
    and in the node's log. The reply is an ``Outcome``."""

    request_id: int
    kind: str
    detail: str = ""


class GetStatus(Message):
    """client -> node: the whole tree."""

    request_id: int


class StopNode(Message):
    """client -> node: ordered shutdown. The reply (``Stopping``) comes once the tree has stopped."""

    request_id: int


class BoundInfo(msgspec.Struct, frozen=True):
    """The variable a child's program (else its ``enabled``) is bound to, and the registry
    version of the value it runs (0: the default, never set)."""

    variable: str
    version: int = 0


class ChildInfo(msgspec.Struct, frozen=True):
    id: str
    kind: str
    state: str
    pid: int | None = None
    restarts: int = 0  # as the node's which_children (Supervisor.children_info) reports it
    # What a program child runs ("module:attr"), bound or not, and the variable version it runs;
    # for a child not running, what it would run if started now.
    program: str | None = None
    bound: BoundInfo | None = None
    override: bool = False  # stopped by terminate_child although its variables say it runs
    status_line: str = ""  # the last ``STATUS=...`` the child sent (sd_notify), if any
    restart_in: float | None = None  # a delayed restart (``restart_delay``): seconds until it starts
    restart: str = "permanent"  # its restart type (a temporary child's spec goes with terminate_child)
    standby: int = 0  # hot standbys set up and waiting (``ChildSpec.standby``)
    standby_mib: float = 0.0  # their memory: the pages only they hold (private, MiB), what they cost


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One step of what setting variables does, or would do (a plan), to a node.

    ``action`` is ``set`` (``scope``, ``name``: a value, ``before`` -> ``after``), ``start`` or
    ``stop`` (a child of ``supervisor``), ``reconfigure`` (a running child replaced
    make-before-break, ``before`` -> ``after`` are its programs), or ``update`` (a reload changed
    a supervisor's own settings in place, ``before`` -> ``after``, as OTP's ``code_change``
    does); ``pid`` is the new process's once done."""

    action: Literal["set", "start", "stop", "reconfigure", "update"]
    supervisor: str = ""
    child: str = ""
    scope: str = ""
    name: str = ""
    before: Any = None
    after: Any = None
    pid: int | None = None


class Children(Message):
    """node -> client: reply to WhichChildren."""

    request_id: int
    children: list[ChildInfo]


class Counts(Message):
    """node -> client: reply to CountChildren."""

    request_id: int
    specs: int
    active: int
    supervisors: int
    workers: int


OutcomeKind = Literal[
    "ok", "already_started", "already_present", "running", "restarting", "not_found",
    "max_children", "start_failed", "not_supported", "invalid", "unavailable", "not_running",
]
"""OTP's replies to a child operation, plus ``unavailable`` (the registry behind ``SetVariables``
did not answer). Only ever added to, never renamed (``Outcome.outcome`` stays a ``str`` on the
wire, so an older client decodes a newer kind)."""


class Outcome(Message):
    """node -> client: reply to a child operation or an action; ``outcome`` is one of ``OutcomeKind``.

    The same value is ``otpy.Result``: what the supervision machines decide, what ``Node`` and
    the clients return. ``request_id`` comes last (0 in-process) so that ``Outcome("ok", pid=1)``
    reads as OTP's ``{ok, Pid}``; the wire is a map, so the order does not show there.
    """

    outcome: str  # an OutcomeKind
    pid: int | None = None
    detail: str = ""
    request_id: int = 0
    changes: list[Change] = []  # a SetVariables': what it did (or, dry run, would do) to the tree

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


Result = Outcome  # the public name (``otpy.Result``) of the one reply type


class TreeEntry(msgspec.Struct, frozen=True):
    """One supervisor or worker in a ``Status`` reply; ``uptime`` in seconds while running."""

    id: str
    kind: str
    state: str
    pid: int | None = None
    restarts: int = 0
    uptime: float | None = None
    children: list["TreeEntry"] | None = None  # None for workers
    program: str | None = None  # as in ChildInfo
    bound: BoundInfo | None = None
    override: bool = False
    status_line: str = ""  # as in ChildInfo
    restart_in: float | None = None
    restart: str = "permanent"
    standby: int = 0  # hot standbys set up and waiting (ChildInfo.standby)
    standby_mib: float = 0.0  # their private memory, MiB (ChildInfo.standby_mib)


class Status(Message):
    """node -> client: reply to GetStatus."""

    request_id: int
    node: str
    pid: int
    tree: TreeEntry


class Stopping(Message):
    """node -> client: reply to StopNode, sent after the tree stopped.

    ``process_exits``: the node's process (``otpy start``) exits next; else the node was
    embedded in a program that keeps running.
    """

    request_id: int
    pid: int
    process_exits: bool


class Refused(Message, tag="ControlError"):
    """node -> client: the request was not carried out and nothing changed (tag ``ControlError``;
    the client raises it as the exception ``otpy.ControlError``).

    ``kind``: ``bad_request`` (undecodable, unknown tag, wrong field type, too deep, too big:
    ``message`` says which), ``not_found`` (no such supervisor), ``stopping`` (the node is
    shutting down), ``internal`` (a bug in the node: the message has the exception).
    """

    request_id: int
    kind: str
    message: str


ToNode = Union[WhichChildren, CountChildren, StartChild, StartFromTemplate, TerminateChild,
               RestartChild, DeleteChild, SignalChild, Reconfigure, SetVariables, Reload, Announce, GetStatus,
               StopNode]
# The optimizer's actions are these requests: StartChild, TerminateChild, Reconfigure, SetVariables.
Action = Union[StartChild, TerminateChild, Reconfigure, SetVariables]
FromNode = Union[Children, Counts, Outcome, Status, Stopping, Refused]

TO_NODE = msgspec.msgpack.Decoder(ToNode)
FROM_NODE = msgspec.msgpack.Decoder(FromNode)


# --- node -> subscribers (events) ---------------------------------------------------------
# The node binds a PUB at ``host.runtime_dir.events_endpoint(name)`` (0600); one NodeEvent per
# ZeroMQ message, no topic frame (subscribe to b""). Slow subscribers lose events (PUB's HWM).


EventKind = Literal["started", "exited", "stopped", "restarting", "reconfiguring", "start_failed",
                    "gave_up", "auto_shutdown", "node_stopping", "restart_delayed", "reloaded"]


class NodeEvent(Message):
    """A supervision event; ``time`` is Unix time. The node's supervisors make it, the node logs
    it, and the events socket publishes it as it is. ``kind`` is one of ``EventKind`` when otpy
    makes it; on the wire it is a string, so a subscriber reads a kind a newer node adds."""

    kind: str  # an EventKind
    node: str
    supervisor: str
    child: str | None = None
    pid: int | None = None
    detail: str = ""
    time: float = 0.0


EVENT = msgspec.msgpack.Decoder(NodeEvent)


# --- registry -> subscribers --------------------------------------------------------------
# The registry (``otpy.variables.registry``) binds a PUB at ``ipc://<OTPY_NODE_DIR>/registry-events.sock``
# (0600) and publishes one VariableChanged per value written, only after the write committed;
# no topic frame (subscribe to b""). A value written by one ``set_many`` shares its version.
# Slow or late subscribers lose events: resolve again after (re)connecting.


class VariableChanged(Message):
    """registry -> subscribers: ``scope``'s ``name`` is now ``value``, stamped ``version``."""

    scope: str
    name: str
    value: Any
    version: int


VARIABLE_CHANGED = msgspec.msgpack.Decoder(VariableChanged)
