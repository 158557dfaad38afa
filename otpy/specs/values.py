"""The values of one spec: what each field must hold for the spec to start and cross the wire.

The bounds are those of what runs the spec: a path holds no NUL, an environment key no '=',
a name is never a path (``specs.model.name_problem``), ``args`` must cross the wire as
msgpack (plain data, integers within signed 64 bits, at most ``ARGS_MAX_DEPTH`` levels), and
every duration fits asyncio's timers and 64-bit nanosecond clocks (``MAX_SECONDS``: ten
years). A field bound to a variable (``Bound``: ``program``, ``enabled``, ``replicas``) names
it as ``SCOPE.NAME`` (``bound_problem``); whether that variable exists is the topology's check.
Each problem is a ``Problem(field, "got X; expected Y")``; ``specs.rules`` walks a tree with
these and adds the rules between specs (where ``replicas`` may be, replica ids).

>>> value_problems(ChildSpec(id="a", command=("true",), shutdown=-1.0))
[Problem(field='shutdown', message="got -1.0; expected seconds >= 0 and <= 315360000 (ten years), 'brutal_kill' or 'infinity'")]
"""

from __future__ import annotations

import datetime
import math
import re
import socket
import typing
from typing import Any, NamedTuple

import msgspec

from .model import (
    PROGRAM_EXPECTED, AnySpec, AutoShutdown, Bound, ChildSpec, DynamicSupervisorSpec, NodeSpec, Readiness,
    RestartType, Strategy, is_import_target, join, name_problem, toml_key,
)

MAX_SECONDS = 10 * 365 * 24 * 3600  # every duration: far below asyncio's and int64 nanoseconds' limits
MAX_COUNT = 1_000_000  # max_restarts, max_children: far more than any tree, far below int64
MAX_RSS_MIB = 2 ** 30  # 1 PiB
MAX_STANDBY = 8  # hot standbys of one child: each is a whole process with its setup() done
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
MIN_LOG_BYTES, MAX_LOG_BYTES = 1024, 1 << 40  # a log file: 1 KiB to 1 TiB before it rotates
MAX_LOG_BACKUPS = 1000
MIN_START_TIMEOUT = 0.01  # seconds: below it no program can import, and 1e-300 s is a typo
ARGS_EXPECTED = ("plain data: tables with string keys, arrays, strings, numbers, booleans, "
                 f"dates, at most {ARGS_MAX_DEPTH} levels deep, integers within signed 64 bits")


class Problem(NamedTuple):
    """One problem of one spec: ``field`` is a key path under the spec ('' for the spec itself)."""

    field: str
    message: str  # "got X; expected Y"


# --- the values of one spec -----------------------------------------------------------------


def value_problems(spec: AnySpec) -> list[Problem]:
    """The problems of ``spec``'s own fields (not its id, not its children)."""
    problems = _choice_problems(spec) + _shutdown_problems(spec.shutdown)
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
        if not problems:
            problems += _replicas_over_max_children(spec)
    return problems


def _replicas_over_max_children(spec: DynamicSupervisorSpec) -> list[Problem]:
    """The templates' plain ``replicas`` are children the supervisor keeps from its start:
    together at most ``max_children`` (else its start fails). The problem is at the template
    whose count crosses it; a bound count is its variable's (``topology.load``)."""
    total = 0
    for name, template in spec.templates.items():
        count = template.replicas
        if spec.max_children is None or not _is_count(count):
            continue
        total += count
        if total > spec.max_children:
            return [Problem(f"templates.{toml_key(name)}.replicas",
                            f"got {count} ({total} replicas with the templates before it); expected at most "
                            f"max_children ({spec.max_children}) in all: lower replicas or raise max_children")]
    return []


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _child_problems(spec: ChildSpec) -> list[Problem]:
    problems = _program_problems(spec) + _enabled_problems(spec.enabled) + _replicas_problems(spec.replicas)
    problems += _seconds_problems("start_timeout", spec.start_timeout, MIN_START_TIMEOUT)
    problems += _seconds_problems("restart_delay", spec.restart_delay, 0)
    problems += _seconds_problems("restart_delay_max", spec.restart_delay_max, 0)
    if not problems and spec.restart_delay_max < spec.restart_delay:
        problems.append(Problem("restart_delay_max", f"got {_show(spec.restart_delay_max)}; expected seconds >= "
                                f"restart_delay ({_show(spec.restart_delay)})"))
    if not (isinstance(spec.standby, int) and not isinstance(spec.standby, bool) and 0 <= spec.standby <= MAX_STANDBY):
        problems.append(Problem("standby", f"got {_show(spec.standby)}; expected a whole number from 0 to {MAX_STANDBY}"))
    elif spec.standby and spec.command is not None:
        problems.append(Problem("standby", f"got {spec.standby} on a command child; expected 0: a standby is a "
                                "program child's (it runs the program's setup() ahead)"))
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
        if isinstance(spec.program, Bound):
            problems = _bound_problems("program", spec.program)
        elif not is_import_target(spec.program):
            problems = [Problem("program", f"got {_show(spec.program)}; expected {PROGRAM_EXPECTED}")]
        else:
            problems = []
        if not problems and spec.ready == "notify":
            problems = [Problem("ready", "got 'notify' with a program; expected 'exec' ('notify' is for commands)")]
        return problems
    if not isinstance(spec.command, (tuple, list)) or not spec.command:
        return [Problem("command", f"got {_show(spec.command)}; expected the program to run, then its args")]
    for index, arg in enumerate(spec.command):
        if not isinstance(arg, str) or "\0" in arg or (index == 0 and not arg):
            what = "the program to run" if index == 0 else "an argument"
            return [Problem(f"command[{index}]", f"got {_show(arg)}; expected {what}: a string without NUL"
                            + (", not empty" if index == 0 else ""))]
    return []


