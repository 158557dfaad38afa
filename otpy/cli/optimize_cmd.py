"""``otpy optimize``: search a topology's variables on a scratch node; print, or apply, the plan.

Exit codes as everywhere: 0 success, 1 the operation failed (the message says why), 2 usage or input error;
130 interrupted (Ctrl-C: the trial in progress is marked failed in the study, which resumes next time).
"""

from __future__ import annotations

import json
import logging
import sys

import click

import msgspec

from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, fail
from .options import JSON_OPTION, Number, Seconds
from ..topology.load import TopologyError, load_topology
from ..wire.calls import Caller
from ..wire.client import NodeNotFound, connect

MAX_WORKERS = 64  # --workers: a host's worker processes (each a scratch node: a zygote and its children)


@click.command()
@click.argument("topology", type=click.Path(dir_okay=False), required=False)
@click.option("--trials", type=click.IntRange(min=1), help="Finished trials the study should have (default: "
              "[optimizer] trials); with --watch, the trials of each search (default 10).")
@click.option("--seed", type=int, help="Seed of the sampler (default: [optimizer] seed).")
@click.option("--storage", metavar="URL", help="The optuna storage URL of the study (sqlite:///PATH, "
              "postgresql://..., any URL optuna takes); default: a durable file, "
              "$XDG_DATA_HOME/otpy/NODE/optuna.db ($OTPY_DATA_DIR/NODE/optuna.db if set).")
@click.option("--apply", "apply_", is_flag=True, help="Apply the plan to the running node of TOPOLOGY "
              "(checked before the search: it must be running).")
@click.option("--dry-run", is_flag=True, help="With --apply: print the plan only.")
@JSON_OPTION
@click.option("--watch", is_flag=True, help="Watch the running node: score it, search when it falls, apply what beats it.")
@click.option("--interval", type=Seconds(), default=60.0, show_default=True, help="--watch: seconds between rounds.")
@click.option("--sample", type=click.IntRange(min=1), help="--watch: validation examples a round scores (default: all).")
@click.option("--threshold", type=Number(), help="--watch: search when the live score is below this.")
@click.option("--every", type=click.IntRange(min=1), help="--watch: search every N rounds, whatever the score.")
@click.option("--margin", type=Number(min=0), default=0.0, show_default=True,
              help="--watch: apply only a candidate whose validation score beats the live one by more than this.")
@click.option("--rounds", type=click.IntRange(min=1), help="--watch: stop after this many rounds (default: run until interrupted).")
@click.option("--workers", type=click.IntRange(min=1, max=MAX_WORKERS), help="Trial workers sharing the study "
              "(processes, each its own scratch node; at most 64 a host); needs a --storage other processes open "
              "(PostgreSQL; SQLite for one host). Given, the study is recorded for --join.")
@click.option("--join", metavar="STUDY", help="Add workers (--workers, default 1) to study STUDY that a leader runs "
              "(`otpy optimize FILE --workers N --storage URL`) in --storage URL; they never apply.")
