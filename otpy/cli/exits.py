"""How every ``otpy`` command ends when it cannot go on: one line on stderr and an exit code.

Exit codes: 0 success, 1 the operation failed (the message says why), 2 usage or input
error, 3 (``otpy status`` only) not running, as ``systemctl status``. Finding the node to talk
to is the same for every command: none named or found is a usage error (2); a node whose
process died (stale) is a failure (1).

``--json`` (one rule for every command): stdout holds exactly one JSON document whenever the
command reached its result, a failed one included (an outcome other than ``ok``, an invalid
file); nothing when it could not (usage error, no node, no answer). Every failure is also one
line on stderr, and the exit code is the same as without ``--json``.

A node on another host is reached with ``--endpoint tcp://HOST:PORT --keys DIR`` (its CURVE
TCP control endpoint, never plaintext): ``options.node_options`` turns the three options into
one target, a local node's name (or None) or a ``Remote``, and every command hands it to
``ask`` (``remote_or_exit`` checks the pair; ``local_only`` refuses it where a command needs
the node's host).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, NamedTuple, NoReturn, Union

import click

from ..topology.load import TopologyError, load_topology
from ..wire.client import Client, ControlError, NodeNotFound, NodeStale, pick_node
from ..wire.curve import client_keys_problem
from ..wire.protocol import Outcome

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3  # `otpy status`: the node, or a child shown, is not running (systemctl's 3)
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it (``cli.entry``)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


class Remote(NamedTuple):
    """A node reached over its CURVE TCP control endpoint (``--endpoint`` with ``--keys``)."""

    endpoint: str  # tcp://HOST:PORT, checked by ``options.endpoint_option``
    keys: str  # a folder with the node's server.key and one client *.key_secret


Target = Union[str, Remote, None]  # what a command's --node/--endpoint/--keys come to: ``options.node_options``

REMOTE_HINT = (" (over TCP: check that the node serves control_tcp at that endpoint, that --keys holds its "
               "server.key, and that this client's public key is in the node's curve/authorized/)")


def remote_or_exit(node_name: str | None, endpoint: str | None, keys: str | None, keys_given: bool) -> Target:
    """``--node``, ``--endpoint`` and ``--keys`` (``keys_given``: on the command line, not from
    ``OTPY_KEYS``) as one target: the node's name (or None) without ``--endpoint``, else a Remote.
    Exit 2, one line, for ``--endpoint`` without keys, a key folder that lacks a key (what, and
    how to get it), ``--keys`` without ``--endpoint``, and ``--node`` with ``--endpoint``."""
    if endpoint is None:
        if keys_given:
            usage_exit("otpy: --keys goes with --endpoint tcp://HOST:PORT (a local node is reached by --node)")
        return node_name
    if node_name is not None:
        usage_exit("otpy: give --node (a node on this host) or --endpoint (a node's TCP endpoint), not both")
    if keys is None:
        usage_exit(f"otpy: --endpoint needs --keys DIR (or OTPY_KEYS): a folder with the node's server.key and this "
                   f"client's secret key (`otpy keys new DIR` makes one); plaintext TCP is never used")
    if problem := client_keys_problem(keys):
        usage_exit(f"otpy: --keys {problem}")
    return Remote(endpoint, keys)


def local_only(target: Target, command: str, why: str) -> str | None:
    """``target`` when it is a local node's name (or None); exit 2 for a Remote, saying ``why``
    ``command`` needs the node's host."""
    if isinstance(target, Remote):
        usage_exit(f"otpy: {command} does not take --endpoint: {why}; run it on the node's host")
    return target


def client_of(target: Target, timeout: float) -> Client:
    """A client of the target: over TCP with CURVE for a Remote, else of the local node (exits as
    ``node_or_exit``)."""
    if isinstance(target, Remote):
        return Client(target.endpoint, timeout=timeout, endpoint=target.endpoint, keys=target.keys)
    return Client(node_or_exit(target), timeout=timeout)


def node_or_exit(name: Target) -> str | Remote:
    """The node to talk to: exit 2 if none is named or found, 1 if it died (stale); a Remote as it is."""
    if isinstance(name, Remote):
        return name
    try:
        return pick_node(name)
    except NodeStale as exc:
        fail(f"otpy: {exc}", EXIT_FAILED)
    except NodeNotFound as exc:
        fail(f"otpy: {exc}", EXIT_USAGE)


def usage_exit(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(EXIT_USAGE)


def ask(node_name: Target, command: str, operation: Callable[[Client], Any], timeout: float = 30.0) -> Any:
    """Run ``operation`` on a client of the node (local, or a Remote over TCP); exit 1 if the node
    refused or did not answer (over TCP, the message says what to check: ``REMOTE_HINT``)."""
    with client_of(node_name, timeout) as client:
        try:
            return operation(client)
        except (ControlError, NodeStale) as exc:
            fail(f"{command}: {exc}")
        except TimeoutError as exc:
            fail(f"{command}: {exc}" + (REMOTE_HINT if isinstance(node_name, Remote) else ""))


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