# --- bound fields (specs.bindings) -------------------------------------------------------------

BOUND_EXPECTED = "Bound('SCOPE.NAME')"
GLOBAL_SCOPE = "global"
# The example a message suggests for each bindable field when the value gives none.
_BOUND_EXAMPLES = {"program": "classifier", "enabled": "use_cache", "replicas": "workers"}


def bound_problem(field: str, bound: Bound) -> Problem | None:
    """Why ``bound`` (the value of ``field``) does not name a variable: ``SCOPE.NAME``, SCOPE
    ``global`` or an id (the name rule: scopes are ids), NAME a Python identifier (a variable's
    name). The message suggests ``global.VALUE`` when the value is a bare name.

    >>> bound_problem("program", Bound("global.classifier")) is None
    True
    >>> bound_problem("program", Bound("classifier")).message
    "got 'classifier'; expected SCOPE.NAME, e.g. 'global.classifier'"
    """
    variable = bound.variable
    if isinstance(variable, str):
        scope, _, name = variable.rpartition(".")
        if scope and (scope == GLOBAL_SCOPE or name_problem(scope) is None) and name.isidentifier():
            return None
    bare = isinstance(variable, str) and variable.isidentifier()
    example = f"{GLOBAL_SCOPE}.{variable if bare else _BOUND_EXAMPLES.get(field, 'name')}"
    return Problem(f"{field}.variable", f"got {_show(variable)}; expected SCOPE.NAME, e.g. {example!r}")


def _bound_problems(field: str, bound: Bound) -> list[Problem]:
    return [] if (problem := bound_problem(field, bound)) is None else [problem]


def _enabled_problems(enabled: object) -> list[Problem]:
    """``enabled``: true, false, or bound to a ``bool`` variable."""
    if isinstance(enabled, bool):
        return []
    if isinstance(enabled, Bound):
        return _bound_problems("enabled", enabled)
    return [Problem("enabled", f"got {_show(enabled)}; expected true or false, or {BOUND_EXPECTED}")]


def _replicas_problems(replicas: object) -> list[Problem]:
    """``replicas``' value: none, a count, or bound to an ``integer`` variable (where it may be
    is a rule between specs: ``specs.rules``)."""
    if replicas is None:
        return []
    if isinstance(replicas, Bound):
        return _bound_problems("replicas", replicas)
    if _is_count(replicas):
        return []
    return [Problem("replicas", f"got {_show(replicas)}; expected an integer >= 0 and <= {MAX_COUNT}, "
                                f"or {BOUND_EXPECTED}")]


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


# --- choices, durations and counts -------------------------------------------------------------------


_CHOICES = {"restart": RestartType, "strategy": Strategy, "auto_shutdown": AutoShutdown, "ready": Readiness}


def _choice_problems(spec: AnySpec) -> list[Problem]:
    """The fields that take one of a few words (``restart``, ``strategy``, ...) and ``significant``."""
    problems = []
    for field, kind in _CHOICES.items():
        value, choices = getattr(spec, field, None), typing.get_args(kind)
        if hasattr(spec, field) and not (isinstance(value, str) and value in choices):
            expected = ", ".join(repr(choice) for choice in choices)
            problems.append(Problem(field, f"got {_show(value)}; expected one of {expected}"))
    if not isinstance(spec.significant, bool):
        problems.append(Problem("significant", f"got {_show(spec.significant)}; expected true or false"))
    return problems


SHUTDOWN_EXPECTED = f"seconds >= 0 and <= {MAX_SECONDS} (ten years), 'brutal_kill' or 'infinity'"


def shutdown_ok(value: object) -> bool:
    """``value`` is a shutdown: seconds (``SHUTDOWN_EXPECTED``) or one of OTP's two atoms."""
    return (isinstance(value, str) and value in ("brutal_kill", "infinity")) or _in_range(value, 0, MAX_SECONDS)


def _shutdown_problems(value: object) -> list[Problem]:
    return [] if shutdown_ok(value) else [Problem("shutdown", f"got {_show(value)}; expected {SHUTDOWN_EXPECTED}")]


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
    logs = spec.logs
    problems += _count_problems("logs.max_bytes", logs.max_bytes, MIN_LOG_BYTES, MAX_LOG_BYTES)
    problems += _count_problems("logs.backups", logs.backups, 0, MAX_LOG_BACKUPS)
    if logs.folder is not None and not _is_path(logs.folder):
        problems.append(Problem("logs.folder", f"got {_show(logs.folder)}; expected a non-empty path without NUL"))
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