@click.option("--worker", "worker_job", is_flag=True, hidden=True, help="One trial worker (its job on stdin).")
def optimize(topology: str | None, trials: int | None, seed: int | None, storage: str | None, apply_: bool,
             dry_run: bool, as_json: bool, watch: bool, interval: float, sample: int | None, threshold: float | None,
             every: int | None, margin: float, rounds: int | None, workers: int | None, join: str | None,
             worker_job: bool) -> None:
    """Search the variables of TOPOLOGY with its [optimizer]; print the scores and the plan.

    Trials run on live agents of a scratch node started from TOPOLOGY (named NODE-optimize):
    each trial sets that node's variables, as --apply does on the real one. The study is kept
    in a durable file (or --storage URL), so running the command again resumes it. The plan is
    the diff from the running node's values (or, when it is not running, the topology's defaults)
    to the best configuration, with what the node would start, stop or reconfigure; --apply
    carries it out (--dry-run: prints only). Trials keep the running node's values of what no
    trial searches (documents such as a saved DSPy program), so they score what the plan would
    leave running. --watch runs the watch loop instead.

    --workers N runs N trial workers on one study in --storage (PostgreSQL for several hosts);
    --join STUDY --storage URL adds workers from another host. Only the leader applies, once.
    """
    if worker_job:
        _worker()
        return
    if join is not None or workers is not None:
        _terminate_as_interrupt()
    if join is not None:
        given = "--trials" if trials is not None else "--seed" if seed is not None else None
        if given:
            fail(f"optimize --join: {given} comes from the leader's study record; give it to the leader", EXIT_USAGE)
        try:
            _join_study(join, topology, storage, workers or 1, as_json, apply_ or watch)
        except KeyboardInterrupt:  # at any moment of its startup (its pool's own stop says more)
            fail(f"optimize --join: interrupted; study {join!r} goes on with the leader's workers", EXIT_INTERRUPTED)
        return
    if topology is None:
        fail("optimize: give TOPOLOGY (the file to optimize), or --join STUDY --storage URL", EXIT_USAGE)
    try:
        _optimize(topology, trials, seed, storage, apply_, dry_run, as_json, watch, interval=interval, sample=sample,
                  threshold=threshold, every=every, margin=margin, rounds=rounds, workers=workers)
    except KeyboardInterrupt:  # at any moment before the search, or while the plan is asked or sent
        fail("optimize: interrupted", EXIT_INTERRUPTED)


def _optimize(topology: str, trials: int | None, seed: int | None, storage: str | None, apply_: bool,
              dry_run: bool, as_json: bool, watch: bool, workers: int | None = None, **watching) -> None:
    from ..optimize.live_system import OptimizeError
    from ..optimize.study_storage import in_memory, masked

    if workers is not None and storage is not None and in_memory(storage):  # even 1: it records the study for joiners
        fail(f"optimize: --workers {workers}: workers share one study through its storage (and --join opens it), "
             f"and --storage {masked(storage)} is one process's memory; give --storage postgresql+psycopg://USER:"
             "PASSWORD@HOST/DB (workers on several hosts) or sqlite:///PATH (workers of this host)", EXIT_USAGE)

    if apply_ and not watch:  # the node first, at once: importing the programs takes seconds
        _require_running(_load(topology, check_imports=False).node.name, topology)
    spec = _load(topology)
    if watch and (as_json or storage or workers):
        option = "--json" if as_json else "--storage" if storage else "--workers"
        fail(f"optimize --watch: {option} is for one search; the watch loop's "
             "rounds are node events (`otpy events`) and its searches in-memory studies", EXIT_USAGE)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    # The scratch node's own log (its children's exits at each trial) is not the user's: what a
    # trial could not do is in the result, and a start failure is one line (see optimize.scratch).
    logging.getLogger("otpy").addFilter(ScratchLogFilter(f"{spec.node.name}-optimize"))
    # This process runs the [optimizer]'s dataset and metric itself: it imports them from the
    # folders the node's programs come from (the current one, the topology file's).
    sys.path[:0] = [folder for folder in spec.node.program_folders if folder not in sys.path]
    try:
        if watch:
            _watch(spec, topology, seed, trials=trials or 10, **watching)
        else:
            _optimize_once(spec, topology, trials, seed, storage, apply_, dry_run, as_json, workers)
    except OptimizeError as exc:
        fail(f"optimize: {exc}", EXIT_USAGE if exc.usage else EXIT_FAILED)


def _load(topology: str, check_imports: bool = True):
    try:
        return load_topology(topology, check_imports=check_imports)
    except TopologyError as exc:
        fail(str(exc), EXIT_USAGE)


def conventions(table):
    """The ``[optimizer]`` table, adapted by ``otpy.dspy`` when its dataset holds DSPy examples
    (``dspy.Example``s, a metric ``metric(example, prediction, trace=None)``); else as it is, and
    dspy is not imported."""
    from ..optimize.evaluation import dspy_shaped

    if not (dspy_shaped(table.trainset) or dspy_shaped(table.valset or [])):
        return table
    from ..dspy.evaluate import adapt_table

    return adapt_table(table)


