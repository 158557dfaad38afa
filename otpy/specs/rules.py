"""What a spec must satisfy before anything starts, whoever built it (OTP's ``check_childspecs``).

One checker for every source of a spec. A topology file is read by ``_config``, which checks
the shapes of its tables with pydantic and then asks ``located_value_problems`` here about the
values, reporting each at its key path (``supervisor.children[0].env.HOME``). Specs built in
Python (``Node.from_spec``, ``start_child``, ``reconfigure``) or sent over the control socket
come to ``spec_problems``, which adds the rules between specs (ids used twice, significance).
Every message reads ``FIELD: got X; expected Y``; an empty list means the spec may start.

The bounds are those of what runs the spec: a path holds no NUL, an environment key no '=', a
name is never a path (``_specs.name_problem``), ``args`` must cross the wire as msgpack (plain
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
import unicodedata
from typing import Any, Iterator, NamedTuple

import msgspec

from .model import (
    PROGRAM_EXPECTED, PROGRAM_PATTERN, AnySpec, ChildSpec, DynamicSupervisorSpec, NodeSpec,
    SupervisorSpec, from_template, name_problem,
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


# --- the whole tree -------------------------------------------------------------------------


def spec_problems(spec: AnySpec, parent: Parent | None = None) -> list[str]:
    """Every problem of ``spec`` and the specs below it; ``parent``: the supervisor it goes under."""
    problems: list[str] = []
    seen: set[str] = set()
    for _, under, sub, is_template in _walk(spec, parent):
        found = [] if is_template else _id_problems(sub.id, seen)
        found += value_problems(sub) + _tree_problems(sub, under)
        problems += [f"{_name(sub)}: {_line(problem)}" for problem in found]
    if not problems and (wire := wire_problem(spec)) is not None:
        problems.append(f"{_name(spec)}: {_line(wire)}")
    return problems


def node_problems(spec: NodeSpec) -> list[str]:
    """``spec_problems`` of the root, and the node's own fields (its name names a folder)."""
    return [f"node {_line(problem)}" for problem in node_value_problems(spec)] + spec_problems(spec.root)


def template_start_problems(owner: AnySpec, template: str, child_id: object, args: object) -> list[str]:
    """``spec_problems`` of the child ``start_child`` would make from ``owner``'s ``template``.

    The new id and the extra args come from the caller (CLI, wire), so they are checked like
    any spec; an unknown template or owner is left to the supervisor to answer (not_found)."""
    if not isinstance(owner, DynamicSupervisorSpec) or template not in owner.templates:
        return []
    if not isinstance(args, dict):
        return [f"child {child_id!r}: args: got {_show(args)}; expected a table"]
    return spec_problems(from_template(owner.templates[template], child_id, args), owner)


def located_value_problems(spec: AnySpec, path: str) -> list[Problem]:
    """``value_problems`` of ``spec`` and every spec below it, each at its key path under ``path``.

    The topology file's checker uses this: the shapes were checked by pydantic already."""
    problems = []
    for where, _, sub, _ in _walk(spec, None, path):
        problems += [Problem(join(where, p.field), p.message) for p in value_problems(sub)]
    return problems


Located = tuple[str, Parent | None, AnySpec, bool]


def _walk(spec: AnySpec, parent: Parent | None, path: str = "") -> Iterator[Located]:
    """``(key path, parent, spec, is_template)`` for ``spec`` and everything below it."""
    yield path, parent, spec, False
    if isinstance(spec, SupervisorSpec):
        for index, child in enumerate(spec.children):
            yield from _walk(child, spec, f"{path}.children[{index}]")
    elif isinstance(spec, DynamicSupervisorSpec):
        for name, template in spec.templates.items():
            shown = msgspec.structs.replace(template, id=f"{spec.id}.templates.{name}")
            yield join(path, f"templates.{toml_key(str(name))}"), spec, shown, True


def located_machine_problems(spec: AnySpec, path: str) -> list[Problem]:
    """What this machine lacks to start ``spec``'s children: a ``cwd`` that is not a folder, a
    command not found (on the PATH the child will have: its env's, else this process's) or not
    executable. ``validate`` asks; a node asks no more (a command may be installed later, and
    a start fails with the same reason)."""
    problems = []
    for where, _, sub, _ in _walk(spec, None, path):
        if isinstance(sub, ChildSpec) and not value_problems(sub):
            problems += [Problem(join(where, p.field), p.message) for p in _machine_problems(sub)]
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


def located_socket_problems(spec: AnySpec, path: str, node_folder: str) -> list[Problem]:
    """Each child of the tree whose agent socket ``<node_folder>/agents/<id>.sock`` would be
    longer than an AF_UNIX path may be, at its id's key path (templates' ids come at run time)."""
    problems = []
    for where, _, sub, is_template in _walk(spec, None, path):
        if isinstance(sub, ChildSpec) and not is_template and name_problem(sub.id) is None:
            if (problem := socket_path_problem(f"{node_folder}/agents/{sub.id}.sock")) is not None:
                problems.append(Problem(join(where, "id"), f"got {sub.id!r}: {problem}"))
    return problems


def socket_path_problem(socket_path: str) -> str | None:
    """Why ``socket_path`` cannot be bound (too long for AF_UNIX), or None."""
    size = len(socket_path.encode())
    if size <= SUN_PATH_MAX:
        return None
    return (f"its socket {socket_path} would be {size} bytes long; expected at most {SUN_PATH_MAX} "
            "(AF_UNIX): a shorter id or node name, or a shorter runtime folder (OTPY_RUNTIME_DIR)")


def _id_problems(spec_id: object, seen: set[object]) -> list[Problem]:
    if (problem := name_problem(spec_id)) is not None:
        return [Problem("id", f"got {problem.removeprefix('id ')}")]
    if spec_id in seen:
        return [Problem("id", f"got {spec_id!r} used twice in this spec (OTP's duplicate_child_name); "
                              "expected ids unique in the node")]
    seen.add(spec_id)
    return []


def significance_problem(spec: AnySpec, parent: Parent | None) -> str | None:
    """Why ``spec`` cannot be a significant child of ``parent`` (OTP's rules), as one line
    ``child 'ID': significant: got ...; expected ...``, or None. The one significance rule:
    topology files, Python specs, the wire and the supervision machines ask it."""
    problem = _significance(spec, parent)
    return None if problem is None else f"{_name(spec)}: {_line(problem)}"


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


def _tree_problems(spec: AnySpec, parent: Parent | None) -> list[Problem]:
    """The rules between a spec and its parent: OTP's for significant children."""
    problem = _significance(spec, parent)
    return [] if problem is None else [problem]


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


def _name(spec: AnySpec) -> str:
    kind = getattr(spec, "kind", "worker")
    return f"{kind.replace('_', ' ')} {spec.id!r}" if kind != "worker" else f"child {spec.id!r}"


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
        if not isinstance(spec.program, str) or not re.fullmatch(PROGRAM_PATTERN, spec.program):
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


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
