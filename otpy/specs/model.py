"""Child and supervisor specifications: immutable data, validated before anything starts.

Specs are msgspec Structs so that the same object is read from a topology file, built in
Python, and sent over the control socket (``start_child``) without a second model.
Defaults live here and nowhere else (OTP's ``?default_child_spec``), with the names
otpy uses everywhere: ``max_restarts`` / ``max_seconds``.

>>> ChildSpec(id="greeter", program="examples.hello.agents:Greeter").shutdown
5.0
>>> SupervisorSpec(id="team").shutdown
'infinity'
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterator, Literal, NamedTuple, Union

import msgspec

RestartType = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
AutoShutdown = Literal["never", "any_significant", "all_significant"]
# Seconds to wait after SIGTERM before SIGKILL, or one of OTP's two atoms.
Shutdown = Union[float, Literal["brutal_kill", "infinity"]]
Readiness = Literal["exec", "notify"]

# One rule for every name that becomes part of a path (child ids, template names, node
# names), wherever it comes from: a topology file, Python, the CLI or the wire. A name
# starts with a letter, digit or '_' (so never '.', '..' or an option), holds no '/', and
# is short enough that ``<runtime>/<node>/agents/<id>.sock`` fits an AF_UNIX address.
NAME_MAX = 64
NAME_PATTERN = rf"^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}$"
NAME_EXPECTED = (f"a name of 1 to {NAME_MAX} letters, digits, '_', '.' and '-', "
                 "starting with a letter, digit or '_'")
# A Python import target, ``module.path:attr.path`` (a program, an optimizer's module choice).
DOTTED_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
PROGRAM_PATTERN = rf"^{DOTTED_NAME}:{DOTTED_NAME}$"
PROGRAM_EXPECTED = "'module:attr', e.g. 'examples.hello.agents:Greeter'"


def is_import_target(value: object) -> bool:
    """``value`` is a ``module.path:attr.path`` string (``PROGRAM_PATTERN``).

    >>> is_import_target("examples.hello.agents:Greeter"), is_import_target("examples.hello")
    (True, False)
    """
    return isinstance(value, str) and re.fullmatch(PROGRAM_PATTERN, value) is not None


def name_problem(value: object, what: str = "id") -> str | None:
    """Why ``value`` cannot be an id or a node name, or None if it can.

    >>> name_problem("greeter") is None
    True
    >>> name_problem("../control")
    "id '../control'; expected a name of 1 to 64 letters, digits, '_', '.' and '-', starting with a letter, digit or '_'"
    """
    if isinstance(value, str) and re.fullmatch(NAME_PATTERN, value):
        return None
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return f"{what} {shown}; expected {NAME_EXPECTED}"


def check_name(value: object, what: str = "id") -> str:
    """``value`` if it is a valid name, else ValueError (a last guard before a path is built)."""
    if (problem := name_problem(value, what)) is not None:
        raise ValueError(problem)
    return value  # type: ignore[return-value]

class Bound(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A field whose value is a variable's: ``program = { variable = "global.classifier" }``.

    ``variable`` is ``SCOPE.NAME``: the variable ``NAME`` declared in scope ``SCOPE`` (the value
    stored there, or its default). The node resolves it when it starts the child, and makes the
    running tree follow every change of it (``specs.bindings``).

    >>> Bound("global.classifier").scope, Bound("global.classifier").name
    ('global', 'classifier')
    """

    variable: str

    @property
    def scope(self) -> str:
        return self.variable.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.variable.rpartition(".")[2]


DEFAULT_MAX_RESTARTS = 3  # Elixir's default; OTP's raw supervisor uses 1.
DEFAULT_MAX_SECONDS = 5
DEFAULT_START_TIMEOUT = 10.0
DEFAULT_RESTART_DELAY_MAX = 60.0
DEFAULT_LOG_MAX_BYTES = 50 * 1024 * 1024  # supervisord's defaults: 50 MB a file, 10 backups
DEFAULT_LOG_BACKUPS = 10


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="worker"):
    """A worker: a Python ``program`` run by otpy's worker process, or any ``command``.

    Exactly one of ``program`` (``"module:attr"``) and ``command`` (argv) is given.
    ``program``, ``enabled`` and (on a dynamic supervisor's template) ``replicas`` may be
    ``Bound`` to a variable: a ``module``, ``bool`` and ``integer`` one (``specs.bindings``).
    """

    id: str
    program: str | Bound | None = None
    command: tuple[str, ...] | None = None
    args: dict[str, Any] = {}
    env: dict[str, str] = {}
    cwd: str | None = None
    restart: RestartType = "permanent"
    shutdown: Shutdown = 5.0
    significant: bool = False
    ready: Readiness = "exec"
    start_timeout: float = DEFAULT_START_TIMEOUT
    max_rss: float | None = None  # MiB: a program child above it after a call exits to be restarted
    enabled: bool | Bound = True  # False: kept in its supervisor's table, never started
    replicas: int | Bound | None = None  # a template only: its dynamic supervisor keeps that many children
    # Seconds before a restart of this child (0: at once, as OTP), doubled for each restart in
    # a row up to ``restart_delay_max``; delayed restarts count toward the intensity as any.
    restart_delay: float = 0.0
    restart_delay_max: float = DEFAULT_RESTART_DELAY_MAX
    # Hot standby (a program child only): this many spare processes that already ran ``setup()``
    # with the child's configuration wait beside it; a restart hands the name to one of them
    # (``processes.standby``) and a new one is made in the background. 0: none.
    standby: int = 0

    @property
    def kind(self) -> str:
        return "worker"


