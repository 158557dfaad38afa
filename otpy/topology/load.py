"""Topology files: read ``topology.toml``, check it, and turn it into ``specs.model`` Structs.

The file is written by people, so it is checked with pydantic against the tables of
``topology.toml_file`` (strict types, unknown keys rejected), then turned into specs and
checked by the one spec checker (``specs.rules.located_problems``: ids, values, significance,
sockets), and every problem is reported at once, one per line, as
``FILE: KEY.PATH[i].KEY: got X; expected Y``.

>>> topology = parse_topology('''
... [supervisor]
... [[supervisor.children]]
... id = "greeter"
... program = "otpy.agent.program:Program"
... ''')
>>> topology.node.root.children[0].shutdown
5.0
>>> parse_topology('[supervisor]\\nmax_seconds = 0', source="t.toml")
Traceback (most recent call last):
...
otpy.topology.load.TopologyError: t.toml: supervisor.max_seconds: got 0; expected a number > 0
"""

from __future__ import annotations

import os
import re
import tomllib

import msgspec
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from pydantic import ValidationError

from ..agent.import_check import IMPORT_TIMEOUT, import_in_child, import_path
from ..variables.placement import with_registry
from ..specs.bindings import BINDABLE, Binding, bindings
from ..specs.rules import (
    MAX_COUNT,
    located_machine_problems, located_problems, node_socket_problem, node_value_problems, replica_id_problems, show,
)
from ..specs.model import NAME_EXPECTED, NAME_PATTERN, PROGRAM_EXPECTED, PROGRAM_PATTERN, AnySpec, Bound, ChildSpec
from ..specs.model import DynamicSupervisorSpec, NodeSpec, SupervisorSpec, join, name_problem, places, toml_key
from ..specs.model import LogSettings
from .files import read_bounded_file

if TYPE_CHECKING:
    from .cluster import ClusterSpec
from .toml_file import (
    BOUND_TAG, CHILD_TABLES, VALUE_TAG, BoundTable, ConstraintTable, DynamicSupervisorTable, LogsTable, NodeTable,
    RootSupervisorTable, SupervisorTable, TemplateTable, TopologyFile, WorkerTable, Table, is_bindable_tag,
    topology_json_schema,
)
from ..variables.types import VariableError

__all__ = [
    "MAX_TOPOLOGY_BYTES", "Topology", "TopologyError", "binding_problems", "check_programs", "load_topology",
    "parse_topology", "read_topology_file",
    "topology_json_schema",
]


class TopologyError(Exception):
    """A topology file that cannot be used. ``problems`` holds one message per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Topology:
    """A checked topology file: the node to run, and the tables other parts of otpy read.

    ``file_root``: the root as the file writes it, without the registry child otpy puts first
    (``variables.placement.with_registry``): its key paths are the file's, so problems found
    after loading (``check_programs``, this machine's) name them. ``raw_constraints``:
    ``{scope: [{"check": "pkg.mod:function", "description": ...}, ...]}`` as written."""

    node: NodeSpec
    path: str
    raw_variables: dict[str, dict[str, dict]] = field(default_factory=dict)
    raw_pipelines: dict[str, dict] = field(default_factory=dict)
    raw_optimizer: dict[str, Any] = field(default_factory=dict)
    raw_constraints: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    file_root: SupervisorSpec | None = None
    registry_storage: str | None = None  # [registry] storage: None = the node's SQLite file
    raw_cluster: dict[str, Any] = field(default_factory=dict)  # [cluster] as written (file, nodes)
    cluster: ClusterSpec | None = None  # [cluster] checked and resolved (topology.cluster); None: none

    @property
    def declared_root(self) -> SupervisorSpec:
        """The tree at the file's key paths (``file_root``, else the node's root)."""
        return self.file_root if self.file_root is not None else self.node.root


# Problems: "KEY.PATH: got X; expected Y".

BOUND_FORM = '{ variable = "SCOPE.NAME" }'  # a bound field's table, as messages show it

Problem = tuple[str, str]  # (key path, message)

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a table",
    "model_type": "a table",
    "list_type": "an array",
    "greater_than_equal": "a number >= {ge:g}",
    "greater_than": "a number > {gt:g}",
    "too_short": "at least {min_length} item",
    "finite_number": "a finite number",
}
_PATTERN_EXPECTED = {
    NAME_PATTERN: NAME_EXPECTED,
    PROGRAM_PATTERN: PROGRAM_EXPECTED,
}


def _path(parts: tuple | list) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + toml_key(str(part))
    return text


def _show(value: Any) -> str:
    return show(value, toml=True)


def _quote_all(names) -> str:
    return ", ".join(repr(name) for name in names)


def _plain_loc(loc: tuple) -> tuple:
    """``loc`` without pydantic's union tags (``children, 0, 'worker'``; a bindable field's
    ``program, 'bound'``) and ``[key]`` markers."""
    parts: list = []
    for index, part in enumerate(loc):
        if part == "[key]" or (parts and isinstance(parts[-1], int) and part in CHILD_TABLES):
            continue
        if is_bindable_tag(loc, index):
            continue
        parts.append(part)
    return tuple(parts)


def _table_at(loc: tuple) -> type[Table] | None:
    """The model of the table at pydantic's (tagged) ``loc``, to list its accepted keys."""
    if not loc:
        return TopologyFile
    if loc == ("node",):
        return NodeTable
    if loc == ("logs",):
        return LogsTable
    if loc == ("supervisor",):
        return RootSupervisorTable
    if len(loc) >= 2 and isinstance(loc[-2], int) and loc[-1] in CHILD_TABLES:
        return CHILD_TABLES[loc[-1]]
    if len(loc) >= 2 and loc[-2] == "templates":
        return TemplateTable
    if loc and is_bindable_tag(loc, len(loc) - 1) and loc[-1] == BOUND_TAG:
        return BoundTable
    if len(loc) == 3 and loc[0] == "constraints":
        return ConstraintTable
    return None


