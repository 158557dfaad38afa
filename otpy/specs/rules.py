"""What a spec must satisfy before anything starts, whoever built it (OTP's ``check_childspecs``).

One checker for every source of a spec, walking the tree with ``specs.model.places``: ids (the
name rule, each used once), each spec's values, significance, and the wire's own net. A
topology file is read by ``topology.load``, which checks the shapes of its tables with
pydantic and then asks ``located_problems`` here, reporting each problem at its key path
(``supervisor.children[0].env.HOME``). Specs built in Python (``Node.from_spec``,
``start_child``, ``reconfigure``) or sent over the control socket come to ``spec_problems``
(``child 'ID': FIELD: ...``); an id arriving alone (``terminate_child``, a template's new
child) to ``id_problem``. Every message reads ``FIELD: got X; expected Y``; an empty list
means the spec may start.

The bounds are those of what runs the spec: a path holds no NUL, an environment key no '=', a
name is never a path (``specs.model.name_problem``), ``args`` must cross the wire as msgpack (plain
data, integers within signed 64 bits, at most ``ARGS_MAX_DEPTH`` levels), and every duration
fits asyncio's timers and 64-bit nanosecond clocks (``MAX_SECONDS``: ten years).

>>> from otpy.specs.model import ChildSpec, SupervisorSpec
>>> spec_problems(SupervisorSpec(id="team", children=(ChildSpec(id="a", command=("true",)),
...                                                   ChildSpec(id="a", program="m:f"))))
["child 'a': id: got 'a' used twice in this spec (OTP's duplicate_child_name); expected ids unique in the node"]
>>> for problem in spec_problems(ChildSpec(id="../x", command=("true",), env={"A=B": "1"})):
...     print(problem)
child '../x': id: got '../x'; expected a name of 1 to 64 letters, digits, '_', '.' and '-', starting with a letter, digit or '_'
child '../x': env."A=B": got key 'A=B'; expected a non-empty key without '=' or NUL
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
import socket
from typing import Any, NamedTuple

import msgspec

from .model import (
    PROGRAM_EXPECTED, AnySpec, ChildSpec, DynamicSupervisorSpec, NodeSpec, SupervisorSpec, from_template,
    Place, is_import_target, join, name_problem, places, toml_key,
)

Parent = SupervisorSpec | DynamicSupervisorSpec

MAX_SECONDS = 10 * 365 * 24 * 3600  # every duration: far below asyncio's and int64 nanoseconds' limits
MAX_COUNT = 1_000_000  # max_restarts, max_children: far more than any tree, far below int64
MAX_RSS_MIB = 2 ** 30  # 1 PiB
ARGS_MAX_DEPTH = 64  # msgspec raises RecursionError near 1000 levels; a config is never this deep
ARGS_PATH_DEPTH = 8  # a message names keys down to this level
INT64 = (-(2 ** 63), 2 ** 63 - 1)  # TOML's integers; msgpack refuses more than 64 bits
# The whole msgpack-encoded ChildSpec: it crosses node -> zygote as one SOCK_SEQPACKET datagram,
# whose size the kernel caps at net.core.wmem_default (212,992 bytes by default; EMSGSIZE above);
# the margin is for the Spawn message's own env (OTPY_*) and a smaller wmem_default.
MAX_SPEC_BYTES = 128 * 1024
# A command child's one argument or one env entry ("KEY=VALUE"), NUL included: the kernel's
# MAX_ARG_STRLEN (32 pages); exec fails with E2BIG ("Argument list too long") above it.
MAX_ARG_STRLEN = 32 * 4096
MIN_START_TIMEOUT = 0.01  # seconds: below it no program can import, and 1e-300 s is a typo
ARGS_EXPECTED = ("plain data: tables with string keys, arrays, strings, numbers, booleans, "
                 f"dates, at most {ARGS_MAX_DEPTH} levels deep, integers within signed 64 bits")


class Problem(NamedTuple):
    """One problem of one spec: ``field`` is a key path under the spec ('' for the spec itself)."""

    field: str
    message: str  # "got X; expected Y"


# --- the whole tree: the one checker --------------------------------------------------------


def spec_problems(spec: AnySpec, parent: Parent | None = None, *, node_folder: str | None = None) -> list[str]:
    """Every problem of ``spec`` and the specs below it; ``parent``: the supervisor it goes under.

    Each as ``child 'ID': FIELD: got X; expected Y``, for specs built in Python or sent over
    the control socket. With ``node_folder``, each child's agent socket must fit AF_UNIX too."""
    return [f"{_name(place)}: {_line(problem)}" for place, problem in _checked(spec, parent, "", node_folder)]


