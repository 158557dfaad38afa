"""``otpy vars``: read and write the node's variables through its registry agent.

    otpy vars list [SCOPE]              every variable (of SCOPE), its value, version and why
    otpy vars get SCOPE.NAME [--json]   the value alone, JSON-encoded (--json: the whole entry)
    otpy vars set SCOPE.NAME VALUE      VALUE is JSON, else a plain string; refused: exit 1
    otpy vars explain CHILD NAME        where CHILD's NAME comes from

Each sends one typed request (``otpy.wire.registry_protocol``) with ``RegistryClient`` over an
``otpy.Caller`` of the node.
Exit codes as ``otpy``'s: 0 success, 1 refused or failed (the reason is printed), 2 usage.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click
import msgspec

from ..host.runtime_dir import agent_socket_path
from ..variables.client import RegistryClient
from ..variables.placement import REGISTRY_ID
from ..wire.calls import Caller
from ..wire.errors import CallError
from ..wire.registry_protocol import Explain, GetValue, ListValues, RegistryRefusal, RegistryRequest, SetValue
from .exits import node_or_exit

EXIT_FAILED = 1
EXIT_USAGE = 2

NODE_OPTION = click.option("--node", "node_name", metavar="NAME",
                           help="The node to talk to (may be left out when only one runs).")


@click.group("vars")
def vars_group() -> None:
    """Read and write the node's variables (its [variables] tables), through its registry."""


@vars_group.command("list")
@click.argument("scope", required=False)
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def list_(scope: str | None, node_name: str | None, as_json: bool) -> None:
    """Every variable of SCOPE (or of every scope): value, version and why it has it."""
    entries = _ask(node_name, ListValues(scope=scope)).values
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(entries), indent=2))
        return
    rows = [(f"{e.scope}.{e.name}", json.dumps(e.value), str(e.version), e.reason) for e in entries]
    _table([("VARIABLE", "VALUE", "VERSION", "REASON"), *rows])


@vars_group.command()
@click.argument("variable", metavar="SCOPE.NAME")
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print scope, name, value, version and reason.")
def get(variable: str, node_name: str | None, as_json: bool) -> None:
    """Print the value of SCOPE.NAME, JSON-encoded (for scripts)."""
    scope, name = _split(variable)
    entry = _ask(node_name, GetValue(scope=scope, name=name))
    if as_json:
        click.echo(json.dumps({k: v for k, v in msgspec.to_builtins(entry).items() if k != "ok"}))
    else:
        click.echo(json.dumps(entry.value))


@vars_group.command("set")
@click.argument("variable", metavar="SCOPE.NAME")
@click.argument("value")
@click.option("--expected-version", type=int, help="Compare-and-set: only if this is the current version.")
@NODE_OPTION
def set_(variable: str, value: str, expected_version: int | None, node_name: str | None) -> None:
    """Set SCOPE.NAME to VALUE (parsed as JSON, else taken as a plain string)."""
    scope, name = _split(variable)
    request = SetValue(scope=scope, name=name, value=_parse(value), expected_version=expected_version)
    written = _ask(node_name, request)
    click.echo(f"{scope}.{name} = {json.dumps(request.value)} (version {written.version})")


@vars_group.command()
@click.argument("child")
@click.argument("name")
@NODE_OPTION
def explain(child: str, name: str, node_name: str | None) -> None:
    """Where CHILD's variable NAME comes from: the scope, the value and why."""
    explained = _ask(node_name, Explain(child=child, name=name))
    click.echo(f"{child}.{name} = {json.dumps(explained.value)}: {explained.reason} in scope {explained.scope!r}")


def _split(variable: str) -> tuple[str, str]:
    scope, dot, name = variable.rpartition(".")
    if not dot or not scope or not name:
        _usage(f"{variable!r} is not SCOPE.NAME (e.g. global.temperature)")
    return scope, name


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _ask(node_name: str | None, request: RegistryRequest) -> Any:
    """The registry's reply (of ``request.reply``'s type); exit 1 naming the problem if it
    refused or cannot be reached."""
    node = node_or_exit(node_name)
    if not agent_socket_path(node, REGISTRY_ID).exists():
        _fail(f"node {node!r} has no variable registry: declare [variables] (e.g. [variables.global]) "
              "in its topology")
    with Caller(node) as caller:
        try:
            reply = RegistryClient(caller, timeout=10.0).ask(request)
        except CallError as exc:
            _fail(f"the registry did not answer: {exc}")
    if isinstance(reply, RegistryRefusal):
        _fail(f"refused ({reply.kind}):\n" + "\n".join(f"  {p}" for p in reply.problems or [reply.kind]))
    return reply


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