def _problem_from_pydantic(error: dict) -> Problem:
    """One pydantic error as ``(key path, 'got X; expected Y')``."""
    kind, loc, ctx, found = error["type"], error["loc"], error.get("ctx", {}), error.get("input")
    path = _path(_plain_loc(loc))
    if kind == "missing":
        return path, "missing; this key is required"
    if kind == "extra_forbidden":
        table = _table_at(loc[:-1])
        accepted = f"; accepted keys: {_quote_all(sorted(table.model_fields))}" if table else ""
        return path, f"unknown key {loc[-1]!r}{accepted}"
    if kind == "union_tag_invalid":
        found = found.get("type") if isinstance(found, dict) else found
        expected = f"one of {_quote_all(CHILD_TABLES)}"
        return _path((*_plain_loc(loc), "type")), f"got {_show(found)}; expected {expected}"
    if kind == "literal_error":
        expected = "one of " + ctx["expected"].replace(" or ", ", ")
    elif kind == "string_pattern_mismatch":
        expected = _PATTERN_EXPECTED.get(ctx["pattern"], f"a string matching {ctx['pattern']}")
    elif kind in _EXPECTED:
        expected = _EXPECTED[kind].format(**ctx)
    elif "expected" in ctx:
        expected = ctx["expected"]
    else:
        return path, f"got {_show(found)}; {error['msg']}"
    if any(is_bindable_tag(loc, index) and part == VALUE_TAG for index, part in enumerate(loc)):
        expected += f", or {BOUND_FORM}"
    return path, f"got {_show(found)}; expected {expected}"


def _format(source: str, problems: list[Problem]) -> list[str]:
    return [f"{source}: {path}: {message}" if path else f"{source}: {message}" for path, message in problems]


# From checked tables to specs.


