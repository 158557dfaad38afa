"""``otpy vars``: read and write the node's variables.

    otpy vars list [SCOPE]              every variable (of SCOPE), its value, version and why
    otpy vars get SCOPE.NAME [--json]   the value alone, JSON-encoded (a document compact; --json: the whole entry)
    otpy vars set SCOPE.NAME VALUE      VALUE is JSON, else a plain string; through the node
    otpy vars set SCOPE NAME=VALUE...   several at once; a document's VALUE: JSON text or @FILE
    otpy vars explain CHILD NAME        where CHILD's NAME comes from

``list``, ``get`` and ``explain`` send one typed request (``otpy.wire.registry_protocol``) with
``RegistryClient`` over an ``otpy.Caller`` of the node, or, with ``--endpoint`` and ``--keys``,
over a ``RemoteCaller`` of its call gateway (``otpy.wire.remote_calls``: control_tcp's port + 1,
the same CURVE keys). ``set`` asks the node
(``set_variables``): it makes the running tree match the value (a bound child reconfigured,
started or stopped) and only then stores it, and the command prints what changed.
``--expected-version`` goes through the node too: the registry's compare-and-set, made in the
node's commit (the programs asked first, the tree made to match). Exit codes as ``otpy``'s: 0 success, 1 refused or failed
(the reason is printed, naming the child for a start that failed; over TCP, what to check
when the node does not answer), 2 usage.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import Any, Iterator, NoReturn

import click
import msgspec

from ..host.runtime_dir import agent_socket_path
from ..variables.client import RegistryClient
from ..variables.placement import REGISTRY_ID
from ..wire.calls import Caller
from ..wire.client import Client, NodeStale
from ..wire.errors import CallError, CallTimeout, NoSuchAgent, NodeUnreachable
from ..wire.operations import ControlError
from ..wire.protocol import Change, Outcome
from ..wire.registry_protocol import (
    Explain, GetSpace, GetValue, ListValues, RegistryRefusal, RegistryRequest,
)
from . import set_values
from .exits import Remote, Target, ask, node_or_exit
from .options import Count, child_id_argument, node_options

EXIT_FAILED = 1
EXIT_USAGE = 2
SET_TIMEOUT = 120.0  # a write waits for the tree to match: replacements start and become ready first
REGISTRY_TIMEOUT = 10.0
REMOTE_REGISTRY_HINT = (" (over TCP the registry is called through the node's call gateway, control_tcp's port + 1: "
                        "check that the node serves it and that this client's public key is in its curve/authorized/)")

@click.group("vars")
def vars_group() -> None:
    """Read and write the node's variables (its [variables] tables), through its registry."""


@vars_group.command("list")
@click.argument("scope", required=False)
@node_options
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def list_(scope: str | None, node_name: Target, as_json: bool) -> None:
    """Every variable of SCOPE (or of every scope): value, version and why it has it."""
    _unicode("vars list", scope or "")
    entries = _ask(node_name, ListValues(scope=scope)).values
    if as_json:
        click.echo(_json(msgspec.to_builtins(entries), indent=2))
        return
    rows = [(f"{e.scope}.{e.name}", _cell(e.value), str(e.version), e.reason) for e in entries]
    _table([("VARIABLE", "VALUE", "VERSION", "REASON"), *rows])


@vars_group.command()
@click.argument("variable", metavar="SCOPE.NAME")
@node_options
@click.option("--json", "as_json", is_flag=True, help="Print scope, name, value, version and reason.")
def get(variable: str, node_name: Target, as_json: bool) -> None:
    """Print the value of SCOPE.NAME, JSON-encoded (for scripts)."""
    _unicode("vars get", variable)
    scope, name = _split(variable)
    entry = _ask(node_name, GetValue(scope=scope, name=name))
    if as_json:
        click.echo(_json({k: v for k, v in msgspec.to_builtins(entry).items() if k != "ok"}))
    else:
        click.echo(as_text(entry.value))