class SupervisorSpec(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="supervisor"):
    """A static supervisor: an ordered list of children and one restart strategy."""

    id: str
    strategy: Strategy = "one_for_one"
    max_restarts: int = DEFAULT_MAX_RESTARTS
    max_seconds: int = DEFAULT_MAX_SECONDS
    auto_shutdown: AutoShutdown = "never"
    children: tuple[AnySpec, ...] = ()
    restart: RestartType = "permanent"
    shutdown: Shutdown = "infinity"
    significant: bool = False

    @property
    def kind(self) -> str:
        return "supervisor"


class DynamicSupervisorSpec(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="dynamic_supervisor"
):
    """A supervisor that starts with no children; they are added with ``start_child``.

    All children are ``one_for_one``; ``max_children`` counts restarting children too.
    ``templates`` name child specs that ``start_child`` can start with extra args.
    """

    id: str
    max_children: int | None = None
    max_restarts: int = DEFAULT_MAX_RESTARTS
    max_seconds: int = DEFAULT_MAX_SECONDS
    templates: dict[str, ChildSpec] = {}
    restart: RestartType = "permanent"
    shutdown: Shutdown = "infinity"
    significant: bool = False

    @property
    def kind(self) -> str:
        return "dynamic_supervisor"


AnySpec = Union[ChildSpec, SupervisorSpec, DynamicSupervisorSpec]


class LogSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where a node's log files are and when they rotate: a file reaching ``max_bytes`` is
    renamed ``.1`` (the older ones shifted, at most ``backups`` kept). ``folder``: None is the
    node's default log folder."""

    max_bytes: int = DEFAULT_LOG_MAX_BYTES
    backups: int = DEFAULT_LOG_BACKUPS
    folder: str | None = None


class NodeSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A whole node: its name, its root supervisor, an opt-in TCP control endpoint (CURVE),
    and the folders its programs are imported from before ``sys.path`` (``program_folders``:
    a topology file's are the current directory and the file's folder). The folders travel
    with the spec to the zygote; no process's own ``sys.path`` is changed for them."""

    name: str
    root: SupervisorSpec
    control_tcp: str | None = None
    program_folders: tuple[str, ...] = ()
    logs: LogSettings = LogSettings()


# --- the tree: one walk, and key paths ---------------------------------------------------


class Place(NamedTuple):
    """One spec of a tree, where it is: ``path`` is its key path (``supervisor.children[0]``),
    ``parent`` the supervisor it is under (None for the top), ``template`` the name of a dynamic
    supervisor's template (whose ``id`` is not a child's id: ``start_child`` gives one)."""

    path: str
    parent: "SupervisorSpec | DynamicSupervisorSpec | None"
    spec: AnySpec
    template: str | None = None


def places(spec: AnySpec, path: str = "", parent: "SupervisorSpec | DynamicSupervisorSpec | None" = None,
           ) -> Iterator[Place]:
    """Every spec of the tree from ``spec`` down, in start order, templates after their
    supervisor's children: the one walk over specs (checks, sockets, programs, placement).

    >>> tree = SupervisorSpec(id="s", children=(DynamicSupervisorSpec(id="d", templates={
    ...     "t": ChildSpec(id="t", command=("true",))}),))
    >>> [(p.path, p.spec.id, p.template) for p in places(tree, "supervisor")]
    [('supervisor', 's', None), ('supervisor.children[0]', 'd', None), ('supervisor.children[0].templates.t', 't', 't')]
    """
    yield Place(path, parent, spec)
    if isinstance(spec, SupervisorSpec):
        for index, child in enumerate(spec.children):
            yield from places(child, join(path, f"children[{index}]"), spec)
    elif isinstance(spec, DynamicSupervisorSpec):
        for name, template in spec.templates.items():
            yield Place(join(path, f"templates.{toml_key(str(name))}"), spec, template, name)


def walk(spec: AnySpec, parent: str | None = None) -> Iterator[tuple[str | None, AnySpec]]:
    """``(parent_id, spec)`` for ``spec`` and every child spec below it (``places`` without templates)."""
    for place in places(spec):
        if place.template is None:
            yield (place.parent.id if place.parent is not None else parent), place.spec


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_key(name: str) -> str:
    """``name`` as one part of a key path: bare when TOML allows, else a quoted TOML string.

    Escaped as TOML does, and so is every character that is not printable or changes how the
    line is shown (controls, bidi and other format characters such as U+202E): a message
    never hands a terminal raw control bytes or text that reads in another order."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return '"' + "".join(_toml_char(char) for char in name) + '"'


def _toml_char(char: str) -> str:
    if char in _TOML_ESCAPES:
        return _TOML_ESCAPES[char]
    if char.isprintable() and unicodedata.category(char) not in ("Cf", "Co", "Cs", "Cn"):
        return char
    return f"\\u{ord(char):04X}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08X}"


def join(path: str, field: str) -> str:
    """The key path ``field`` under ``path`` (either may be empty)."""
    if not path or not field:
        return path or field
    return path + field if field.startswith("[") else f"{path}.{field}"


def from_template(template: ChildSpec, child_id: str, args: dict[str, Any] | None = None) -> ChildSpec:
    """A child spec made from a dynamic supervisor's template, with ``args`` merged over its own."""
    return msgspec.structs.replace(template, id=child_id, args={**template.args, **(args or {})})
