"""The topology file's format: its tables as pydantic models (strict types, unknown keys
rejected), and the patterns its names follow. ``topology.load`` reads a file with these, reports
its problems and turns it into ``specs.model`` Structs, which ``specs.rules`` then checks like
any spec. Defaults are not written here: each field's default is read from the Struct it becomes.

A field a child may bind to a variable (``specs.bindings.BINDABLE``) takes its plain value or
``{ variable = "SCOPE.NAME" }`` (``BoundTable``): a union tagged ``value`` / ``bound``, whose tag
``topology.load`` leaves out of key paths.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

import msgspec
from pydantic import BaseModel, ConfigDict, Discriminator, Field, PlainValidator, StringConstraints, Tag
from pydantic_core import PydanticCustomError

from ..specs.model import NAME_PATTERN, PROGRAM_PATTERN, AutoShutdown, ChildSpec, DynamicSupervisorSpec, LogSettings
from ..specs.bindings import BINDABLE
from ..specs.model import Readiness
from ..specs.model import RestartType, Strategy, SupervisorSpec
from ..specs.values import SHUTDOWN_EXPECTED, shutdown_ok

ROOT_ID = "root"


def _default(struct: type[msgspec.Struct], name: str) -> Any:
    """The default of ``struct``'s field ``name``: the one place defaults are written."""
    (spec_field,) = [f for f in msgspec.structs.fields(struct) if f.name == name]
    if spec_field.default is not msgspec.NODEFAULT:
        return spec_field.default
    return spec_field.default_factory()


def _check_shutdown(value: Any) -> float | str:
    """The spec rule's (``specs.values.shutdown_ok``); an integer becomes a float."""
    if not shutdown_ok(value):
        raise PydanticCustomError("shutdown", "expected {expected}", {"expected": SHUTDOWN_EXPECTED})
    return value if isinstance(value, str) else float(value)


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ProgramTarget = Annotated[str, StringConstraints(pattern=PROGRAM_PATTERN)]
Shutdown = Annotated[
    Union[float, str],
    PlainValidator(
        _check_shutdown,
        json_schema_input_type=Union[Annotated[float, Field(ge=0)], Literal["brutal_kill", "infinity"]],
    ),
]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # 0: none (a restart delay)


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BoundTable(Table):
    """``{ variable = "SCOPE.NAME" }``: the field takes the value of the variable NAME declared in
    ``[variables.SCOPE]`` (its stored value, else its default); the node follows its changes."""

    variable: str  # its form is the spec rule's (specs.values.bound_problem), reported at .variable


VALUE_TAG, BOUND_TAG = "value", "bound"  # the two members of a bindable field's union


def _value_or_bound(value: Any) -> str:
    return BOUND_TAG if isinstance(value, (dict, BoundTable)) else VALUE_TAG


def bindable(value_type: Any) -> Any:
    """A field that takes ``value_type`` or a ``BoundTable`` (a table is always the bound form)."""
    return Annotated[
        Union[Annotated[value_type, Tag(VALUE_TAG)], Annotated[BoundTable, Tag(BOUND_TAG)]],
        Discriminator(_value_or_bound),
    ]


def is_bindable_tag(loc: tuple, index: int) -> bool:
    """Whether ``loc[index]`` is the union tag of a bindable field (not a key of the file)."""
    return index > 0 and loc[index] in (VALUE_TAG, BOUND_TAG) and loc[index - 1] in BINDABLE


class ConstraintTable(Table):
    """One entry of ``[constraints] SCOPE = [...]``: ``check(config) -> bool`` over the scope's
    configuration, and what it means (messages name it)."""

    check: ProgramTarget
    description: str


class NodeTable(Table):
    """``[node]``: the node's name (default: the file's stem), and an opt-in TCP control endpoint."""

    name: Name | None = None
    control_tcp: str | None = None  # checked with every node spec's: specs.values.control_tcp_problem


SIZE_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
SIZE_EXPECTED = "a number of bytes: an integer, or a string like \"50MB\", \"512KB\" or \"1GB\" (units of 1024)"


def _check_size(value: Any) -> int:
    """Bytes as supervisord's ``logfile_maxbytes`` takes them: ``52428800``, ``"50MB"``, ``"10KB"``,
    ``"1GB"`` (1024-based units, case and spaces ignored). Its range is the spec rule's."""
    if isinstance(value, bool):
        raise PydanticCustomError("size", "expected {expected}", {"expected": SIZE_EXPECTED})
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d{1,15})\s*([KMG]?B?)\s*", value.upper()) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError("size", "expected {expected}", {"expected": SIZE_EXPECTED})
    return int(match[1]) * SIZE_UNITS[match[2] if match[2] in SIZE_UNITS else match[2] + "B"]


Size = Annotated[int, PlainValidator(_check_size, json_schema_input_type=Union[int, str])]


class LogsTable(Table):
    """``[logs]``: the node's log files (``host.log_files``). A file reaching ``max_bytes`` is renamed
    ``.1`` (older ones shifted, ``backups`` kept); ``folder``: where they are (relative to the
    topology file's folder), default ``$XDG_STATE_HOME/otpy/NODE/logs``."""

    max_bytes: Size = _default(LogSettings, "max_bytes")
    backups: int = _default(LogSettings, "backups")
    folder: str | None = _default(LogSettings, "folder")


