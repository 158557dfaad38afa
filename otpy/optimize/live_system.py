"""From configurations to a live system: plans that are diffs, sent as ``SetVariables``.

A node knows which processes its variables decide (``program = { variable = ... }``,
``enabled``, ``replicas`` in its topology) and reconciles them itself when a variable is set.
So the optimizer's only action is one ``SetVariables`` whose ``scopes`` hold the values that
differ from what the node's registry holds now (``config_diff``), every scope's together.
``LiveSystem`` reads the node's values, plans the diff, asks the node what it would do (one
``set_config(..., dry_run=True)``: the values it would set with their true befores, and the
processes it would start, stop or reconfigure, with from and to), and sends it as one
``set_config``: the node checks, reconciles and stores it as one write, so a part it refuses
leaves every scope as it was. Applying a configuration the node already runs sends nothing.

Everything goes over the node's control socket and the registry's call address, never into the
supervisor's objects, so the optimizer can run in any process. ``optimize_topology`` is
``otpy optimize``: trials run on a scratch node started from the topology (named
``<node>-optimize``), through the same ``apply``, each setting the trial's searched values and
the running node's values of the others (its documents: a trial scores the program the plan
would leave running); the study is kept in any optuna storage, by default a durable per-user
file (``study_storage``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from typing import Any, Iterable, Mapping

from ..variables.client import RegistryClient
from ..wire.protocol import Change, Outcome, SetVariables
from .evaluation import as_example, dspy_shaped
from .optimizer import CompileResult, Config, OptimizeError, action_config, fixed_digest, plan_actions
from .study_db import quiet_heartbeat_errors, recover
from .workers import (
    BEAT_ATTR, HEARTBEAT, StudyRecord, WorkerPool, beat_leader, live_leader, started_trials, study_definition,
    topology_digest, wait_for_study, worker_name)

__all__ = ["LiveSystem", "OptimizeError", "format_change", "optimize_topology", "registry_values"]

REMOVED_BINDINGS = (
    "optimizer.bindings: no longer read. Bind the field to the variable in the supervision tree "
    "instead, e.g. a template of the dynamic supervisor with program = {{ variable = \"{variable}\" }} "
    "and replicas = 1 (see docs/optimizing.md); the node then reconfigures that child itself when "
    "the variable is set. Knobs reach the program as its config (setup and on_config).")


def registry_values(entries: Iterable[Any]) -> Config:
    """The values a registry holds (its ``list`` entries), per scope: set or default ones;
    computed (composites) and missing ones are not values anybody sets."""
    values: Config = {}
    for entry in entries:
        if entry.reason in ("set", "default"):
            values.setdefault(entry.scope, {})[entry.name] = entry.value
    return values


def set_changes(actions: Iterable[SetVariables], current: Config) -> list[Change]:
    """What ``actions`` change in the values alone (the plan without a node to ask)."""
    return [Change(action="set", scope=scope, name=name, before=current.get(scope, {}).get(name), after=value)
            for action in actions for scope, values in action_config(action).items()
            for name, value in values.items()]


def format_change(change: Change) -> str:
    """One line of a plan, like ``terraform plan``'s: ``~`` changes, ``+`` starts, ``-`` stops."""
    where = f"{change.supervisor}/{change.child}" if change.supervisor else change.child
    pid = f" (pid {change.pid})" if change.pid else ""
    match change.action:
        case "set":
            return f"~ {change.scope}.{change.name} {_shown(change.before)} -> {_shown(change.after)}"
        case "reconfigure":
            return f"~ {where} reconfigure {change.before} -> {change.after}{pid}"
        case "start":
            return f"+ start {where} {change.after or ''}".rstrip() + pid
        case "stop":
            return f"- stop {where} {change.before or ''}".rstrip()
    return f"? {change.action} {where}"


def format_plan(changes: list[Change]) -> list[str]:
    return [format_change(change) for change in changes] or ["no changes"]


def _shown(value: Any) -> str:
    return json.dumps(value, default=str)