def located_problems(spec: AnySpec, path: str, *, node_folder: str | None = None) -> list[Problem]:
    """The same problems as ``spec_problems``, each at its key path under ``path``
    (``supervisor.children[0].env.HOME``): a topology file's, whose shapes pydantic checked."""
    return [Problem(join(place.path, problem.field), problem.message)
            for place, problem in _checked(spec, None, path, node_folder)]


def _checked(spec: AnySpec, parent: Parent | None, path: str, node_folder: str | None) -> list[tuple[Place, Problem]]:
    """Every problem of the tree, with the place of the spec it belongs to: ids (the name
    rule, each once in the tree), each spec's values, significance, agent sockets (with
    ``node_folder``), and last the wire's own net. ``path`` non-empty: a file, whose
    messages name where an id was first used."""
    found: list[tuple[Place, Problem]] = []
    first_use: dict[object, str] = {}
    for place in places(spec, path, parent):
        sub = place.spec
        problems = [] if place.template is not None else _id_problems(place, first_use, located=bool(path))
        problems += value_problems(sub)
        if (problem := _significance(sub, place.parent)) is not None:
            problems.append(problem)
        if node_folder is not None and not problems and isinstance(sub, ChildSpec) and place.template is None:
            problems += _socket_problems(sub.id, node_folder)
        found += [(place, problem) for problem in problems]
    if not found and (wire := wire_problem(spec)) is not None:
        found.append((Place(path, parent, spec), wire))
    return found


def node_problems(spec: NodeSpec, *, node_folder: str | None = None) -> list[str]:
    """``spec_problems`` of the root, and the node's own fields (its name names a folder)."""
    return ([f"node {_line(problem)}" for problem in node_value_problems(spec)]
            + spec_problems(spec.root, node_folder=node_folder))


def template_start_problems(owner: AnySpec, template: str, child_id: object, args: object) -> list[str]:
    """``spec_problems`` of the child ``start_child`` would make from ``owner``'s ``template``.

    The new id and the extra args come from the caller (CLI, wire), so they are checked like
    any spec; an unknown template or owner is left to the supervisor to answer (not_found)."""
    if not isinstance(owner, DynamicSupervisorSpec) or template not in owner.templates:
        return []
    if not isinstance(args, dict):
        return [f"child {child_id!r}: args: got {_show(args)}; expected a table"]
    return spec_problems(from_template(owner.templates[template], child_id, args), owner)


def id_problem(child_id: object, node_folder: str | None = None) -> str | None:
    """Why ``child_id``, arriving alone (``start_from_template``'s new id, the id of
    ``terminate_child``, ``restart_child``, ``delete_child``, ``reconfigure``'s source), cannot be
    a child's id: the name rule, and with ``node_folder`` its agent socket within AF_UNIX's limit."""
    if (problem := name_problem(child_id)) is not None:
        return problem
    if node_folder is not None and (too_long := _socket_problems(child_id, node_folder)):
        return f"id {too_long[0].message.removeprefix('got ')}"
    return None


def reconfigure_problems(source: object, target: AnySpec, parent: Parent | None,
                         *, node_folder: str | None = None) -> list[str]:
    """Why the running child ``source`` cannot be replaced by ``target`` under ``parent``:
    ``id_problem`` of the source, the same id for both, and ``spec_problems`` of the target."""
    if (problem := id_problem(source)) is not None:
        return [problem]
    if getattr(target, "id", None) != source:
        return [f"{_name(Place('', parent, target))}: id: got {_show(getattr(target, 'id', None))}; expected "
                f"{source!r}, the id of the child it replaces"]
    return spec_problems(target, parent, node_folder=node_folder)


