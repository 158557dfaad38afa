"""How every ``otpy`` command ends when it cannot go on: one line on stderr and an exit code.

Exit codes: 0 success, 1 the operation failed (the message says why), 2 usage or input
error, 3 (``otpy status`` only) not running, as ``systemctl status``. Finding the node to talk
to is the same for every command: none named or found is a usage error (2); a node whose
process died (stale) is a failure (1).

``--json`` (one rule for every command): stdout holds exactly one JSON document whenever the
command reached its result, a failed one included (an outcome other than ``ok``, an invalid
file); nothing when it could not (usage error, no node, no answer). Every failure is also one
line on stderr, and the exit code is the same as without ``--json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, NoReturn

import click

from ..topology.load import TopologyError, load_topology
from ..wire.client import Client, ControlError, NodeNotFound, NodeStale, pick_node
from ..wire.protocol import Outcome

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3  # `otpy status`: the node, or a child shown, is not running (systemctl's 3)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def node_or_exit(name: str | None) -> str:
    """The node to talk to: exit 2 if none is named or found, 1 if it died (stale)."""
    try:
        return pick_node(name)
    except NodeStale as exc:
        fail(f"otpy: {exc}", EXIT_FAILED)
    except NodeNotFound as exc:
        fail(f"otpy: {exc}", EXIT_USAGE)


def usage_exit(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(EXIT_USAGE)


def ask(node_name: str | None, command: str, operation: Callable[[Client], Any], timeout: float = 30.0) -> Any:
    """Run ``operation`` on a client of the node; exit 1 if the node refused or did not answer."""
    with Client(node_or_exit(node_name), timeout=timeout) as client:
        try:
            return operation(client)
        except (ControlError, TimeoutError, NodeStale) as exc:
            click.echo(f"{command}: {exc}", err=True)
            sys.exit(EXIT_FAILED)


def outcome_json(command: str, result: Outcome, **more: Any) -> dict:
    """An outcome as ``--json`` prints it: ``command``, ``ok``, ``outcome``, ``pid``, ``detail``
    (and what the command adds, e.g. ``id``)."""
    return {"command": command, **more, "ok": result.ok, "outcome": result.outcome, "pid": result.pid,
            "detail": result.detail}


def outcome_exit(command: str, result: Outcome, as_json: bool = False, **more: Any) -> NoReturn:
    """Print ``result`` (``--json``: as one JSON document, see ``outcome_json``) and exit 0 if it
    is ``ok``, else 1 with ``COMMAND: DETAIL (OUTCOME)`` on stderr."""
    if as_json:
        click.echo(json.dumps(outcome_json(command, result, **more)))
    if result.ok:
        if not as_json:
            click.echo(f"{command}: ok" + (f" (pid {result.pid})" if result.pid else ""))
        sys.exit(0)
    click.echo(f"{command}: {result.detail or result.outcome} ({result.outcome})", err=True)
    sys.exit(EXIT_FAILED)


def json_object_or_exit(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        usage_exit(f"--args is not valid JSON: {exc}")
    if not isinstance(value, dict):
        usage_exit("--args must be a JSON object")
    return value


def load_or_exit(path: str):
    try:
        return load_topology(path)
    except TopologyError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)
