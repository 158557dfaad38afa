"""The ``otpy`` command line. Thin: one function per command; the work is done elsewhere.

Exit codes: 0 success, 1 the operation failed (the message says why), 2 usage or input error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

import click

from ._config import TopologyError, load_topology, topology_json_schema
from ._node import AsyncNode, NodeStartError

EXIT_FAILED = 1
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="otpy")
def main() -> None:
    """otpy: Erlang/OTP supervision trees for agent programs, one OS process per agent.

    Describe the tree in a topology.toml, then `otpy start topology.toml`.
    """


@main.command()
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="Log debug details too.")
def start(topology: str, verbose: bool) -> None:
    """Start the node described by TOPOLOGY and run it in the foreground.

    Children start in order, each READY before the next. Every line a child prints is
    logged with its id as prefix. Ctrl-C or SIGTERM stops the tree in reverse order and
    exits 0 (a second Ctrl-C kills everything at once). If the root supervisor gives up
    (restart intensity exceeded), otpy exits 1 naming the child.
    """
    spec = _load_or_exit(topology)
    _setup_logging(verbose)
    sys.exit(asyncio.run(_run_foreground(AsyncNode(spec.node, on_output=_print_child_line))))


@main.command()
@click.argument("topology", type=click.Path(dir_okay=False))
def validate(topology: str) -> None:
    """Check TOPOLOGY without starting anything (same checks as `otpy start`)."""
    _load_or_exit(topology)
    click.echo(f"{topology}: ok")


@main.command()
def schema() -> None:
    """Print the JSON Schema of topology files."""
    click.echo(json.dumps(topology_json_schema(), indent=2))


# --- helpers ------------------------------------------------------------------------------


def _load_or_exit(path: str):
    try:
        return load_topology(path)
    except TopologyError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)


def _print_child_line(child_id: str, line: str) -> None:
    print(f"[{child_id}] {line}", file=sys.stderr, flush=True)


async def _run_foreground(node: AsyncNode) -> int:
    try:
        await node.start()
    except NodeStartError as exc:
        click.echo(f"otpy: node {node.name!r} did not start: {exc}", err=True)
        return EXIT_FAILED
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop_requested.set()
        else:  # a second Ctrl-C: no more waiting
            loop.create_task(node.root.kill())

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    stop_task = asyncio.ensure_future(stop_requested.wait())
    await asyncio.wait({stop_task, node.root.exited}, return_when=asyncio.FIRST_COMPLETED)
    if stop_requested.is_set():
        await node.stop()
        return 0
    stop_task.cancel()
    reason = await node.wait()
    if node.root.error:
        click.echo(f"otpy: root supervisor gave up: {node.root.error}", err=True)
        return EXIT_FAILED
    click.echo(f"otpy: root supervisor exited: {reason}", err=True)
    return 0