def located_machine_problems(spec: AnySpec, path: str) -> list[Problem]:
    """What this machine lacks to start ``spec``'s children: a ``cwd`` that is not a folder, a
    command not found (on the PATH the child will have: its env's, else this process's) or not
    executable. ``validate`` asks; a node asks no more (a command may be installed later, and
    a start fails with the same reason)."""
    problems = []
    for place in places(spec, path):
        if isinstance(place.spec, ChildSpec) and not value_problems(place.spec):
            problems += [Problem(join(place.path, p.field), p.message) for p in _machine_problems(place.spec)]
    return problems


def _machine_problems(spec: ChildSpec) -> list[Problem]:
    cwd = os.path.abspath(os.path.expanduser(spec.cwd)) if spec.cwd else os.getcwd()
    if spec.cwd and not os.path.isdir(cwd):
        why = "which is not a folder" if os.path.exists(cwd) else "which does not exist"
        return [Problem("cwd", f"got {_show(spec.cwd)}, {why}; expected the folder the child starts in")]
    if spec.command is None:
        return []
    command = spec.command[0]
    if "/" in command:
        found = os.path.join(cwd, command)
        ok = os.path.isfile(found) and os.access(found, os.X_OK)
    else:
        search = spec.env.get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(command, path=os.pathsep.join(os.path.join(cwd, folder) for folder in
                                                            search.split(os.pathsep)))
        ok = found is not None
    if ok:
        return []
    where = "" if "/" in command else " on PATH"
    return [Problem("command[0]", f"got {_show(command)}, not found{where} or not executable; expected a program "
                                  "to run")]


SUN_PATH_MAX = 107  # bytes of an AF_UNIX socket path: sockaddr_un.sun_path is 108, its NUL included
# The sockets a node binds itself, under its folder; the zygote's spare binds the longest
# (its pid, up to the kernel's pid_max of 4194304).
NODE_SOCKETS = ("control.sock", "events.sock", "registry-events.sock", "agents/.spare-4194304.sock")


def _socket_problems(child_id: object, node_folder: str) -> list[Problem]:
    """A child whose agent socket ``<node_folder>/agents/<id>.sock`` would be longer than an
    AF_UNIX path may be, at its id (the name rule is checked on its own)."""
    if name_problem(child_id) is not None:
        return []
    if (problem := socket_path_problem(f"{node_folder}/agents/{child_id}.sock")) is not None:
        return [Problem("id", f"got {child_id!r}: {problem}")]
    return []


def socket_path_problem(socket_path: str) -> str | None:
    """Why ``socket_path`` cannot be bound (too long for AF_UNIX), or None."""
    size = len(socket_path.encode())
    if size <= SUN_PATH_MAX:
        return None
    return (f"its socket {socket_path} would be {size} bytes long; expected at most {SUN_PATH_MAX} "
            "(AF_UNIX): a shorter id or node name, or a shorter runtime folder (OTPY_RUNTIME_DIR)")


def _id_problems(place: Place, first_use: dict[object, str], *, located: bool) -> list[Problem]:
    spec_id = place.spec.id
    if (problem := name_problem(spec_id)) is not None:
        return [Problem("id", f"got {problem.removeprefix('id ')}")]
    if spec_id in first_use:
        where = f"this topology, first at {first_use[spec_id]}" if located else "this spec"
        return [Problem("id", f"got {spec_id!r} used twice in {where} (OTP's duplicate_child_name); "
                              "expected ids unique in the node")]
    first_use[spec_id] = join(place.path, "id")
    return []


def significance_problem(spec: AnySpec, parent: Parent | None) -> str | None:
    """Why ``spec`` cannot be a significant child of ``parent`` (OTP's rules), as one line
    ``child 'ID': significant: got ...; expected ...``, or None. The one significance rule:
    topology files, Python specs, the wire and the supervision machines ask it."""
    problem = _significance(spec, parent)
    return None if problem is None else f"{_name(Place('', parent, spec))}: {_line(problem)}"