class TemplateTable(Table):
    """A worker without an id: a dynamic supervisor's named template. ``replicas``: its supervisor
    keeps that many children from it (templates only: anywhere else the spec rules refuse it)."""

    program: Optional[bindable(ProgramTarget)] = None
    command: Annotated[list[str], Field(min_length=1)] | None = None
    args: dict[str, Any] = _default(ChildSpec, "args")
    env: dict[str, str] = _default(ChildSpec, "env")
    cwd: str | None = _default(ChildSpec, "cwd")
    restart: RestartType = _default(ChildSpec, "restart")
    shutdown: Shutdown = _default(ChildSpec, "shutdown")
    significant: bool = _default(ChildSpec, "significant")
    ready: Readiness = _default(ChildSpec, "ready")
    start_timeout: Seconds = _default(ChildSpec, "start_timeout")
    max_rss: Seconds | None = _default(ChildSpec, "max_rss")  # MiB, > 0
    restart_delay: NonNegativeSeconds = _default(ChildSpec, "restart_delay")
    restart_delay_max: NonNegativeSeconds = _default(ChildSpec, "restart_delay_max")
    standby: Annotated[int, Field(ge=0)] = Field(
        default=_default(ChildSpec, "standby"),
        description="a program child's hot standbys: processes that ran setup() ahead and take over at a restart")
    enabled: bindable(bool) = _default(ChildSpec, "enabled")
    replicas: Optional[bindable(Annotated[int, Field(ge=0)])] = Field(
        default=_default(ChildSpec, "replicas"),
        description="a dynamic supervisor's template only: it keeps this many children, NAME-1 to NAME-N")


class WorkerTable(TemplateTable):
    """A worker child: exactly one of ``program`` ("module:attr") and ``command`` (argv)."""

    type: Literal["worker"] = "worker"
    id: Name


class DynamicSupervisorTable(Table):
    """A supervisor that starts empty; ``templates`` name the children ``start_child`` may add."""

    type: Literal["dynamic_supervisor"]
    id: Name
    max_children: Annotated[int, Field(ge=0)] | None = _default(DynamicSupervisorSpec, "max_children")
    max_restarts: Annotated[int, Field(ge=0)] = _default(DynamicSupervisorSpec, "max_restarts")
    max_seconds: Annotated[int, Field(gt=0)] = _default(DynamicSupervisorSpec, "max_seconds")
    templates: dict[Name, TemplateTable] = {}
    restart: RestartType = _default(DynamicSupervisorSpec, "restart")
    shutdown: Shutdown = _default(DynamicSupervisorSpec, "shutdown")
    significant: bool = _default(DynamicSupervisorSpec, "significant")


class RootSupervisorTable(Table):
    """``[supervisor]``: the root supervisor. It has no parent, so no restart/shutdown keys."""

    id: Name = ROOT_ID
    strategy: Strategy = _default(SupervisorSpec, "strategy")
    max_restarts: Annotated[int, Field(ge=0)] = _default(SupervisorSpec, "max_restarts")
    max_seconds: Annotated[int, Field(gt=0)] = _default(SupervisorSpec, "max_seconds")
    auto_shutdown: AutoShutdown = _default(SupervisorSpec, "auto_shutdown")
    children: list[Child] = []


class SupervisorTable(RootSupervisorTable):
    """A static supervisor child: the root's keys, plus how its own parent treats it."""

    type: Literal["supervisor"]
    id: Name
    restart: RestartType = _default(SupervisorSpec, "restart")
    shutdown: Shutdown = _default(SupervisorSpec, "shutdown")
    significant: bool = _default(SupervisorSpec, "significant")


CHILD_TABLES: dict[str, type[Table]] = {
    "worker": WorkerTable,
    "supervisor": SupervisorTable,
    "dynamic_supervisor": DynamicSupervisorTable,
}


def _child_type(value: Any) -> Any:
    """The ``type`` of a child table, ``worker`` when it is not given."""
    if isinstance(value, dict):
        return value.get("type", "worker")
    return getattr(value, "type", "worker")


Child = Annotated[
    Union[
        Annotated[WorkerTable, Tag("worker")],
        Annotated[SupervisorTable, Tag("supervisor")],
        Annotated[DynamicSupervisorTable, Tag("dynamic_supervisor")],
    ],
    Discriminator(_child_type),
]
SupervisorTable.model_rebuild()
RootSupervisorTable.model_rebuild()


class RegistryTable(Table):
    """``[registry]``: where the variables' values live. ``storage``: none (the default) for the
    node's own SQLite file, or ``"postgresql://USER:PASSWORD@HOST:PORT/DATABASE"`` for one
    variable space shared by every node whose topology names that database
    (``otpy.variables.registry``); checked by ``specs.values.registry_storage_problem``."""

    storage: str | None = None


class ClusterNodeTable(Table):
    """``[cluster.nodes.NAME]``: another node this one calls (``AGENT@NAME``): its TCP endpoint
    (the ``control_tcp`` it serves, CURVE only) and a keys folder holding its public key
    ``server.key`` and this node's client secret key (as ``--keys DIR``; relative to the
    topology file's folder)."""

    endpoint: str
    keys: str


class ClusterTable(Table):
    """``[cluster]``: the other nodes this node's agents may call, inline (``nodes``) or in a
    cluster file (``file``, relative to the topology file's folder, of ``[nodes.NAME]`` tables)."""

    file: str | None = None
    nodes: dict[Name, ClusterNodeTable] = {}


class TopologyFile(Table):
    """A whole ``topology.toml``."""

    model_config = ConfigDict(title="otpy topology")

    node: NodeTable = NodeTable()
    logs: LogsTable = LogsTable()
    registry: RegistryTable = RegistryTable()
    cluster: ClusterTable = ClusterTable()
    supervisor: RootSupervisorTable
    variables: dict[str, dict[str, dict[str, Any]]] = {}
    constraints: dict[str, list[ConstraintTable]] = {}
    pipelines: dict[str, dict[str, Any]] = {}
    optimizer: dict[str, Any] = {}


def topology_json_schema() -> dict:
    """The JSON schema of the topology file format."""
    return TopologyFile.model_json_schema()