LIST_CELL_CHARS = 60  # of a document's JSON in ``otpy vars list`` and a change line (``get`` prints it whole)


def as_text(value: Any) -> str:
    """``value`` as JSON; a document (an object or an array) compact and in UTF-8, so that the
    output of ``otpy vars get`` is a file ``otpy vars set SCOPE NAME=@FILE`` takes back."""
    if isinstance(value, (dict, list)):
        return _json(value, ensure_ascii=False, separators=(",", ":"))
    return _json(value)


def _json(value: Any, **options: Any) -> str:
    """``json.dumps(value)``, always valid JSON: a float that is not finite (NaN, infinity: only a
    composite's function can compute one, every settable type refuses it) is printed ``null``,
    as JavaScript's ``JSON.stringify`` does, rather than as the ``NaN`` no JSON reader takes."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, **options)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {name: _finite(item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _cell(value: Any) -> str:
    """A value in the table of ``otpy vars list`` or a change line: a long document is cut, its size said."""
    text = as_text(value)
    if len(text) <= LIST_CELL_CHARS:
        return text
    return f"{text[:LIST_CELL_CHARS - 20]}... ({len(text.encode()):,} bytes)"


@vars_group.command("set")
@click.argument("variable", metavar="SCOPE.NAME VALUE | SCOPE NAME=VALUE...")
@click.argument("values", nargs=-1, required=True, metavar="")
@click.option("--dry-run", is_flag=True, help="Print what setting it would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
@click.option("--expected-version", type=Count(0),
              help="Compare-and-set: only if this is the variable's current version (0: never set).")
@node_options
def set_(variable: str, values: tuple[str, ...], dry_run: bool, as_json: bool, expected_version: int | None,
         node_name: Target) -> None:
    """Set SCOPE.NAME to VALUE, or in SCOPE each NAME to its VALUE (all or nothing), through the
    node: the running tree follows it (a bound child reconfigured, started or stopped) before it
    is stored. VALUE is parsed as JSON, else taken as a plain string; for a document variable it
    is JSON text, or @FILE: a JSON file. Prints one line per change."""
    _unicode("vars set", variable)
    scope, texts = _assignments(node_name, variable, values)
    parsed = set_values.parse(texts, lambda: _declared(node_name, scope), lambda problem: _fail(f"vars set {scope}.{problem}"))
    variable = f"{scope}.{next(iter(parsed))}" if len(parsed) == 1 else scope
    expected = None
    if expected_version is not None:
        if len(parsed) != 1:
            _usage("--expected-version sets one variable: give SCOPE.NAME VALUE")
        expected = {scope: {next(iter(parsed)): expected_version}}
    if problem := set_values.too_big(scope, parsed, dry_run):
        _fail(f"vars set {variable}: {problem}")
    outcome = (_set_through_node(node_name, scope, parsed, dry_run) if expected is None
               else _compare_and_set(node_name, scope, parsed, dry_run, expected))
    if not outcome.ok:
        _fail(f"vars set {variable}: {outcome.detail or outcome.outcome} ({outcome.outcome})")
    if outcome.detail:  # stored, and something to know: programs that did not confirm running it
        click.echo(f"otpy: vars set {variable}: {outcome.detail}", err=True)
    if as_json:
        click.echo(_json(msgspec.to_builtins(outcome.changes), indent=2))
        return
    for change in outcome.changes:
        click.echo(change_line(change))
    if not outcome.changes:
        click.echo(f"{variable}: nothing would change" if dry_run else f"{variable}: nothing changed")
    elif dry_run:
        click.echo("(dry run: nothing changed)")


def change_line(change: Change) -> str:
    """One change as ``otpy vars set`` prints it: ``set global.classifier "a:KNN" -> "a:SVM"``,
    ``reconfigure pool/classifier a:KNN -> a:SVM (pid 123)``, ``start pool/cache a:Cache``,
    ``stop pool/cache``."""
    if change.action == "set":
        same = " (unchanged)" if change.before == change.after else ""
        return f"set {change.scope}.{change.name} {_cell(change.before)} -> {_cell(change.after)}{same}"
    where = f"{change.supervisor}/{change.child}" if change.supervisor else change.child
    if change.action == "reconfigure":
        line = f"reconfigure {where} {change.before} -> {change.after}"
    elif change.action == "start":
        line = f"start {where}" + (f" {change.after}" if change.after is not None else "")
    else:
        line = f"{change.action} {where}" + (f" {change.before}" if change.before is not None else "")
    return line + (f" (pid {change.pid})" if change.pid else "")


def _set_through_node(node_name: Target, scope: str, values: dict[str, Any], dry_run: bool) -> Outcome:
    """The node's outcome of ``SetVariables``; exit 1 if it refused the request or did not answer."""
    return _through_node(node_name, lambda client: client.set_variables(scope, values, dry_run=dry_run))