def _require_running(name: str, topology: str) -> None:
    """``--apply``'s check, before the search (and before the programs are imported)."""
    try:
        with connect(name):
            return
    except NodeNotFound:
        fail(f"optimize --apply: node {name!r} is not running; start it with `otpy start {topology} --detach`, "
             "then run this again (nothing was searched)")


class ScratchLogFilter(logging.Filter):
    """Drops the log records of one node (the scratch node's: ``otpy[NAME]: ...``)."""

    def __init__(self, node: str, prefix: bool = False) -> None:
        super().__init__()
        self.node, self.prefix = node, prefix  # prefix: every node whose name starts with it (a worker's slots)

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.args, tuple) and record.args and isinstance(record.args[0], str)):
            return True
        name = record.args[0]
        return not (name.startswith(self.node) if self.prefix else name == self.node)


def _optimize_once(spec, topology: str, trials: int | None, seed: int | None, storage: str | None, apply_: bool,
                   dry_run: bool, as_json: bool, workers: int | None = None) -> None:
    from ..optimize.live_system import (
        LiveSystem, OptimizeError, OptimizerTable, live_values, optimize_topology, plan_taken, set_changes, study_name)
    from ..optimize.study_storage import checked_storage, default_storage, masked

    name = spec.node.name
    table = conventions(OptimizerTable(spec))  # its problems first: a usage error, before anything runs
    current = live_values(name)  # a running node: trials keep its documents, the plan is against it
    if apply_ and current is None:  # stopped since the first check (``_require_running``)
        _require_running(name, topology)
    storage = checked_storage(storage) if storage else default_storage(name)
    _warn_restarts(spec)
    study = study_name(spec, current)
    click.echo(f"optimize: study {study!r} in {masked(storage)}", err=True)
    if workers is not None:
        click.echo(f"optimize: {workers} worker{'' if workers == 1 else 's'} on this host; more from another: "
                   f"`otpy optimize --join {study} --storage {masked(storage)} --workers N`", err=True)
    try:
        result = optimize_topology(spec, trials=trials, seed=seed, current=current, storage=storage,
                                   topology_path=topology, table=table, workers=workers,
                                   worker_command=WORKER_COMMAND, say=_say)
    except KeyboardInterrupt:
        stopped = " (every worker stopped)" if workers and workers > 1 else ""
        fail(f"optimize: interrupted{stopped}; study {study!r} in {masked(storage)} keeps its finished trials (one "
             "cut short is marked failed): run the same command to resume it", EXIT_INTERRUPTED)
    if workers is not None:
        _say(_workers_line(result.workers, result.trials_per_second))
    if seed is not None and result.ran == 0:
        click.echo(f"optimize: --seed {seed} is not used: study {study!r} already has {result.trials} finished "
                   "trials, so no trial ran; ask for more (--trials N), or name another study ([optimizer] study) "
                   "or --storage to search with this seed", err=True)
    report = OptimizeReport(result, name, as_json)
    report.scores()
    if current is None:
        report.plan(False, set_changes(result.actions, _defaults(spec)))
        report.end()
        return
    with connect(name) as client, Caller(name) as caller:
        live = LiveSystem(client, caller, _spaces(spec))
        actions = live.plan(result.config)
        report.plan(True, live.preview(actions))
        if apply_ and not dry_run and actions:
            try:
                report.applied(live.send(actions))
            except KeyboardInterrupt:  # the plan is one all-or-nothing write: say whether the node took it
                took = plan_taken(actions, live_values(name))  # one all-or-nothing write: taken or not
                fail(f"optimize --apply: interrupted while the plan was sent; node {name!r} "
                     f"{'took it (applied)' if took else 'had not taken it when asked (see `otpy vars get`)'}",
                     EXIT_INTERRUPTED)
            except OptimizeError as exc:
                report.apply_failed(str(exc))
                report.end()
                fail(f"optimize --apply: {exc}")
        elif not apply_ and not as_json:
            click.echo("apply it with --apply")
    report.end()


