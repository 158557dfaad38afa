"""Commands that put agents to work: ``otpy call``, ``otpy run-pipeline``, ``otpy optimize``,
and ``otpy bench``, which runs the benchmarks.

Registered on the ``otpy`` group by ``cli.main``. Exit codes as everywhere: 0 success, 1 the
operation failed (the message says why), 2 usage or input error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
import msgspec

from ..wire.calls import Caller
from .exits import node_or_exit
from ..wire.client import NodeNotFound, connect
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
@click.argument("agent_id", metavar="ID")
@click.option("--input", "input_json", default="{}", help="JSON object: the inputs of forward().")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait for the reply.")
@click.option("--retries", default=0, show_default=True, help="Send again after a timeout or crash.")
@click.option("--node", "node_name", help="The node (may be left out when one runs).")
def call(agent_id: str, input_json: str, timeout: float, retries: int, node_name: str | None) -> None:
    """Call agent ID with --input and print its outputs as JSON."""
    inputs = _inputs(input_json)
    with Caller(node_or_exit(node_name)) as caller:
        try:
            outputs = caller.call(agent_id, inputs, timeout=timeout, retries=retries)
        except ValueError as exc:  # --timeout or --retries no call can have
            _fail(f"call {agent_id}: {exc}", EXIT_USAGE)
        except CallError as exc:
            _fail(f"call {agent_id}: {type(exc).__name__}: {exc}")
    click.echo(json.dumps(outputs, default=str))


@click.command("run-pipeline")
@click.argument("name")
@click.option("--input", "input_json", default="{}", help="JSON object: the first stage's inputs.")
@click.option("--topology", "topology_path", help="Where [pipelines.NAME] is (default: the file the node was started from).")
@click.option("--node", "node_name", help="The node (may be left out when one runs).")
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
    click.echo(json.dumps(report, default=str))
    sys.exit(0 if result.ok else EXIT_FAILED)


@click.command()
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option("--trials", type=int, help="Finished trials the study should have (default: [optimizer] trials).")
@click.option("--seed", type=int, help="Seed of the sampler (default: [optimizer] seed).")
@click.option("--apply", "apply_", is_flag=True, help="Apply the actions to the running node of TOPOLOGY.")
def optimize(topology: str, trials: int | None, seed: int | None, apply_: bool) -> None:
    """Search the variables of TOPOLOGY with its [optimizer] and print the best and its actions.

    Trials run on live agents of a scratch node started from TOPOLOGY (named NODE-optimize):
    each trial's configuration is applied with the same actions --apply sends. The study is
    kept in SQLite in the node's folder, so running the command again resumes it. With
    --apply the actions go to the running node (which must be up); without, they are printed.
    """
    from ..optimize.live_system import LiveSystem, OptimizeError, bindings_from_table, optimize_topology

    try:
        spec = load_topology(topology)
    except TopologyError as exc:
        _fail(str(exc), EXIT_USAGE)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    # This process runs the [optimizer]'s dataset and metric itself: it imports them from the
    # folders the node's programs come from (the current one, the topology file's).
    sys.path[:0] = [folder for folder in spec.node.program_folders if folder not in sys.path]
    try:
        result = optimize_topology(spec, trials=trials, seed=seed)
    except OptimizeError as exc:
        _fail(f"optimize: {exc}", EXIT_USAGE)
    click.echo(f"best score {result.best_score:.4f} after {result.trials} trials "
               f"({result.infeasible} infeasible); study {result.study_name!r}")
    click.echo(json.dumps(result.best_config, indent=2, default=str))
    if not apply_:
        click.echo("actions (apply them with --apply):")
        for action in result.actions:
            click.echo(msgspec.json.encode(action).decode())
        return
    name = spec.node.name
    try:
        with connect(name) as client:
            bindings = bindings_from_table(spec.raw_optimizer.get("bindings", {}))
            live = LiveSystem(client, bindings, has_registry=bool(spec.raw_variables))
            for action, outcome in zip(result.actions, live.send(result.actions)):
                pid = f" pid {outcome.pid}" if outcome.pid else ""
                click.echo(f"applied {type(action).__name__}: {outcome.outcome}{pid}")
    except NodeNotFound as exc:
        _fail(f"optimize --apply: {exc}; start it with `otpy start {topology} --detach`")
    except OptimizeError as exc:
        _fail(f"optimize --apply: {exc}")


@click.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def bench(arguments: tuple[str, ...]) -> None:
    """Run a benchmark: SCENARIO (restart, reconfigure, call, scale, all, chart) [OPTIONS].

    The same as ``python bench/run.py SCENARIO [OPTIONS]`` in a source checkout of otpy
    (``otpy bench --help`` lists the options). With ``pip install -e '.[bench]'``, restart
    and reconfigure also run circus and supervisord.
    """
    runner = Path(__file__).resolve().parents[2] / "bench" / "run.py"
    if not runner.is_file():
        _fail(f"no {runner}: benchmarks run from a source checkout of otpy "
              "(git clone it, then pip install -e '.[bench]')", EXIT_USAGE)
    os.execv(sys.executable, [sys.executable, str(runner), *arguments])