STORAGE_EXPECTED = ("'postgresql://USER:PASSWORD@HOST:PORT/DATABASE' (a PostgreSQL database shared by the nodes; "
                    "the password may be left to PGPASSWORD or ~/.pgpass) or 'sqlite' (the node's own file, the "
                    "default)")


def mask_url(url: str) -> str:
    """``url`` with every secret shown as ``***``: the password of its user part, everything
    between ``://USER:`` and the URL's last ``@`` (a password holding ``/``, ``?``, ``#`` or
    ``@``, written raw or percent-encoded, is masked whole, never cut at one of them), and the
    value of a ``password=`` / ``sslpassword=`` query parameter (libpq's and psycopg's form; the
    key matched case-blind, percent-encoded or not). A libpq keyword string (``host=h
    password=x``) has its ``password`` masked the same way. The one rule for every URL otpy shows
    (the registry, reloads, ``otpy optimize``): a URL is never shown with its secret.

    >>> mask_url("postgresql://otpy:se/c@r?e#t@10.0.0.1:5432/db?sslmode=require&PassWord=x")
    'postgresql://otpy:***@10.0.0.1:5432/db?sslmode=require&PassWord=***'
    """
    if not isinstance(url, str):
        return url
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url)
    if scheme is None:  # a libpq keyword string, or not a URL at all
        return re.sub(r"(?i)\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", r"\1***", url)
    head, rest = url[:scheme.end()], url[scheme.end():]
    userinfo, at, rest = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        head += f"{user}:***@" if colon else f"{user}@"
    else:
        rest = userinfo + rest if userinfo else rest
    place, question, query = rest.partition("?")
    if not question:
        return head + place
    fields = []
    for field in query.split("&"):
        key, equals, _value = field.partition("=")
        secret = _unquote(key).strip().lower() in ("password", "sslpassword")
        fields.append(f"{key}=***" if equals and secret else field)
    return head + place + "?" + "&".join(fields)


def _unquote(text: str) -> str:
    from urllib.parse import unquote_plus

    return unquote_plus(text)


def mask_secret(text: str, url: str) -> str:
    """``text`` (an error a database driver made about ``url``) with ``url``'s password masked:
    every URL in it by ``mask_url``, and the password itself, as written and as decoded, where it
    stands as a word of its own (never inside another word: a short password ``p`` leaves
    ``port`` alone, so the mask does not spell the password out)."""
    text = re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda found: mask_url(found[0]), text)
    for password in _passwords(url):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(password)}(?![A-Za-z0-9])", "***", text)
    return text


def _passwords(url: str) -> set[str]:
    """The password(s) ``url`` holds, raw and percent-decoded (user part and query)."""
    found: set[str] = set()
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url)
    if scheme is None:
        found.update(m[1].strip("'") for m in re.finditer(r"(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'?|\S*)", url))
    else:
        userinfo, at, rest = url[scheme.end():].rpartition("@")
        if at and ":" in userinfo:  # as written up to the last '@', and as libpq reads it (up to the first)
            found.update((userinfo.partition(":")[2], userinfo.partition("@")[0].partition(":")[2]))
        for field in (rest if at else userinfo + rest).partition("?")[2].split("&"):
            key, equals, value = field.partition("=")
            if equals and _unquote(key).strip().lower() in ("password", "sslpassword"):
                found.add(value)
    return {password for raw in found for password in (raw, _unquote(raw)) if password}


def registry_storage_problem(storage: object) -> str | None:
    """Why ``storage`` (``[registry] storage``) names no storage the registry can use, or None:
    'sqlite', or a ``postgresql://`` (``postgres://``) URL with a host and a database."""
    if storage is None or storage == "sqlite":
        return None
    shown = _show(mask_url(storage)) if isinstance(storage, str) else _show(storage)
    if not isinstance(storage, str):
        return f"got {shown}; expected {STORAGE_EXPECTED}"
    userinfo = storage.partition("://")[2].rpartition("@")[0]
    if any(char in userinfo for char in "@/?#"):
        return (f"got {shown}: its user or password holds '@', '/', '?' or '#'; write them percent-encoded "
                f"(%40, %2F, %3F, %23); expected {STORAGE_EXPECTED}")
    match = re.fullmatch(r"postgres(?:ql)?://(?:[^@/?#\s]*@)?([^/?#\s]+)/([^/?#\s]+)(?:\?\S*)?", storage)
    if match is None:
        return f"got {shown}; expected {STORAGE_EXPECTED}"
    port = match[1].rsplit(":", 1)[1] if ":" in match[1].lstrip("[").split("]")[-1] else None
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return f"got {shown}: port {port!r}; expected {STORAGE_EXPECTED}"
    return None