class OptimizeReport:
    """What ``otpy optimize`` prints: text as it goes, or (``--json``) one document at the end
    with the scores, trials, configuration, plan and what was applied."""

    def __init__(self, result, node: str, as_json: bool) -> None:
        self.result, self.node, self.as_json = result, node, as_json
        from ..optimize.study_storage import masked

        self.document: dict = {
            "study": result.study_name, "storage": masked(result.storage), "trials": result.trials,
            "infeasible": result.infeasible, "failed": result.failed, "apply_failed": result.apply_failed,
            "train_score": result.train_score, "val_score": result.val_score, "val_error": result.val_error,
            "failures": result.failures, "first_error": result.first_error,
            "first_apply_error": result.first_apply_error, "config": result.config,
            "plan": None, "applied": None,
        }
        if result.workers:
            self.document |= {"workers": result.workers, "trials_per_second": result.trials_per_second}

    def scores(self) -> None:
        result = self.result
        if result.first_apply_error:
            click.echo(f"a trial's configuration could not be applied; the first reason: {result.first_apply_error}",
                       err=True)
        if result.val_error:
            click.echo(f"no validation score: {result.val_error}", err=True)
        if result.failures:
            plural = "" if result.failures == 1 else "s"
            click.echo(f"{result.failures} call{plural} failed; the first:\n{result.first_error}", err=True)
        if self.as_json:
            return
        validation = "" if result.val_score is None else f"; validation score {result.val_score:.4f}"
        if result.val_score is None and result.val_error:
            validation = "; no validation score (see stderr)"
        not_applied = f", {result.apply_failed} of them not applied" if result.apply_failed else ""
        click.echo(f"best score {result.best_score:.4f} (train) after {result.trials} trials "
                   f"({result.infeasible} infeasible, {result.failed} failed{not_applied}){validation}; "
                   f"study {result.study_name!r}")
        click.echo(json.dumps(result.config, indent=2, default=str))

    def plan(self, running: bool, changes: list) -> None:
        from ..optimize.live_system import format_plan

        self.document["plan"] = {"against": "node" if running else "defaults", "node": self.node,
                                 "changes": [_change(change) for change in changes]}
        if self.as_json:
            return
        if running:
            click.echo(f"plan (against the running node {self.node!r}):")
        else:
            click.echo(f"plan (node {self.node!r} is not running: from the topology's defaults):")
        click.echo("\n".join(f"  {line}" for line in format_plan(changes)))

    def applied(self, changes: list) -> None:
        from ..optimize.live_system import format_plan

        self.document["applied"] = [_change(change) for change in changes]
        if not self.as_json:
            click.echo("applied:")
            click.echo("\n".join(f"  {line}" for line in format_plan(changes)))

    def apply_failed(self, reason: str) -> None:
        self.document["apply_error"] = reason

    def end(self) -> None:
        if self.as_json:
            click.echo(json.dumps(self.document, default=str))


def _change(change) -> dict:
    """A plan's step as JSON: the ``Change``'s fields, and its line as the text plan shows it."""
    from ..optimize.live_system import format_change

    return msgspec.to_builtins(change, builtin_types=None, str_keys=True) | {"line": format_change(change)}


def _warn_restarts(spec) -> None:
    """Once, before a search: each program that every trial's knobs would restart (no on_config)."""
    from ..optimize.knob_check import programs_without_on_config

    for restarted in programs_without_on_config(spec.node.root, _spaces(spec)):
        click.echo(f"optimize: warning: {restarted.warning()}", err=True)


def _spaces(spec):
    from ..optimize.live_system import spaces_of

    return spaces_of(spec)


def _defaults(spec):
    from ..optimize.optimizer import Optimizer

    return Optimizer(_spaces(spec), progress=False).defaults()