class LiveSystem:
    """A running node seen as its variables: ``current`` values, a ``plan`` (the diff to a
    configuration), ``preview`` (what the node would do), ``apply`` (do it).

    ``every_value``: a scratch node's, whose trials set every value of their configuration, the
    variables no optimizer searches (documents) too; a live node's plans never set those."""

    def __init__(self, client, caller, spaces: Mapping[str, Any], *, every_value: bool = False) -> None:
        self.client = client  # the control socket: set_variables
        self.registry = RegistryClient(caller)  # the registry's values
        self.spaces = dict(spaces)
        self.every_value = every_value

    def current(self) -> Config:
        """The values the node runs now, from its registry."""
        return registry_values(self.registry.list())

    def plan(self, config: Config, current: Config | None = None) -> list[SetVariables]:
        """The ``SetVariables`` that makes the node run ``config``: one, carrying the changed values
        of every scope; none when the node runs it already."""
        return plan_actions(self.spaces, self.current() if current is None else current, config,
                            every_value=self.every_value)

    def preview(self, actions: list[SetVariables]) -> list[Change]:
        """What the node would do for ``actions``: their dry run (the values set, with what the
        node holds now, and the processes started, stopped or reconfigured), nothing changed."""
        return [change for outcome in self._send(actions, dry_run=True) for change in outcome.changes]

    def send(self, actions: list[SetVariables]) -> list[Change]:
        """Carry out ``actions``; the changes the node made. Each is one all-or-nothing write:
        ``OptimizeError`` with the node's reason when it refuses one (no scope of it changed)."""
        return [change for outcome in self._send(actions, dry_run=False) for change in outcome.changes]

    def apply(self, config: Config) -> list[Change]:
        """Make the node run ``config``: the diff against its values now, sent (nothing when none)."""
        return self.send(self.plan(config))

    def _send(self, actions: list[SetVariables], *, dry_run: bool) -> Iterable[Outcome]:
        for action in actions:
            config = action_config(action)
            outcome = self.client.set_config(config, dry_run=dry_run)
            if not outcome.ok:
                raise OptimizeError(f"set_config {json.dumps(config, default=str)}{' (dry run)' if dry_run else ''}: "
                                    f"{outcome.outcome}: {outcome.detail} (one write: no scope was changed)")
            yield outcome


class OptimizerTable:
    """The ``[optimizer]`` table of a topology, checked: the program agent, the data, the metric."""

    def __init__(self, topology) -> None:
        table = dict(topology.raw_optimizer)
        if "bindings" in table:
            variable = next((entry.get("program", "global.NAME") for entry in table["bindings"].values()
                             if isinstance(entry, Mapping)), "global.NAME")
            raise OptimizeError(REMOVED_BINDINGS.format(variable=variable), usage=True)
        for key in ("program", "dataset", "metric"):
            if key not in table:
                raise OptimizeError(f"optimizer.{key} is missing: the [optimizer] table needs program (the agent "
                                    f"called per example), dataset and metric ('module:attr')", usage=True)
        if not topology.raw_variables:
            raise OptimizeError("the topology declares no [variables]: the optimizer has nothing to search", usage=True)
        self.table = table
        self.program = str(table["program"])
        self.timeout = float(table.get("timeout", 30.0))
        self.threads = _threads(table.get("threads", 1))
        self.trainset = dataset_of(table, "dataset")
        self.valset = dataset_of(table, "valset") if "valset" in table else None
        self.metric = _target(table, "metric")
        if not callable(self.metric):
            raise OptimizeError(f"optimizer.metric ({table['metric']!r}): got {type(self.metric).__name__} "
                                f"{_clip(repr(self.metric))}; expected a function metric(example, prediction)",
                                usage=True)

    def caller_program(self, caller):
        """The program the optimizer scores: one call of the ``program`` agent per example."""
        return lambda **inputs: caller.call(self.program, inputs, timeout=self.timeout)