def _compare_and_set(node_name: Target, scope: str, values: dict[str, Any], dry_run: bool,
                     expected: dict[str, dict[str, int]]) -> Outcome:
    """``--expected-version``: the same write through the node, with the registry's
    compare-and-set made in the node's commit (``expected``: ``{scope: {name: version}}``)."""
    return _through_node(node_name, lambda client: client.set_variables(scope, values, dry_run=dry_run,
                                                                        expected=expected))


def _through_node(node_name: Target, write) -> Outcome:
    """``write(client)`` with a client of the node (local, or over its TCP control endpoint)."""
    return ask(node_name, "otpy: vars set", write, SET_TIMEOUT)


@vars_group.command()
@child_id_argument(metavar="CHILD")
@click.argument("name")
@node_options
@click.option("--json", "as_json", is_flag=True, help="Print child, name, scope, value and reason as JSON.")
def explain(child_id: str, name: str, node_name: Target, as_json: bool) -> None:
    """Where CHILD's variable NAME comes from: the scope, the value and why."""
    _unicode("vars explain", child_id, name)
    explained = _ask(node_name, Explain(child=child_id, name=name))
    if as_json:
        click.echo(_json({"child": child_id, "name": name, "scope": explained.scope, "value": explained.value,
                          "reason": explained.reason}))
        return
    click.echo(f"{child_id}.{name} = {json.dumps(explained.value)}: {explained.reason} in scope {explained.scope!r}")


def _split(variable: str) -> tuple[str, str]:
    scope, dot, name = variable.rpartition(".")
    if not dot or not scope or not name:
        _usage(f"{variable!r} is not SCOPE.NAME (e.g. global.temperature)")
    return scope, name


