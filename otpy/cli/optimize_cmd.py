"""``otpy optimize``: search a topology's variables on a scratch node; print, or apply, the plan.

Exit codes as everywhere: 0 success, 1 the operation failed (the message says why), 2 usage or input error.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from .exits import EXIT_FAILED, EXIT_USAGE, fail
from ..topology.load import TopologyError, load_topology
from ..wire.calls import Caller
from ..wire.client import NodeNotFound, connect


@click.command()
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option("--trials", type=int, help="Finished trials the study should have (default: [optimizer] trials); "
              "with --watch, the trials of each search (default 10).")
@click.option("--seed", type=int, help="Seed of the sampler (default: [optimizer] seed).")
@click.option("--apply", "apply_", is_flag=True, help="Apply the plan to the running node of TOPOLOGY.")
@click.option("--dry-run", is_flag=True, help="With --apply: print the plan only.")
@click.option("--watch", is_flag=True, help="Watch the running node: score it, search when it falls, apply what beats it.")
@click.option("--interval", type=float, default=60.0, show_default=True, help="--watch: seconds between rounds.")
@click.option("--sample", type=int, help="--watch: validation examples a round scores (default: all).")
@click.option("--threshold", type=float, help="--watch: search when the live score is below this.")
@click.option("--every", type=int, help="--watch: search every N rounds, whatever the score.")
@click.option("--margin", type=float, default=0.0, show_default=True,
              help="--watch: apply only a candidate whose validation score beats the live one by more than this.")
@click.option("--rounds", type=int, help="--watch: stop after this many rounds (default: run until interrupted).")
def optimize(topology: str, trials: int | None, seed: int | None, apply_: bool, dry_run: bool, watch: bool,
             interval: float, sample: int | None, threshold: float | None, every: int | None, margin: float,
             rounds: int | None) -> None:
    """Search the variables of TOPOLOGY with its [optimizer]; print the scores and the plan.

    Trials run on live agents of a scratch node started from TOPOLOGY (named NODE-optimize):
    each trial sets that node's variables, as --apply does on the real one. The study is kept
    in SQLite in the node's folder, so running the command again resumes it. The plan is the
    diff from the running node's values (or, when it is not running, the topology's defaults)
    to the best configuration, with what the node would start, stop or reconfigure; --apply
    carries it out (--dry-run: prints only). --watch runs the watch loop instead.
    """
    from ..optimize.live_system import OptimizeError

    try:
        spec = load_topology(topology)
    except TopologyError as exc:
        fail(str(exc), EXIT_USAGE)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    # This process runs the [optimizer]'s dataset and metric itself: it imports them from the
    # folders the node's programs come from (the current one, the topology file's).
    sys.path[:0] = [folder for folder in spec.node.program_folders if folder not in sys.path]
    try:
        if watch:
            _watch(spec, topology, seed, trials=trials or 10, interval=interval, sample=sample,
                   threshold=threshold, every=every, margin=margin, rounds=rounds)
        else:
            _optimize_once(spec, topology, trials, seed, apply_, dry_run)
    except OptimizeError as exc:
        fail(f"optimize: {exc}", EXIT_USAGE if exc.usage else EXIT_FAILED)


def _optimize_once(spec, topology: str, trials: int | None, seed: int | None, apply_: bool, dry_run: bool) -> None:
    from ..optimize.live_system import LiveSystem, format_plan, live_values, optimize_topology, set_changes

    name = spec.node.name
    current = live_values(name)
    result = optimize_topology(spec, trials=trials, seed=seed, current=current)
    validation = "" if result.val_score is None else f"; validation score {result.val_score:.4f}"
    if result.val_score is None and result.val_error:
        validation = "; no validation score (see below)"
    not_applied = f", {result.apply_failed} of them not applied" if result.apply_failed else ""
    click.echo(f"best score {result.best_score:.4f} (train) after {result.trials} trials "
               f"({result.infeasible} infeasible, {result.failed} failed{not_applied}){validation}; "
               f"study {result.study_name!r}")
    if result.first_apply_error:
        click.echo(f"a trial's configuration could not be applied; the first reason: {result.first_apply_error}",
                   err=True)
    if result.val_error:
        click.echo(f"no validation score: {result.val_error}", err=True)
    if result.failures:
        plural = "" if result.failures == 1 else "s"
        click.echo(f"{result.failures} call{plural} failed; the first:\n{result.first_error}", err=True)
    click.echo(json.dumps(result.config, indent=2, default=str))
    if current is None:
        click.echo(f"plan (node {name!r} is not running: from the topology's defaults):")
        click.echo("\n".join(f"  {line}" for line in format_plan(set_changes(result.actions, _defaults(spec)))))
        if apply_:
            fail(f"optimize --apply: node {name!r} is not running; start it with `otpy start {topology} --detach`")
        return
    with connect(name) as client, Caller(name) as caller:
        live = LiveSystem(client, caller, _spaces(spec))
        actions = live.plan(result.config)
        click.echo(f"plan (against the running node {name!r}):")
        click.echo("\n".join(f"  {line}" for line in format_plan(live.preview(actions))))
        if not apply_ or dry_run or not actions:
            if not apply_:
                click.echo("apply it with --apply")
            return
        done = live.send(actions)
        click.echo("applied:")
        click.echo("\n".join(f"  {line}" for line in format_plan(done)))


def _spaces(spec):
    from ..optimize.live_system import spaces_of

    return spaces_of(spec)


def _defaults(spec):
    from ..optimize.optimizer import Optimizer

    return Optimizer(_spaces(spec), progress=False).defaults()


def _watch(spec, topology: str, seed: int | None, **options) -> None:
    from ..optimize.orchestrator import WatchPolicy, watch_topology

    rounds = options.pop("rounds")
    try:
        policy = WatchPolicy(**options)
    except ValueError as exc:
        fail(f"optimize --watch: {exc}", EXIT_USAGE)
    if rounds is not None and rounds < 1:
        fail(f"optimize --watch: --rounds: got {rounds}; expected an integer >= 1", EXIT_USAGE)
    try:
        with watch_topology(spec, policy, seed=seed) as orchestrator:
            for report in _rounds(orchestrator, rounds):
                click.echo(_round_line(report), nl=True)
    except NodeNotFound as exc:
        fail(f"optimize --watch: {exc}; start it with `otpy start {topology} --detach`")
    except KeyboardInterrupt:
        pass


def _rounds(orchestrator, rounds: int | None):
    """The orchestrator's rounds, one report at a time (``run`` one round at a time)."""
    done = 0
    while rounds is None or done < rounds:
        yield from orchestrator.run(rounds=1)
        done += 1


def _round_line(report) -> str:
    live = "failed" if report.live.score is None else f"{report.live.score:.4f}"
    line = f"round {report.number}: live {live}; {report.search.reason}"
    if report.applied is not None:
        line += f"; {report.applied.reason}: {'applied' if report.applied.act else 'kept'}"
    return line