def _set_fields(table: Table, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields the file sets, so that every other field takes its Struct's default."""
    return {name: getattr(table, name) for name in table.model_fields_set if name not in ("type", *drop)}


def _worker_spec(table: TemplateTable, child_id: str, base_dir: str) -> ChildSpec:
    fields = _set_fields(table, drop=("id",))
    for name in BINDABLE:
        if isinstance(fields.get(name), BoundTable):
            fields[name] = Bound(fields[name].variable)
    if table.command is not None:
        fields["command"] = tuple(table.command)
    if table.cwd is not None and "\0" not in table.cwd:  # a NUL is reported by the value rules
        fields["cwd"] = os.path.normpath(os.path.join(base_dir, os.path.expanduser(table.cwd)))
    return ChildSpec(id=child_id, **fields)


def _spec(table: SupervisorTable | DynamicSupervisorTable | RootSupervisorTable | WorkerTable,
          base_dir: str) -> AnySpec:
    if isinstance(table, WorkerTable):
        return _worker_spec(table, table.id, base_dir)
    if isinstance(table, DynamicSupervisorTable):
        templates = {name: _worker_spec(t, name, base_dir) for name, t in table.templates.items()}
        return DynamicSupervisorSpec(**_set_fields(table, drop=("templates",)), templates=templates)
    children = tuple(_spec(child, base_dir) for child in table.children)
    return SupervisorSpec(**{"id": table.id, **_set_fields(table, drop=("children",)), "children": children})


# Public entry points.


def _read_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except RecursionError:  # tomllib parses nested arrays and tables by recursion
        raise TopologyError([f"{source}: invalid TOML: values nested too deeply"]) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        place = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if place:
            message = f"line {place[1]}, column {place[2]}: invalid TOML: {message[: place.start()]}"
        else:
            message = f"invalid TOML: {message}"
        raise TopologyError([f"{source}: {message}"]) from None


def _node_problems(node: NodeSpec, *, from_file_name: bool) -> list[Problem]:
    """``[node]``'s values, by the rules every node spec follows (``specs.rules``)."""
    problems = []
    for key, message in node_value_problems(node):
        if key == "name" and from_file_name:
            message = message.replace("; expected", " (from the file name); expected", 1)
        problems.append((key if key.startswith("logs.") else f"node.{key}", message))  # [logs] is its own table
    return problems


def _node_socket_problems(node: NodeSpec, folder: str, *, from_file_name: bool) -> list[Problem]:
    """The node's own sockets under this user's runtime folder within AF_UNIX's limit (its
    agents' are checked with the tree, ``located_problems``)."""
    if (problem := node_socket_problem(folder)) is not None:
        shown = " (from the file name)" if from_file_name else ""
        return [("node.name", f"got {node.name!r}{shown}: {problem}")]
    return []


def _node_folder(node: NodeSpec) -> str | None:
    """The node's folder under this user's runtime root, or None for a name that is no name."""
    from ..host.runtime_dir import node_folder_path

    return node_folder_path(node.name) if name_problem(node.name) is None else None


def parse_topology(
    text: str, *, source: str = "<string>", default_name: str = "node",
    base_dir: str | None = None, check_imports: bool = False, import_timeout: float = IMPORT_TIMEOUT,
) -> Topology:
    """The topology in ``text``. Relative ``cwd`` and ``[logs] folder`` values are taken from
    ``base_dir`` (default: cwd). ``import_timeout``: seconds the programs' import check may take.

    Raises TopologyError listing every problem, each prefixed with ``source``.
    """
    try:
        file = TopologyFile.model_validate(_read_toml(text, source))
    except ValidationError as exc:
        raise TopologyError(_format(source, [_problem_from_pydantic(e) for e in exc.errors()])) from None
    root = _spec(file.supervisor, os.path.abspath(base_dir or os.getcwd()))
    node = NodeSpec(name=file.node.name or default_name, root=root, control_tcp=file.node.control_tcp,
                    program_folders=_program_folders(source),
                    logs=_log_settings(file.logs, os.path.abspath(base_dir or os.getcwd())))
    from_file_name = file.node.name is None
    problems = _node_problems(node, from_file_name=from_file_name)
    if not problems and (folder := _node_folder(node)) is not None:
        problems += _node_socket_problems(node, folder, from_file_name=from_file_name)
    problems += located_problems(root, "supervisor", node_folder=None if problems else _node_folder(node))
    if problems:
        raise TopologyError(_format(source, problems))
    constraints = {scope: [entry.model_dump() for entry in entries] for scope, entries in file.constraints.items()}
    storage = _registry_storage(source, file)
    try:
        # by keyword and only when there are some: a with_registry without constraints still works
        with_constraints = {"constraints": constraints} if constraints else {}
        if storage:
            with_constraints["storage"] = storage
        node_root = with_registry(root, file.variables, **with_constraints)
    except VariableError as exc:
        raise TopologyError(_format(source, [(None, problem) for problem in exc.problems])) from None
    if problems := binding_problems(root, file.variables, node_folder=_node_folder(node)):
        raise TopologyError(_format(source, problems))
    raw_cluster, cluster = file.cluster.model_dump(exclude_defaults=True), None
    if raw_cluster:  # only then: no import cost for a node without one
        from .cluster import cluster_of

        cluster, cluster_problems = cluster_of(raw_cluster, os.path.abspath(base_dir or os.getcwd()), source)
        if cluster_problems:
            raise TopologyError(_format(source, [(None, problem) for problem in cluster_problems]))
    topology = Topology(
        node=msgspec.structs.replace(node, root=node_root),
        path=source,
        raw_variables=file.variables,
        raw_pipelines=file.pipelines,
        raw_optimizer=file.optimizer,
        raw_constraints=constraints,
        file_root=root,
        registry_storage=storage,
        raw_cluster=raw_cluster,
        cluster=cluster,
    )
    if check_imports and (machine := located_machine_problems(topology.declared_root, "supervisor")):
        raise TopologyError(_format(source, machine))
    if check_imports and (import_problems := check_programs(topology, timeout=import_timeout)):
        raise TopologyError(import_problems)
    return topology


def _registry_storage(source: str, file: TopologyFile) -> str | None:
    """``[registry] storage`` checked (None: the node's SQLite file, 'sqlite' too); a shared
    storage without ``[variables]`` would hold nothing: TopologyError saying to declare them."""
    from ..specs.values import registry_storage_problem

    storage = file.registry.storage
    if (problem := registry_storage_problem(storage)) is not None:
        raise TopologyError(_format(source, [("registry.storage", problem)]))
    if storage == "sqlite":
        return None
    if storage and not file.variables:
        raise TopologyError(_format(source, [("registry.storage", "a storage for variables, but this file declares "
                                              "none: declare them ([variables.global] NAME = { type = ..., "
                                              "default = ... }), or remove [registry]")]))
    return storage


# Bound fields and the variables they name.


def binding_problems(root: AnySpec, variables: dict[str, dict[str, Any]], *, node_folder: str | None = None,
                     ) -> list[Problem]:
    """Every bound field of ``root``'s tree must name a variable the file declares in
    ``[variables.SCOPE]``, of the type its field takes (``specs.bindings.BINDABLE``), with a
    default (the node runs the tree before anything is set). A template's bound ``replicas``:
    a variable that is never negative, and whose highest value still gives replica ids that are
    ids. Each problem at the bound field's ``.variable``; ``variables`` are the file's tables,
    already checked (``variables.placement.with_registry``)."""
    problems = []
    limits = {place.spec.id: place.spec.max_children for place in places(root)
              if isinstance(place.spec, DynamicSupervisorSpec)}
    for binding in bindings(root, "supervisor"):
        table = variables.get(binding.bound.scope, {}).get(binding.bound.name)
        if (problem := _bound_variable_problem(binding, variables, table)) is not None:
            problems.append((f"{binding.path}.variable", problem))
        elif binding.field == "replicas" and binding.template:
            where = binding.path.removesuffix(".replicas")
            problems += [(join(where, p.field), p.message) for p in replica_id_problems(
                binding.child, table["high"], node_folder, got=f"{binding.bound.variable} up to {table['high']}")]
            if (problem := _over_max_children(binding, table["high"], limits.get(binding.supervisor))) is not None:
                problems.append((binding.path, problem))
    return problems


def _over_max_children(binding: Binding, high: int, limit: int | None) -> str | None:
    """A bound ``replicas`` may reach its variable's ``high``: at most its supervisor's
    ``max_children`` (a write above it would fail at its first replica too many)."""
    if limit is None or high <= limit:
        return None
    return (f"got {binding.bound.variable} up to {high} (its high); expected at most max_children ({limit}) of "
            f"supervisor {binding.supervisor!r}: lower the variable's high or raise max_children")


def _bound_variable_problem(binding: Binding, variables: dict[str, dict[str, Any]], table: Any) -> str | None:
    """Why ``binding``'s variable cannot give its field a value, or None (``table``: its
    declaration, None if there is none)."""
    variable, scope, kind = binding.bound.variable, binding.bound.scope, BINDABLE[binding.field]
    example = f'[variables.{toml_key(scope)}] {binding.bound.name} = {{ type = "{kind}", ..., default = ... }}'
    if not variables:
        return f"{variable} is not declared: this file has no [variables] table; expected {example}"
    if scope not in variables:
        return (f"{variable} is not declared: this file has no [variables.{toml_key(scope)}] table (scopes with "
                f"variables: {_quote_all(variables)}); expected {example}")
    if table is None:
        declared = _quote_all(variables[scope]) or "nothing"
        return f"{variable} is not declared; declared in {scope}: {declared}"
    if table.get("type") != kind:
        return (f"{variable} is {_a(table.get('type'))} variable; expected {_a(kind)} variable ({binding.field} "
                f"takes {_BINDABLE_VALUES[binding.field]})")
    if table.get("default") is None:
        return (f"{variable} has no default; expected one: the node must know what to run before anything is "
                f"set (add default = ... to variables.{toml_key(scope)}.{toml_key(binding.bound.name)})")
    if binding.field == "replicas" and table["low"] < 0:
        return f"{variable} may be {table['low']} (its low); expected low >= 0: replicas counts children"
    if binding.field == "replicas" and table["high"] > MAX_COUNT:
        return f"{variable} may be {table['high']} (its high); expected high <= {MAX_COUNT}, as a plain replicas"
    return None


_BINDABLE_VALUES = {"program": "the program to run", "enabled": "true or false", "replicas": "a count"}


def _a(word: object) -> str:
    return f"an {word}" if str(word)[:1] in "aeiou" else f"a {word}"


def _log_settings(table: LogsTable, base_dir: str) -> LogSettings:
    """``[logs]`` as the node's ``LogSettings``; a relative ``folder`` is the topology file's folder's."""
    fields = _set_fields(table)
    if isinstance(table.folder, str) and table.folder and "\0" not in table.folder:  # a NUL: the value rules say
        fields["folder"] = os.path.normpath(os.path.join(base_dir, os.path.expanduser(table.folder)))
    return LogSettings(**fields)


MAX_TOPOLOGY_BYTES = 1024 * 1024  # a topology file is a few kB; 1 MiB is far above any real one


def read_topology_file(source: str) -> str:
    """The text of the topology file ``source``, read safely: every topology file (``otpy
    start``/``validate``/``reload``, a node's SIGHUP) is read here and nowhere else, by the one
    safe reader (``topology.files.read_bounded_file``: a regular file of at most
    ``MAX_TOPOLOGY_BYTES``, opened non-blocking; a FIFO, ``/dev/zero`` or a folder is refused).
    A symlink is followed: a link to a topology file is a topology file.
    """
    try:
        data = read_bounded_file(source, MAX_TOPOLOGY_BYTES, hint="give the path of a topology file (.toml)",
                                 allowed=f"the {MAX_TOPOLOGY_BYTES // 1024 // 1024} MiB a topology file may have")
    except ValueError as exc:  # its message names the file and says why
        raise TopologyError([str(exc)]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError([f"{source}: cannot read the file: it is not UTF-8 text ({exc.reason} at byte "
                             f"{exc.start})"]) from None


def load_topology(path: str | os.PathLike, *, check_imports: bool = True,
                  import_timeout: float = IMPORT_TIMEOUT) -> Topology:
    """The topology in the file at ``path``; its node is named after the file unless ``[node] name``.

    With ``check_imports`` every ``program`` is imported (in a child process) and failures are
    problems too. Programs are imported from the node's ``program_folders`` (the current
    directory and the file's folder) before ``sys.path``; this process's ``sys.path`` is left
    as it is.
    """
    source = os.fspath(path)
    text = read_topology_file(source)
    stem = os.path.splitext(os.path.basename(source))[0]
    base_dir = os.path.dirname(os.path.abspath(source))
    return parse_topology(text, source=source, default_name=stem, base_dir=base_dir, check_imports=check_imports,
                          import_timeout=import_timeout)


def _programs(topology: Topology) -> Iterator[tuple[str, str]]:
    """Yield ``(key path, target)`` for every ``program`` in the tree, templates included, and
    every module a bound ``program`` may run (``variables.SCOPE.NAME.modules[i]``, once each)."""
    for place in places(topology.declared_root, "supervisor"):
        if isinstance(place.spec, ChildSpec) and isinstance(place.spec.program, str):
            yield f"{place.path}.program", place.spec.program
    bound = dict.fromkeys(b.bound for b in bindings(topology.declared_root) if b.field == "program")
    for variable in bound:
        table = topology.raw_variables.get(variable.scope, {}).get(variable.name, {})
        for index, module in enumerate(table.get("modules", ())):
            yield f"variables.{toml_key(variable.scope)}.{toml_key(variable.name)}.modules[{index}]", module


def _program_folders(source: str) -> tuple[str, ...]:
    """Where programs are imported from, besides ``sys.path``: the current directory and the
    topology file's folder (a program next to its topology needs no install)."""
    folders = [os.getcwd()]
    if os.path.isfile(source):
        folders.append(os.path.dirname(os.path.abspath(source)))
    return tuple(dict.fromkeys(folders))


def check_programs(topology: Topology, *, timeout: float = IMPORT_TIMEOUT) -> list[str]:
    """Import every ``program`` target in a child process; one problem per target that fails.

    A child, because an import runs user code: one that exits, kills itself or hangs must
    become a problem, not end (or freeze) the caller, and the caller's ``sys.path`` and
    modules stay as they were. One child imports them all; if one ends it, the next child
    goes on after that target.
    """
    programs = list(_programs(topology))
    path = import_path(topology.node.program_folders)
    problems: list[Problem] = []
    done = 0
    while done < len(programs):
        reports, ended = import_in_child([target for _, target in programs[done:]], path, timeout)
        for index, message in reports:
            if message is not None:
                problems.append((programs[done + index][0], message))
        done += len(reports)
        if ended is not None and done < len(programs):
            key_path, target = programs[done]
            problems.append((key_path, f"importing {target!r} {ended}"))
            done += 1
    return _format(topology.path, problems)