def _assignments(node_name: Target, first: str, values: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``(scope, {name: value text})`` of ``SCOPE.NAME VALUE`` or ``SCOPE NAME=VALUE...``.

    ``A.B NAME=VALUE`` reads both ways (a scope may hold a dot): it is ``SCOPE.NAME VALUE`` when
    the registry declares ``A.B`` as a variable, else ``SCOPE NAME=VALUE``."""
    pairs = [set_values.assignment(text) for text in values]
    if all(pairs) and not (len(values) == 1 and "." in first and _declares(node_name, *_split(first))):
        names = [name for name, _ in pairs]
        if len(set(names)) < len(names):
            _usage(f"a variable is given twice: {' '.join(values)}")
        return first, dict(pairs)
    if len(values) != 1:
        _usage(f"expected SCOPE.NAME VALUE or SCOPE NAME=VALUE...; got {len(values) + 1} arguments, not all "
               "NAME=VALUE")
    scope, name = _split(first)
    return scope, {name: values[0]}


def _declares(node_name: Target, scope: str, name: str) -> bool:
    return name in _declared(node_name, scope)


def _declared(node_name: Target, scope: str) -> dict[str, Any]:
    """The variables ``scope`` declares (tables, as the registry gives them); {} when the node
    has no registry or no such scope (the write itself then says so)."""
    with _registry(node_name, quiet=True) as registry:
        if registry is None:
            return {}
        reply = registry.ask(GetSpace(scope=scope))
    return {} if reply is None or isinstance(reply, RegistryRefusal) else reply.spaces.get(scope, {})


def _ask(node_name: Target, request: RegistryRequest, bound_hint: str = "") -> Any:
    """The registry's reply (of ``request.reply``'s type); exit 1 naming the problem if it
    refused or cannot be reached (``bound_hint`` added to a ``bound`` refusal)."""
    with _registry(node_name) as registry:
        reply = registry.ask(request)
    if isinstance(reply, RegistryRefusal):
        hint = bound_hint if reply.kind == "bound" else ""
        _fail(f"refused ({reply.kind}){hint}:\n" + "\n".join(f"  {p}" for p in reply.problems or [reply.kind]))
    return reply


class _Registry:
    """``ask`` of a ``RegistryClient``, whose call errors end the command (exit 1, one line)."""

    def __init__(self, client: RegistryClient, node: str, remote: bool, quiet: bool) -> None:
        self.client, self.node, self.remote, self.quiet = client, node, remote, quiet

    def ask(self, request: RegistryRequest) -> Any:
        try:
            return self.client.ask(request)
        except NoSuchAgent:
            if self.quiet:
                return None
            _fail(_NO_REGISTRY.format(node=self.node))
        except (CallTimeout, NodeUnreachable) as exc:
            _fail(f"the registry did not answer: {exc}" + (REMOTE_REGISTRY_HINT if self.remote else ""))
        except CallError as exc:
            _fail(f"the registry did not answer: {exc}")


_NO_REGISTRY = "node {node} has no variable registry: declare [variables] (e.g. [variables.global]) in its topology"


@contextlib.contextmanager
def _registry(node_name: Target, quiet: bool = False) -> Iterator[_Registry | None]:
    """The node's registry, called over the node's local agent sockets or, for a Remote, through
    its call gateway (``RemoteCaller``). A local node without a registry: exit 1 saying so (None
    when ``quiet``); a remote one says so at the first call."""
    node = node_or_exit(node_name)
    if isinstance(node, Remote):
        from ..wire.remote_calls import RemoteCaller

        try:
            caller = RemoteCaller(node.endpoint, node.keys)
        except ValueError as exc:
            _usage(f"--endpoint {node.endpoint}: {exc}")
        with caller:
            yield _Registry(RegistryClient(caller, timeout=REGISTRY_TIMEOUT), f"at {node.endpoint}", True, quiet)
        return
    if not agent_socket_path(node, REGISTRY_ID).exists():
        if quiet:
            yield None
            return
        _fail(_NO_REGISTRY.format(node=repr(node)))
    with Caller(node) as caller:
        yield _Registry(RegistryClient(caller, timeout=REGISTRY_TIMEOUT), repr(node), False, quiet)


def _unicode(command: str, *texts: str) -> None:
    """Exit 1 naming ``texts`` when one is not Unicode text: an argument holding a byte that is
    not UTF-8 reaches Python as a lone surrogate, which no message to the node can carry."""
    for text in texts:
        try:
            text.encode()
        except UnicodeEncodeError:
            shown = text.encode(errors="backslashreplace").decode()
            _fail(f"{command} {shown}: the argument is not Unicode text (it holds a byte that is not UTF-8); "
                  "expected a scope or a variable's name")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _fail(message: str) -> NoReturn:
    click.echo(f"otpy: {message}", err=True)
    sys.exit(EXIT_FAILED)


def _usage(message: str) -> NoReturn:
    click.echo(f"otpy: {message}", err=True)
    sys.exit(EXIT_USAGE)