def _watch(spec, topology: str, seed: int | None, **options) -> None:
    from ..optimize.live_system import OptimizerTable
    from ..optimize.orchestrator import WatchPolicy, watch_topology

    rounds = options.pop("rounds")
    try:
        policy = WatchPolicy(**options)
    except ValueError as exc:
        fail(f"optimize --watch: {exc}", EXIT_USAGE)
    if rounds is not None and rounds < 1:
        fail(f"optimize --watch: --rounds: got {rounds}; expected an integer >= 1", EXIT_USAGE)
    table = conventions(OptimizerTable(spec))
    _warn_restarts(spec)
    try:
        with watch_topology(spec, policy, seed=seed, table=table) as orchestrator:
            for report in _rounds(orchestrator, rounds):
                click.echo(_round_line(report), nl=True)
    except NodeNotFound as exc:
        fail(f"optimize --watch: {exc}; start it with `otpy start {topology} --detach`")
    except KeyboardInterrupt:  # the loop runs until interrupted: its end, exit 0
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


# --- several workers: --workers, --join, and one worker (--worker) -------------------------------

WORKER_COMMAND = [sys.executable, "-m", "otpy", "optimize", "--worker"]  # the job on stdin, never in argv


def _say(line: str) -> None:
    click.echo(line, err=True)


def _workers_line(counts: list, rate: float | None) -> str:
    total = sum(entry["trials"] for entry in counts)
    each = ", ".join(f"{entry['worker']} {entry['trials']}" for entry in counts)
    speed = "" if rate is None else f" ({rate:.2f} trials/s)"
    return f"optimize: {total} trials by {len(counts)} worker{'' if len(counts) == 1 else 's'}{speed}: {each}"


