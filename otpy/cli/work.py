"""Commands that put agents to work: ``otpy call`` and ``otpy run-pipeline``.

Registered on the ``otpy`` group by ``cli.main``. Exit codes as everywhere: 0 success, 1 the
operation failed (the message says why), 2 usage or input error.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click

from ..agent.plain_data import plain, plain_outputs
from ..wire.calls import Caller
from .exits import Remote, Target, node_or_exit
from .options import NODE_OPTION, Count, Seconds, child_id_argument, node_options
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
@click.option("--cluster", "cluster_file", metavar="FILE",
              help="A cluster file: ID@NODE is called on NODE of it, from this host (no local node needed).")
@node_options
def call(child_id: str, input_json: str, timeout: float, retries: int, node_name: Target,
         cluster_file: str | None) -> None:
    """Call agent ID with --input and print its outputs as JSON.

    ID@NODE calls agent ID of node NODE of the cluster: the local node's [cluster], or
    --cluster FILE's. With --endpoint and --keys, ID is called on the node serving that endpoint."""
    inputs = _inputs(input_json)
    with _caller_for(child_id, node_name, cluster_file) as (caller, agent):
        try:
            outputs = caller.call(agent, inputs, timeout=timeout, retries=retries)
        except ValueError as exc:  # --timeout or --retries no call can have
            _fail(f"call {child_id}: {exc}", EXIT_USAGE)
        except CallError as exc:
            _fail(f"call {child_id}: {type(exc).__name__}: {exc}")
    click.echo(json.dumps(plain_outputs(outputs), default=str, allow_nan=False))


@contextmanager
def _caller_for(child_id: str, target: Target, cluster_file: str | None) -> Iterator[tuple[Any, str]]:
    """What calls ``child_id``, and the id to give it: a RemoteCaller (``--endpoint``, or a node of
    ``--cluster``) or the local node's Caller (``ID@NODE`` through its own cluster)."""
    from ..wire.remote_calls import RemoteCaller

    if isinstance(target, Remote) or cluster_file is not None:
        if isinstance(target, Remote):
            if cluster_file is not None:
                _fail("give --cluster or --endpoint, not both", EXIT_USAGE)
            endpoint, keys, agent, name = target.endpoint, target.keys, child_id, ""
        else:
            from ..topology.cluster import ClusterError, load_cluster

            try:
                cluster = load_cluster(cluster_file)
            except ClusterError as exc:
                _fail(str(exc), EXIT_USAGE)
            agent, _, name = child_id.rpartition("@")
            if not agent or name not in cluster.nodes:
                _fail(f"call {child_id}: expected ID@NODE, NODE one of {', '.join(sorted(cluster.nodes)) or 'none'} "
                      f"({cluster.source})", EXIT_USAGE)
            endpoint, keys = cluster.nodes[name].endpoint, cluster.nodes[name].keys
        try:
            remote = RemoteCaller(endpoint, keys, name=name)
        except ValueError as exc:
            _fail(f"call {child_id}: {exc}", EXIT_USAGE)
        with remote:
            yield remote, agent
        return
    with Caller(node_or_exit(target)) as caller:
        yield caller, child_id


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