def _significance(spec: AnySpec, parent: Parent | None) -> Problem | None:
    if spec.significant is not True:
        return None
    if spec.restart == "permanent":
        return Problem("significant", "got true with restart 'permanent'; expected transient or "
                                      "temporary (OTP's bad_combination)")
    if isinstance(parent, DynamicSupervisorSpec):
        return Problem("significant", f"got true under dynamic supervisor {parent.id!r}; "
                                      "expected false (dynamic supervisors never auto-shut down)")
    if isinstance(parent, SupervisorSpec) and parent.auto_shutdown == "never":
        return Problem("significant", f"got true under {parent.id!r}, whose auto_shutdown is 'never'; "
                                      "expected false")
    return None


def wire_problem(spec: AnySpec) -> Problem | None:
    """Why ``spec`` cannot cross the wire (node, zygote, control socket) as it is, or None.

    The last net under the explicit rules: msgspec's own encoder and typed decoder."""
    try:
        msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=type(spec))
    except (msgspec.MsgspecError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        return Problem("", f"cannot be sent as msgpack: {type(exc).__name__}: {exc}; expected a spec of "
                           "the documented types")
    return None


def _line(problem: Problem) -> str:
    return f"{problem.field}: {problem.message}" if problem.field else problem.message


def _name(place: Place) -> str:
    """How a runtime message names the spec: ``child 'a'``, ``supervisor 's'``, and a
    template by where it is (``child 'd.templates.t'``)."""
    spec = place.spec
    shown = spec.id if place.template is None or place.parent is None else f"{place.parent.id}.templates.{place.template}"
    kind = getattr(spec, "kind", "worker")
    return f"{kind.replace('_', ' ')} {shown!r}" if kind != "worker" else f"child {shown!r}"


# --- the values of one spec -----------------------------------------------------------------


def value_problems(spec: AnySpec) -> list[Problem]:
    """The problems of ``spec``'s own fields (not its id, not its children)."""
    problems = _shutdown_problems(spec.shutdown)
    if isinstance(spec, ChildSpec):
        return problems + _child_problems(spec)
    problems += _count_problems("max_restarts", spec.max_restarts, 0, MAX_COUNT)
    problems += _count_problems("max_seconds", spec.max_seconds, 1, MAX_SECONDS)
    if isinstance(spec, DynamicSupervisorSpec):
        if spec.max_children is not None:
            problems += _count_problems("max_children", spec.max_children, 0, MAX_COUNT)
        for name in spec.templates:
            if (problem := name_problem(name, "template name")) is not None:
                problems.append(Problem("templates", f"got {problem}"))
    return problems


def _child_problems(spec: ChildSpec) -> list[Problem]:
    problems = _program_problems(spec)
    problems += _seconds_problems("start_timeout", spec.start_timeout, MIN_START_TIMEOUT)
    if spec.max_rss is not None and not _in_range(spec.max_rss, 0, MAX_RSS_MIB, low_open=True):
        problems.append(Problem("max_rss", f"got {_show(spec.max_rss)}; expected MiB > 0 and <= {MAX_RSS_MIB}"))
    problems += _env_problems(spec.env)
    if spec.cwd is not None and not _is_path(spec.cwd):
        problems.append(Problem("cwd", f"got {_show(spec.cwd)}; expected a non-empty path without NUL"))
    if not isinstance(spec.args, dict):
        problems.append(Problem("args", f"got {_show(spec.args)}; expected a table"))
    elif (problem := _args_problem(spec.args, "args", 1)) is not None:
        problems.append(problem)
    if not problems and spec.command is not None:
        problems += _exec_string_problems(spec)
    return problems if problems else _size_problems(spec)


def _exec_string_problems(spec: ChildSpec) -> list[Problem]:
    """Each string exec gets, NUL included, within the kernel's MAX_ARG_STRLEN."""
    problems = []
    for index, arg in enumerate(spec.command):
        if len(arg.encode()) + 1 > MAX_ARG_STRLEN:
            problems.append(Problem(f"command[{index}]", f"got a string of {len(arg.encode()):,} bytes; expected at "
                                    f"most {MAX_ARG_STRLEN - 1:,} (the kernel's MAX_ARG_STRLEN for one exec string)"))
    for key, value in spec.env.items():
        if len(key.encode()) + len(value.encode()) + 2 > MAX_ARG_STRLEN:
            problems.append(Problem(f"env.{toml_key(key)}", f"got KEY=VALUE of {len(key.encode()) + len(value.encode()) + 1:,}"
                                    f" bytes; expected at most {MAX_ARG_STRLEN - 1:,} (the kernel's MAX_ARG_STRLEN)"))
    return problems


def _size_problems(spec: ChildSpec) -> list[Problem]:
    """The encoded spec within ``MAX_SPEC_BYTES``, reported at its biggest field."""
    try:
        size = len(msgspec.msgpack.encode(spec))
    except (msgspec.MsgspecError, TypeError, ValueError, OverflowError, RecursionError):
        return []  # wire_problem says why
    if size <= MAX_SPEC_BYTES:
        return []
    fields = {name: len(msgspec.msgpack.encode(getattr(spec, name))) for name in ("args", "env", "command", "cwd")}
    biggest = max(fields, key=fields.__getitem__)
    return [Problem(biggest, f"got {fields[biggest]:,} bytes here, making the spec {size:,} bytes encoded; expected "
                             f"the whole spec within {MAX_SPEC_BYTES:,} bytes (it is sent to the zygote as one "
                             "datagram)")]


def _program_problems(spec: ChildSpec) -> list[Problem]:
    if (spec.program is None) == (spec.command is None):
        got = "both 'program' and 'command'" if spec.program is not None else "neither 'program' nor 'command'"
        return [Problem("", f"got {got}; expected exactly one of them")]
    if spec.program is not None:
        if not is_import_target(spec.program):
            return [Problem("program", f"got {_show(spec.program)}; expected {PROGRAM_EXPECTED}")]
        if spec.ready == "notify":
            return [Problem("ready", "got 'notify' with a program; expected 'exec' ('notify' is for commands)")]
        return []
    if not isinstance(spec.command, (tuple, list)) or not spec.command:
        return [Problem("command", f"got {_show(spec.command)}; expected the program to run, then its args")]
    for index, arg in enumerate(spec.command):
        if not isinstance(arg, str) or "\0" in arg or (index == 0 and not arg):
            what = "the program to run" if index == 0 else "an argument"
            return [Problem(f"command[{index}]", f"got {_show(arg)}; expected {what}: a string without NUL"
                            + (", not empty" if index == 0 else ""))]
    return []


def _env_problems(env: object) -> list[Problem]:
    if not isinstance(env, dict):
        return [Problem("env", f"got {_show(env)}; expected a table of strings")]
    problems = []
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            problems.append(Problem(f"env.{toml_key(str(key))}",
                                    f"got key {_show(key)}; expected a non-empty key without '=' or NUL"))
        elif not isinstance(value, str) or "\0" in value:
            problems.append(Problem(f"env.{toml_key(key)}", f"got {_show(value)}; expected a string without NUL"))
    return problems


def _args_problem(value: Any, path: str, depth: int) -> Problem | None:
    """The first value under ``args`` that cannot cross the wire as plain msgpack data.

    Key paths stop growing below ``ARGS_PATH_DEPTH`` levels, so a deep one stays readable."""
    if depth > ARGS_MAX_DEPTH and isinstance(value, (dict, list, tuple)):
        return Problem(path, f"got a table or array nested {depth} levels deep (at or below this key); "
                             f"expected {ARGS_EXPECTED}")
    if isinstance(value, (dict, list, tuple)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and (not isinstance(key, str) or not _is_utf8(key)):
                return Problem(path, f"got key {_show(key)}; expected {ARGS_EXPECTED}")
            below = path if depth >= ARGS_PATH_DEPTH else join(path, f"[{key}]" if isinstance(key, int)
                                                                     else toml_key(key))
            if (problem := _args_problem(item, below, depth + 1)) is not None:
                return problem
        return None
    if isinstance(value, bool) or value is None or isinstance(value, (float, bytes, datetime.date, datetime.time)):
        return None
    if isinstance(value, int) and INT64[0] <= value <= INT64[1]:
        return None
    if isinstance(value, str) and _is_utf8(value):
        return None
    return Problem(path, f"got {_show(value)}; expected {ARGS_EXPECTED}")


# --- durations and counts -------------------------------------------------------------------


def _shutdown_problems(value: object) -> list[Problem]:
    if value in ("brutal_kill", "infinity") and isinstance(value, str):
        return []
    if _in_range(value, 0, MAX_SECONDS):
        return []
    return [Problem("shutdown", f"got {_show(value)}; expected seconds >= 0 and <= {MAX_SECONDS} "
                                "(ten years), 'brutal_kill' or 'infinity'")]


def _seconds_problems(field: str, value: object, low: float) -> list[Problem]:
    if _in_range(value, low, MAX_SECONDS):
        return []
    return [Problem(field, f"got {_show(value)}; expected seconds >= {low} and <= {MAX_SECONDS} (ten years)")]


def _count_problems(field: str, value: object, low: int, high: int) -> list[Problem]:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return []
    return [Problem(field, f"got {_show(value)}; expected an integer >= {low} and <= {high}")]


def _in_range(value: object, low: float, high: float, *, low_open: bool = False) -> bool:
    """``value`` is a finite number (not a bool) in ``[low, high]`` (``(low, high]`` if low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (low < value if low_open else low <= value) and value <= high


def _is_path(value: object) -> bool:
    return isinstance(value, str) and bool(value) and "\0" not in value and _is_utf8(value)


def _is_utf8(text: str) -> bool:
    """False for lone surrogates, which no file system, environment or msgpack string holds."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def show(value: object, *, toml: bool = False) -> str:
    """``value`` as a message shows it: its repr, cut at 60 characters; with ``toml`` (a
    topology file's value) booleans as TOML writes them and a table as "a table"."""
    if toml and isinstance(value, bool):
        return "true" if value else "false"
    if toml and isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_show = show


# --- the node's own fields ------------------------------------------------------------------


def node_value_problems(spec: NodeSpec) -> list[Problem]:
    """The node's name (a folder name) and its TCP control endpoint."""
    problems = []
    if (problem := name_problem(spec.name, "node name")) is not None:
        problems.append(Problem("name", f"got {problem.removeprefix('node name ')}"))
    if spec.control_tcp is not None and (why := control_tcp_problem(spec.control_tcp)) is not None:
        problems.append(Problem("control_tcp", why))
    return problems


TCP_EXPECTED = ("'tcp://HOST:PORT': HOST '*', an IP address ('[...]' for IPv6), an interface or a name "
                "that resolves, PORT 1-65535")


def control_tcp_problem(endpoint: object) -> str | None:
    """Why ``endpoint`` cannot be bound as the node's TCP control endpoint, or None.

    The host is resolved here (``getaddrinfo``) and must be an address of this machine, so
    ``validate`` refuses what ``start`` cannot bind."""
    got = f"got {_show(endpoint)}; expected {TCP_EXPECTED}"
    match = re.fullmatch(r"tcp://(\*|\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]\0]+):(\d{1,5})", endpoint) \
        if isinstance(endpoint, str) else None
    if match is None or not 1 <= int(match[2]) <= 65535:
        return got
    host = match[1].strip("[]")
    if host == "*" or host in {name for _, name in socket.if_nameindex()}:
        return None
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"got {_show(endpoint)}, whose host does not resolve ({exc}); expected {TCP_EXPECTED}"
    if not any(_is_local(family, address[0]) for family, _, _, _, address in found):
        return (f"got {_show(endpoint)}: {host} is not an address of this machine; expected {TCP_EXPECTED}, "
                "on a local address")
    return None


def _is_local(family: int, address: str) -> bool:
    """True when a TCP socket can be bound to ``address`` here: the throw-away socket takes an
    ephemeral port and is closed at once; nothing is sent."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True