def _terminate_as_interrupt() -> None:
    """SIGTERM (``timeout``, systemd, ``docker stop``) stops a leader or a joiner as Ctrl-C does: its
    workers stopped, its trial failed, one line, exit 130 (not a silent 143 with a trial left RUNNING)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _worker() -> None:
    """``otpy optimize --worker``: one trial worker of a pool (``optimize.workers``); its job, a JSON
    line on stdin; its summary, a JSON line on stdout. Interrupted (its pool stops it): exit 130."""
    from ..optimize.live_system import OptimizeError
    from ..optimize.trial_worker import run_worker

    job = json.loads(sys.stdin.readline())
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("otpy").addFilter(ScratchLogFilter(f"{job['node']}-optimize-", prefix=True))
    try:
        summary = run_worker(job, conventions)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except (OptimizeError, TopologyError) as exc:
        fail(f"optimize: worker {job['worker']}: {exc}", EXIT_FAILED)
    click.echo(json.dumps(summary))


def _join_study(name: str, topology: str | None, storage: str | None, workers: int, as_json: bool,
                refused: bool) -> None:
    """``otpy optimize --join STUDY --storage URL``: ``workers`` more workers on a leader's study,
    from what the leader recorded in it (``StudyRecord``); they never apply."""
    import os
    import time

    from ..optimize.live_system import OptimizeError
    from ..optimize.study_storage import checked_storage, masked, shared_storage
    from ..optimize.trial_share import TrialShare
    from ..optimize.workers import (
        LeaderWatch, StudyRecord, WorkerPool, definition_differs, finished_trials, load_study, study_definition,
        topology_digest)

    if refused:
        fail("optimize --join: joined workers run trials only; the leader applies (no --apply or --watch here)",
             EXIT_USAGE)
    if storage is None:
        fail(f"optimize --join {name}: give --storage URL, the database of the leader's study", EXIT_USAGE)
    try:
        storage = checked_storage(storage)
        shared_storage(storage, "--join")
        study = load_study(storage, name)
        record = StudyRecord.read(study)
    except OptimizeError as exc:
        fail(f"optimize {exc}" if str(exc).startswith("--") else f"optimize --join: {exc}",
             EXIT_USAGE if exc.usage else EXIT_FAILED)
    if record is None:
        fail(f"optimize --join: study {name!r} in {masked(storage)} was not started by `otpy optimize FILE --workers N`"
             " (it records the topology for joiners); start the leader with --workers", EXIT_FAILED)
    path = os.path.abspath(topology) if topology else record.topology
    if not os.path.isfile(path):
        fail(f"optimize --join: the leader's topology {path!r} is not on this host; give it: "
             f"`otpy optimize FILE --join {name} --storage URL`", EXIT_USAGE)
    if topology_digest(path) != record.digest:
        fail(f"optimize --join: {path!r} is not the leader's topology (its sha256 differs from {record.digest}); "
             "give the same file", EXIT_USAGE)
    spec = _load(path)  # its problems here, before any worker starts
    sys.path[:0] = [folder for folder in spec.node.program_folders if folder not in sys.path]
    if record.definition:  # one study, one objective: the metric's code and the data must be the leader's
        from ..optimize.live_system import OptimizerTable

        try:
            differs = definition_differs(record.definition, study_definition(conventions(OptimizerTable(spec))))
        except OptimizeError as exc:
            fail(f"optimize --join: {exc}", EXIT_USAGE)
        if differs:
            fail(f"optimize --join: this host's {' and '.join(f'optimizer.{key}' for key in differs)} "
                 f"differ{'s' if len(differs) == 1 else ''} from the leader's (study {name!r} records their digests); "
                 "a study is scored by one objective: use the leader's files", EXIT_USAGE)
    job = {"storage": storage, "study": name, "topology": path, "node": record.node, "trials": record.trials,
           "seed": record.seed, "fixed": record.fixed, "heartbeat": None}
    from ..optimize.workers import HEARTBEAT

    job["heartbeat"] = HEARTBEAT
    before = len(finished_trials(study))
    click.echo(f"optimize: joining study {name!r} in {masked(storage)} ({before} of {record.trials} trials "
               f"finished) with {workers} worker{'' if workers == 1 else 's'}; the leader {record.leader} applies",
               err=True)
    started = time.monotonic()
    pool = WorkerPool(job, workers if before < record.trials else 0, command=WORKER_COMMAND, say=_say, study=study)
    watch, gone = LeaderWatch(study), None
    try:
        with pool:
            while gone is None and any(thread.is_alive() for thread in pool._threads):
                pool.wait(timeout=1.0)
                gone = watch.gone()
    except KeyboardInterrupt:
        fail(f"optimize: interrupted (every worker stopped); study {name!r} goes on with the leader's workers",
             EXIT_INTERRUPTED)
    seconds = time.monotonic() - started
    done = len(finished_trials(study))
    mine = [entry for entry in pool.counts() if entry["worker"] in pool.names]
    ran = sum(entry["trials"] for entry in mine)
    rate = ran / seconds if seconds > 0 else None  # this host's workers' trials per second, their start included
    if as_json:
        click.echo(json.dumps({"study": name, "storage": masked(storage), "joined": True, "trials": done,
                               "target": record.trials, "ran": ran, "workers": mine, "trials_per_second": rate}))
    else:
        running = "" if done >= record.trials else " (the others running on other workers)"
        applies = (f"the leader {record.leader} is gone (no sign of it for {gone:.0f} s): run its command again to "
                   "take and apply the best") if gone else f"the leader {record.leader} applies the best"
        click.echo(f"joined study {name!r}: {ran} trials ran here by {len(mine)} worker(s); the study has {done} "
                   f"of {record.trials} trials{running}; {applies}")
        if mine:
            _say(_workers_line(mine, rate))
    if gone:
        fail(f"optimize --join: the leader {record.leader} of study {name!r} is gone (no sign of it for {gone:.0f} s); "
             "this host's workers stopped; run the leader's command again to finish the study and apply its best")
    died = pool.died()  # workers that ended because every trial was taken have not failed (advC-14)
    if died and not TrialShare(record.trials).all_taken(study):
        fail(f"optimize --join: the study has {done} of {record.trials} trials and this host's workers died "
             f"({', '.join(died)})", EXIT_FAILED)
