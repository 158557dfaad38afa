"""Commands that put agents to work: ``otpy call`` and ``otpy run-pipeline``.

Registered on the ``otpy`` group by ``cli.main``. Exit codes as everywhere: 0 success, 1 the
operation failed (the message says why), 2 usage or input error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..agent.plain_data import plain, plain_outputs
from ..wire.calls import Caller
from .exits import node_or_exit
from .options import NODE_OPTION, Count, Seconds, child_id_argument
from ..topology.load import TopologyError, load_topology
from ..wire.errors import CallError
from ..optimize.pipeline import Pipeline, PipelineError
from ..host.runtime_dir import node_dir, read_private, write_private

EXIT_FAILED = 1
EXIT_USAGE = 2
TOPOLOGY_RECORD = "topology.path"  # written by `otpy start` in the node's folder


def _fail(message: str, code: int = EXIT_FAILED):
    click.echo(message, err=True)
    sys.exit(code)


def _inputs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"--input is not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(value, dict):
        _fail("--input must be a JSON object (the program's keyword inputs)", EXIT_USAGE)
    return value


def record_topology(name: str, path: str) -> None:
    """Remember which file a node was started from (``run-pipeline`` reads its pipelines)."""
    write_private(node_dir(name) / TOPOLOGY_RECORD, str(Path(path).resolve()).encode())


@click.command()
@child_id_argument()
@click.option("--input", "input_json", default="{}", help="JSON object: the inputs of forward().")
@click.option("--timeout", default=5.0, show_default=True, type=Seconds(),
              help="Seconds to wait for the reply.")
@click.option("--retries", default=0, show_default=True, type=Count(0),
              help="Send again after a timeout or crash.")
@NODE_OPTION
def call(child_id: str, input_json: str, timeout: float, retries: int, node_name: str | None) -> None:
    """Call agent ID with --input and print its outputs as JSON."""
    inputs = _inputs(input_json)
    with Caller(node_or_exit(node_name)) as caller:
        try:
            outputs = caller.call(child_id, inputs, timeout=timeout, retries=retries)
        except ValueError as exc:  # --timeout or --retries no call can have
            _fail(f"call {child_id}: {exc}", EXIT_USAGE)
        except CallError as exc:
            _fail(f"call {child_id}: {type(exc).__name__}: {exc}")
    click.echo(json.dumps(plain_outputs(outputs), default=str, allow_nan=False))


@click.command("run-pipeline")
@click.argument("name")
@click.option("--input", "input_json", default="{}", help="JSON object: the first stage's inputs.")
@click.option("--topology", "topology_path", help="Where [pipelines.NAME] is (default: the file the node was started from).")
@NODE_OPTION
def run_pipeline(name: str, input_json: str, topology_path: str | None, node_name: str | None) -> None:
    """Run the pipeline [pipelines.NAME] of the node's topology and print the result as JSON."""
    inputs = _inputs(input_json)
    node = node_or_exit(node_name)
    if topology_path is None:
        record = read_private(node_dir(node) / TOPOLOGY_RECORD)
        if record is None:
            _fail(f"node {node!r} was not started from a file otpy knows: give --topology FILE", EXIT_USAGE)
        topology_path = record.decode(errors="replace")
    try:
        table = load_topology(topology_path, check_imports=False).raw_pipelines
        if name not in table:
            _fail(f"{topology_path}: no [pipelines.{name}]; pipelines: {', '.join(sorted(table)) or 'none'}", EXIT_USAGE)
        pipeline = Pipeline.from_table(name, table[name])
    except (TopologyError, PipelineError) as exc:
        _fail(str(exc), EXIT_USAGE)
    with Caller(node) as caller:
        result = pipeline.run(inputs, caller)
    report = {"ok": result.ok, "outputs": result.outputs,
              "errors": {stage: f"{type(e).__name__}: {e}" for stage, e in result.errors.items()},
              "trace": [{"stage": s, "agent": a, "ok": ok, "ms": round(ms, 3)} for s, a, ok, ms in result.trace]}
    click.echo(json.dumps(plain(report), default=str, allow_nan=False))
    sys.exit(0 if result.ok else EXIT_FAILED)