def _threads(value: Any) -> int:
    """``[optimizer] threads``: how many examples a trial scores at once (calls of the program in
    parallel, as DSPy's ``Evaluate(num_threads=N)``); 1 by default."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
        raise OptimizeError(f"optimizer.threads: got {value!r}; expected an integer from 1 to 64 (the examples a "
                            "trial scores at once)", usage=True)
    return value


def _target(table: Mapping[str, Any], key: str) -> Any:
    from ..agent.program import import_target

    try:
        return import_target(str(table[key]))
    except Exception as exc:  # ImportError, or what the module raised as it was imported
        raise OptimizeError(f"optimizer.{key}: cannot import {table[key]!r}: {type(exc).__name__}: {exc}",
                            usage=True) from None


def dataset_of(table: Mapping[str, Any], key: str) -> list:
    """``[optimizer] dataset`` or ``valset``: the list it names (or a function's list, or any
    iterable's items), checked before anything runs: ``OptimizeError`` (a usage error) naming the
    problem when it cannot be read, is empty, or holds an item that is no example (an
    ``otpy.Example`` or a mapping with ``inputs``; DSPy examples are left to ``otpy.dspy``,
    which adapts them)."""
    target = _target(table, key)
    where = f"optimizer.{key} ({table[key]!r})"
    try:
        items = list(target() if callable(target) else target)
    except TypeError as exc:
        if not callable(target) and not hasattr(target, "__iter__"):
            raise OptimizeError(f"{where}: got {type(target).__name__} {_clip(repr(target))}; expected a list of "
                                "examples, or a function returning one", usage=True) from None
        raise OptimizeError(f"{where}: reading it raised TypeError: {exc}", usage=True) from None
    except Exception as exc:
        raise OptimizeError(f"{where}: reading it raised {type(exc).__name__}: {exc}", usage=True) from None
    if not items:
        raise OptimizeError(f"{where}: no examples; the optimizer scores trials on them", usage=True)
    if dspy_shaped(items):
        return items
    return [_example(where, index, item) for index, item in enumerate(items)]


def _clip(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _example(where: str, index: int, item: Any):
    try:
        return as_example(item)
    except (TypeError, ValueError) as exc:
        raise OptimizeError(f"{where}: item {index}: {exc}", usage=True) from None


def spaces_of(topology) -> dict:
    """The topology's spaces, with its ``[constraints]``: what the registry enforces, the
    optimizer never proposes (such a trial is infeasible)."""
    from ..variables.scopes import spaces_from_topology

    return spaces_from_topology(topology.raw_variables, topology.raw_constraints or None)


def live_values(name: str) -> Config | None:
    """The values node ``name`` runs now, from its registry; None when it is not running."""
    from ..wire.calls import Caller
    from ..wire.client import NodeNotFound, connect

    try:
        with connect(name):
            pass
    except NodeNotFound:
        return None
    with Caller(name) as caller:
        return registry_values(RegistryClient(caller).list())


def optimize_topology(topology, *, trials: int | None = None, seed: int | None = None,
                      progress: bool = True, current: Config | None = None, storage: str | None = None,
                      topology_path: str | None = None, table: OptimizerTable | None = None,
                      workers: int | None = None, worker_command: list[str] | None = None,
                      say=None) -> CompileResult:
    """Run the ``[optimizer]`` of ``topology`` on a scratch node; the result's actions are the
    diff from ``current`` (the running node's values, or else the topology's defaults). Every
    trial runs with ``current``'s values of the variables no trial searches (its documents).

    ``storage``: an optuna storage URL (or an SQLite path); by default the node's durable file
    (``study_storage.default_storage``). A scratch node that cannot start is one line
    (``OptimizeError``) with its failing child's last output. ``table``: the topology's
    ``[optimizer]`` already read (its dataset imported), else read here.

    ``workers``: the study is shared (``workers``' module): this process is one worker, and
    ``workers - 1`` more run ``worker_command`` (each its own scratch node); the study records
    what ``--join`` needs; the best is taken once every worker here has ended and the study has
    its trials. ``say(line)`` tells the user about workers (one that died, trials waited for)."""
    from ..wire.calls import Caller
    from ..wire.client import connect
    from .optimizer import Optimizer
    from .scratch import scratch_node
    from .study_storage import default_storage

    spec = table or OptimizerTable(topology)
    name = topology.node.name
    table = spec.table
    seed = table.get("seed") if seed is None else seed
    trials = trials or int(table.get("trials", 20))
    storage = storage or default_storage(name)
    shared = workers is not None
    optimizer = Optimizer(spaces_of(topology), seed=seed, storage=storage, study_name=study_name(topology, current),
                          progress=progress, worker=worker_name() if shared else None,
                          heartbeat=HEARTBEAT if shared else None, recover=recover if shared else None)
    fixed = optimizer.fixed_values(current)  # a running node's document the topology refuses: said before any start
    if shared and (other := live_leader(optimizer.open_study(), optimizer.worker)) is not None:  # before any start
        raise OptimizeError(f"study {optimizer.study_name!r} has a running leader, {other} (it applies the best): add "
                            f"workers to it with `otpy optimize --join {optimizer.study_name} --storage URL`, or run "
                            "this once it has ended")
    with scratch_node(topology, topology_path) as scratch, connect(scratch.name) as client, \
            Caller(scratch.name) as caller, _pool(optimizer, topology, topology_path, trials, seed, fixed, workers,
                                                   worker_command, say, spec) as pool:
        trial_system = LiveSystem(client, caller, optimizer.spaces, every_value=True)
        result = optimizer.compile(spec.caller_program(caller), spec.trainset, spec.metric, valset=spec.valset,
                                   trials=trials, apply=trial_system.apply, current=current, threads=spec.threads,
                                   after_search=pool and pool.finish)
    return result if pool is None else dataclasses.replace(result, workers=pool.counts(pool.old),
                                                           trials_per_second=pool.rate)


@contextlib.contextmanager
def _pool(optimizer, topology, topology_path, trials, seed, fixed, workers, command, say, spec=None):
    """With ``workers``: the study recorded for joiners, ``workers - 1`` worker processes for the
    block (stopped at its end, one by one), and the ``after_search`` that waits for them and for
    the study's trials. Without: nothing (one process, today's search). Counts and trials per
    second are this run's: trials some worker took before it (``pool.old``) are left out."""
    if workers is None:
        yield None
        return
    quiet_heartbeat_errors()
    started = time.monotonic()
    study = optimizer.open_study()
    old = started_trials(study)
    path = os.path.abspath(topology_path) if topology_path else None
    if path is not None:
        StudyRecord(topology=path, digest=topology_digest(path), node=topology.node.name, trials=trials, seed=seed,
                    fixed=fixed, leader=optimizer.worker,
                    definition=study_definition(spec) if spec is not None else {}).write(study)
    job = {"storage": optimizer.storage, "study": optimizer.study_name, "topology": path, "node": topology.node.name,
           "trials": trials, "seed": seed, "fixed": fixed, "heartbeat": HEARTBEAT}
    say = say or (lambda line: None)
    pool = WorkerPool(job, workers - 1, command=command or [], say=say, study=study)
    pool.old, pool.rate = old, None

    def finish() -> None:
        pool.wait()
        wait_for_study(study, trials, say)
        seconds = time.monotonic() - started
        new = sum(entry["trials"] for entry in pool.counts(old))
        pool.rate = new / seconds if seconds > 0 else None

    pool.finish = finish
    beating = threading.Event()
    beat = beat_leader(study, optimizer.worker, beating)  # joiners stop when it stops (``LeaderWatch``)
    try:
        if workers > 1:
            if path is None or not command:
                raise OptimizeError("workers > 1 need the topology's file and a worker command")
            pool.start()
        yield pool
    finally:
        beating.set()
        pool.stop()
        beat.join(5)
        with contextlib.suppress(Exception):  # ended: the next leader of the study need not wait
            study.set_user_attr(BEAT_ATTR, None)


def plan_taken(actions: list[SetVariables], values: Config | None) -> bool:
    """Whether a node running ``values`` (``live_values``) holds every value ``actions`` set: after a
    Ctrl-C while the plan was sent (one all-or-nothing write), what to tell the user."""
    return all((values or {}).get(scope, {}).get(name, object()) == value for action in actions
               for scope, changed in action_config(action).items() for name, value in changed.items())


def study_name(topology, current: Config | None = None) -> str:
    """The study's name: ``[optimizer] study``, else the node's name; when ``current`` (the running
    node's values) holds values of the variables no trial searches (documents) other than their
    defaults, ``@`` and a digest of them after it: trials scored with another saved program are
    another study's (``fixed_digest``)."""
    name = str(topology.raw_optimizer.get("study", topology.node.name))
    digest = fixed_digest(spaces_of(topology), current)
    return name if digest is None else f"{name}@{digest}"
