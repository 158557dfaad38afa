"""The optimizer: optuna searches the variable spaces against a metric on a dataset.

DSPy's shape: ``compile(program, trainset, metric, valset=None, trials=N)`` with
``metric(example, prediction) -> float``. What makes it otpy's: before each trial, ``apply``
turns the live system into that trial's configuration (``otpy optimize`` sets the variables
on a scratch node, which reconfigures the processes they decide), so every trial runs on
real agents; and the result carries the actions that turn the running system into the best.

Scores: each trial is scored on the trainset, which the study maximises (``best_score`` is
that train score). With a ``valset``, the best configuration is applied once more and scored
on it: ``val_score`` is the held-out number to trust. A call that raises is counted
(``failures``, as is a metric that raises), its first traceback kept (``first_error``); a trial
where every call failed is a failed trial (told to optuna as failed), never a score of 0. So is
a trial whose configuration ``apply`` could not make the system run (the node refused it: a
program that does not start with it); its reason is kept on the trial and the search goes on.
The trials run in optuna's own loop (``study.optimize``, failed trials caught, a progress
bar on a terminal, plain lines elsewhere); a trial interrupted (Ctrl-C) is told to optuna as
failed before the interrupt goes on, so a stored study never keeps it RUNNING.

Plans are diffs: ``actions`` are one ``SetVariables`` whose ``scopes`` hold, per scope, the
values that differ between ``current`` (what the live system runs; by default the spaces'
defaults) and the best configuration: one all-or-nothing write on the node. Applying a result
to a system already running it sends nothing (no action).

The variables no trial searches (a ``document``, e.g. a saved DSPy program) are never in a plan,
so a trial keeps them as ``current`` has them (``fixed_values``): every trial's configuration,
and the best one's, is what the live system would run once the plan is applied, scored as such;
a searched value the live system's documents do not fit fails to apply in a trial (a failed
trial), never in the plan.

Parameters are named ``SCOPE.NAME`` (``global.classifier``, ``svm.C``). A configuration that
breaks a space's constraints is an infeasible trial (told to optuna as failed), not a crash.
With ``storage`` (an SQLite path), the study is kept in optuna's RDB storage: a new
``compile`` with the same study name resumes where the last one stopped, and
``optuna-dashboard sqlite:///PATH`` can open it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..variables.scopes import VariableSpace
from ..variables.types import VariableError
from ..wire.protocol import SetVariables
from .evaluation import Evaluation, Example, dspy_shaped, evaluate
from .evaluation import as_example as _as_example
from .trial_share import TrialShare

__all__ = ["CompileResult", "Evaluation", "Example", "OptimizeError", "Optimizer", "dspy_shaped", "evaluate",
           "fixed_values", "plan_actions"]

Config = dict[str, dict[str, Any]]  # scope -> name -> value


class OptimizeError(RuntimeError):
    """The optimizer could not do what was asked (its table, a trial, an action); the message says
    why. ``usage``: the input is wrong (the topology's ``[optimizer]`` table), not the run."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class CompileResult:
    """The best configuration, its scores, and the actions that make the live system run it.

    ``best_score`` is ``train_score``: the trainset score the study maximised. ``val_score`` is
    the best configuration's score on the valset (None without one). ``trials`` counts the
    study's finished trials (this run and earlier ones); ``infeasible`` those that broke a
    constraint, ``failed`` the others that failed: every call raised, the configuration could
    not be applied (``apply_failed`` of them; this run's first reason ``first_apply_error``), or
    the run was interrupted in it. ``val_error`` says why ``val_score`` is None with a valset.
    ``failures`` and ``first_error`` are this run's failed calls (and metrics that raised or
    returned no score). ``ran``: the trials this run started (0 when the study had its trials).
    ``fixed``: the values of the variables no trial searched, as every trial ran them (``fixed_values``).
    ``actions`` are the diff from ``current`` to ``config``: one ``SetVariables`` of every changed
    scope (``scopes``), or none; ``changes`` what it does (a live node's dry-run plan, filled in by
    whoever asks it).
    """

    config: Config
    train_score: float
    val_score: float | None
    study_name: str
    storage: str | None
    trials: int
    infeasible: int = 0
    failed: int = 0
    apply_failed: int = 0
    first_apply_error: str | None = None
    val_error: str | None = None
    failures: int = 0
    first_error: str | None = None
    ran: int = 0
    fixed: Config = field(default_factory=dict)
    actions: list[SetVariables] = field(default_factory=list)
    changes: list = field(default_factory=list)
    workers: list = field(default_factory=list)  # several workers: per worker, the study's trials it ran
    trials_per_second: float | None = None  # several workers: trials the study finished per second of the search

    @property
    def best_score(self) -> float:
        return self.train_score


class Optimizer:
    """Search ``spaces`` (scope -> VariableSpace) with optuna; TPE by default, seedable."""

    def __init__(
        self,
        spaces: Mapping[str, VariableSpace],
        *,
        seed: int | None = None,
        sampler=None,
        storage: str | None = None,
        study_name: str = "otpy",
        direction: str = "maximize",
        progress: bool = True,
        worker: str | None = None,
        heartbeat: int | None = None,
        recover: Callable[[Any, str, Exception], bool] | None = None,
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spaces = dict(spaces)
        # Several workers on one study: TPE's constant liar keeps them from sampling the same point
        # while their trials run (each worker has its own seed, see ``workers.worker_seed``).
        self.sampler = sampler or optuna.samplers.TPESampler(seed=seed, constant_liar=worker is not None)
        self.storage = storage
        self.study_name = study_name
        self.direction = direction
        self.progress = progress
        self.worker = worker  # this process's name among a study's workers: on each trial it runs
        self.heartbeat = heartbeat  # seconds: a worker's running trials beat, a dead one's are failed
        self.recover = recover  # a shared study's database gone mid-search: wait for it, go on (or False)

    def distributions(self) -> dict[str, Any]:
        """The search space: one optuna distribution per settable variable, named ``SCOPE.NAME``."""
        return {f"{scope}.{name}": dist
                for scope, space in self.spaces.items()
                for name, dist in space.to_optuna_distributions().items()}

    def defaults(self) -> Config:
        """Every settable variable's default, per scope (what a node runs before anything is set)."""
        return {scope: {name: variable.default for name, variable in space.settable.items()
                        if variable.default is not None}
                for scope, space in self.spaces.items()}

    def open_study(self, baseline: Config | None = None):
        """The study, created or resumed; a new one's first trial is ``baseline`` (the defaults)."""
        import optuna

        storage = f"sqlite:///{self.storage}" if self.storage and "://" not in self.storage else self.storage
        if storage and self.heartbeat:
            import warnings

            with warnings.catch_warnings():  # optuna calls its heartbeat experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(storage, heartbeat_interval=self.heartbeat,
                                                     grace_period=4 * self.heartbeat,
                                                     engine_kwargs={"pool_pre_ping": True})  # a restarted server
        study = optuna.create_study(storage=storage, study_name=self.study_name, sampler=self.sampler,
                                    direction=self.direction, load_if_exists=True)
        if not study.trials:
            searched = self.distributions()
            first = {f"{scope}.{name}": value for scope, values in (baseline or self.defaults()).items()
                     for name, value in values.items() if f"{scope}.{name}" in searched}
            study.enqueue_trial(first, skip_if_exists=True)
        return study

    def compile(
        self,
        program: Callable[..., Mapping[str, Any]],
        trainset: Iterable[Example | Mapping[str, Any]],
        metric: Callable[[Any, Mapping[str, Any]], float],
        *,
        valset: Iterable[Example | Mapping[str, Any]] | None = None,
        trials: int = 20,
        apply: Callable[[Config], Any] | None = None,
        current: Config | None = None,
        baseline: Config | None = None,
        threads: int = 1,
        after_search: Callable[[], Any] | None = None,
    ) -> CompileResult:
        """Run trials until the study has ``trials`` finished ones; return the best, its scores
        and the actions from ``current`` (default: the spaces' defaults) to it.

        ``apply(config)`` makes the live system match a trial's configuration before it is
        scored (and the best one's before it is scored on ``valset``): the trial's searched
        values, and ``current``'s values of the variables no trial searches (``fixed_values``).
        ``baseline`` is a new study's first trial (default: the defaults). ``threads``: examples
        scored at once (see ``evaluate``). ``after_search()`` runs once this process's trials are
        done, before the best is taken (several workers: wait for the others').
        """
        from optuna.trial import TrialState

        study, ran, seen, fixed = self.search(program, trainset, metric, trials=trials, apply=apply,
                                              current=current, baseline=baseline, threads=threads)
        score = lambda examples: evaluate(program, examples, metric, threads)  # noqa: E731
        if after_search is not None:
            after_search()
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if not complete:
            reasons = [t.user_attrs["failed"] for t in study.trials if "failed" in t.user_attrs]
            if reasons:
                raise OptimizeError(f"every trial failed; the first one's reason:\n{reasons[0]}")
            raise VariableError(["every trial was infeasible: the spaces' constraints cannot be met"])
        best = study.best_trial
        applied = self.validate(best.params, fixed)  # what a trial applies: the fixed values included
        config = searched_only(self.spaces, applied)  # what the result proposes: the searched values
        val_score, val_error = None, None
        if valset is not None:
            val_score, val_error = self._validate_best([_as_example(e) for e in valset], score, apply, applied, seen)
        finished = _finished(study)
        return CompileResult(
            config=config, train_score=best.value, val_score=val_score,
            study_name=self.study_name, storage=self.storage, trials=len(finished),
            infeasible=sum("infeasible" in t.user_attrs for t in finished),
            failed=sum("failed" in t.user_attrs for t in finished),
            apply_failed=sum("apply_failed" in t.user_attrs for t in finished),
            first_apply_error=seen.first_apply_error, val_error=val_error,
            failures=seen.failures, first_error=seen.first_error, ran=ran, fixed=fixed,
            actions=plan_actions(self.spaces, self.defaults() if current is None else current, config),
        )

    def search(self, program, trainset, metric, *, trials: int, apply=None, current: Config | None = None,
               baseline: Config | None = None, threads: int = 1):
        """The trials alone (``compile``'s first half; a trial worker's whole job): run them until
        the study has ``trials`` finished ones. Returns (study, trials started here, the failures
        seen, the fixed values)."""
        fixed = self.fixed_values(current)
        train = [_as_example(e) for e in trainset]
        study = self.open_study(baseline)
        seen = _Failures()
        score = lambda examples: evaluate(program, examples, metric, threads)  # noqa: E731
        ran = self._search(study, lambda trial, config: self._score(trial, config, train, score, apply, seen),
                           trials, fixed)
        return study, ran, seen, fixed

    def _search(self, study, score: Callable[[Any, Config], float], trials: int, fixed: Config) -> int:
        """optuna's own loop until the study has ``trials`` finished trials: ``score(trial,
        config)`` returns the trial's score or raises ``TrialFailed`` (told as failed, the search
        goes on); ``config`` holds the trial's values and ``fixed``. Ctrl-C fails the trial it
        stopped (user attribute ``failed``: ``interrupted``) and goes on up; so does any other
        exception, with its reason. Returns how many trials it started."""
        import optuna
        from optuna.trial import TrialState

        todo = trials - len(_finished(study))
        if todo <= 0:
            return 0
        distributions = self.distributions()
        started: list[int] = []
        share = TrialShare(trials) if self.worker is not None else None
        if share is not None and share.all_taken(study):  # other workers run the last ones
            return 0

        def objective(trial) -> float:
            started.append(trial.number)
            try:
                if share is not None:
                    trial.set_user_attr("worker", self.worker)
                    if not share.claim(study, trial):  # a trial past the study's count: pruned, this worker stops
                        study.stop()
                        raise optuna.TrialPruned("the study has its trials")
                params = {name: _suggest(trial, name, dist) for name, dist in distributions.items()}
                try:
                    config = self.validate(params, fixed)
                except VariableError as infeasible:
                    trial.set_user_attr("infeasible", infeasible.problems)
                    raise TrialFailed("infeasible") from None
                return score(trial, config)
            except KeyboardInterrupt:
                trial.set_user_attr("failed", "interrupted")
                raise
            except (TrialFailed, optuna.TrialPruned):
                raise
            except Exception as exc:  # a bug: optuna fails the trial, the exception goes on up
                trial.set_user_attr("failed", _reason(exc))
                raise

        bar = self.progress and sys.stderr.isatty()
        lines = _ProgressLines(trials, len(_finished(study)), shared=share is not None)
        callbacks = [lines] if self.progress and (not bar or share is not None) else []
        callbacks += [share.stop_when_done] if share is not None else []
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are ours to report, with reasons
        try:
            while True:
                try:
                    study.optimize(objective, n_trials=None if share else todo, catch=(TrialFailed,),
                                   callbacks=callbacks, show_progress_bar=bar and share is None)
                    break
                except Exception as exc:  # a shared study's database away: wait for it (bounded), go on
                    if share is None or not self._recovered(study, exc):
                        raise
        except BaseException as exc:
            try:
                states = {trial.number: trial.state for trial in study.trials}
            except Exception:  # the database gone: the first error is the one to report
                states = {}
            for number in started:  # interrupted between optuna's steps: still RUNNING, fail it here
                if states.get(number) == TrialState.RUNNING:
                    with contextlib.suppress(Exception):  # the first error is the one to report
                        study.tell(number, state=TrialState.FAIL)
            if not isinstance(exc, KeyboardInterrupt) and isinstance(exc.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from exc  # Ctrl-C while optuna told a trial: its cleanup raised another
            raise
        finally:
            optuna.logging.set_verbosity(verbosity)
        return len(started) - (share.surplus if share else 0)

    def _recovered(self, study, exc: Exception) -> bool:
        """After the database went away mid-trial: ``recover`` (``study_db.recover``) waits for it and
        fails this worker's trials left RUNNING (their results could not be stored); False for another error."""
        return self.recover is not None and self.recover(study, self.worker, exc)

    def _score(self, trial, config: Config, train: list[Example], score, apply, seen: "_Failures") -> float:
        """One trial's score; ``TrialFailed`` with the reason in a user attribute when ``apply``
        could not make the system run it (e.g. the node refused it: a program that fails to start
        with it) or every call failed."""
        if apply is not None:
            try:
                apply(config)
            except Exception as exc:
                reason = seen.apply_error(exc)
                trial.set_user_attr("apply_failed", reason)
                trial.set_user_attr("failed", f"could not apply it: {reason}")
                raise TrialFailed("not applied") from None
        evaluation = seen.add(score(train))
        if evaluation.failed:
            trial.set_user_attr("failed", evaluation.first_error)
            raise TrialFailed("failed")
        return evaluation.score

    @staticmethod
    def _validate_best(valset: list[Example], score, apply, config: Config,
                       seen: "_Failures") -> tuple[float | None, str | None]:
        """The best configuration's valset score, or None and why (it could not be applied
        again, or every call failed): a missing held-out score is reported, never raised."""
        if apply is not None:
            try:
                apply(config)
            except Exception as exc:
                return None, f"the best configuration could not be applied again: {_reason(exc)}"
        evaluation = seen.add(score(valset))
        if evaluation.failed:
            return None, f"every validation call failed; the first:\n{evaluation.first_error}"
        return evaluation.score, None

    def fixed_values(self, current: Config | None = None) -> Config:
        """The values trials keep for the variables no trial searches (see ``fixed_values``)."""
        return fixed_values(self.spaces, current)

    def validate(self, params: Mapping[str, Any], fixed: Config | None = None) -> Config:
        """Flat ``SCOPE.NAME`` params to a checked configuration per scope (defaults, composites);
        ``fixed``: values of variables the params do not hold (else their defaults)."""
        per_scope: Config = {scope: dict((fixed or {}).get(scope, {})) for scope in self.spaces}
        for key, value in params.items():
            scope, _, name = key.rpartition(".")
            per_scope.setdefault(scope, {})[name] = value
        problems, config = [], {}
        for scope, values in per_scope.items():
            try:
                config[scope] = self.spaces[scope].validate(values)
            except VariableError as error:
                problems += [f"scope {scope!r}: {problem}" for problem in error.problems]
        if problems:
            raise VariableError(problems)
        return config


class TrialFailed(Exception):
    """A trial that produced no score (infeasible, not applied, every call failed): optuna's
    loop tells it as failed and goes on (``catch``); the reason is on the trial."""


def _suggest(trial, name: str, distribution) -> Any:
    """The trial's value for one parameter, through optuna's public ``suggest_*``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log,
                                   step=distribution.step)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, log=distribution.log,
                                 step=distribution.step)
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    raise TypeError(f"{name}: no optuna suggest for {type(distribution).__name__}")


class _ProgressLines:
    """Progress where no bar belongs (stderr is a file or a pipe): one plain line per trial,
    no carriage returns (optuna's callback)."""

    def __init__(self, total: int, done: int, shared: bool = False) -> None:
        self.total, self.done, self.shared = total, done, shared  # shared: the study's count, every worker's trials

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.state == TrialState.PRUNED:  # a worker's trial past the study's count (``trial_share``)
            return
        self.done = len(_finished(study)) if self.shared else self.done + 1
        if trial.state == TrialState.COMPLETE:
            shown = f"score {trial.value:.4f}"
        else:
            shown = "infeasible" if "infeasible" in trial.user_attrs else (
                "not applied" if "apply_failed" in trial.user_attrs else "failed")
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:
            best = "-"
        print(f"trial {self.done}/{self.total}: {shown}; best {best}", file=sys.stderr, flush=True)


def fixed_values(spaces: Mapping[str, VariableSpace], current: Config | None = None) -> Config:
    """The values of the settable variables no trial searches (documents), per scope: those
    ``current`` holds (what the live system runs), else their defaults. ``OptimizeError`` when
    one of ``current``'s does not fit its declaration (the live system runs another topology)."""
    fixed: Config = {}
    problems = []
    for scope, space in spaces.items():
        searched = space.to_optuna_distributions()
        have = (current or {}).get(scope, {})
        for name, variable in space.settable.items():
            if name in searched or (value := have.get(name, variable.default)) is None:
                continue
            if (problem := variable.problem(value)) is not None:
                problems.append(f"{scope}.{problem}")
            else:
                fixed.setdefault(scope, {})[name] = variable.normalize(value)
    if problems:
        raise OptimizeError("the running node holds values of variables no trial searches that the topology "
                            f"refuses: {'; '.join(problems)}; no trial could run them")
    return fixed


def fixed_digest(spaces: Mapping[str, VariableSpace], current: Config | None) -> str | None:
    """A short digest of ``fixed_values(spaces, current)`` when they are not the defaults (a
    running node with a document set), else None: a study's name carries it (``study_name``), so
    trials scored with other fixed values are never mixed in one study."""
    fixed = fixed_values(spaces, current)
    if fixed == fixed_values(spaces, None):
        return None
    text = json.dumps(fixed, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def searched_only(spaces: Mapping[str, VariableSpace], config: Config) -> Config:
    """``config`` without the settable variables no optimizer searches (a ``document``: set by
    hand, e.g. a saved DSPy program): the optimizer has no value of its own for them, so a plan
    leaves the live system's value as it is. A scope left with nothing is left out."""
    kept = {scope: {name: value for name, value in values.items()
                    if scope not in spaces or name not in spaces[scope].settable
                    or getattr(spaces[scope].settable[name], "searchable", True)}
            for scope, values in config.items()}
    return {scope: values for scope, values in kept.items() if values or not config[scope]}


def config_diff(spaces: Mapping[str, VariableSpace], current: Config, target: Config, *,
                every_value: bool = False) -> Config:
    """Per scope, the searched settable values of ``target`` that ``current`` does not hold
    (composites are computed by the registry, never set; a variable no optimizer searches keeps
    the value it has, unless ``every_value``: a scratch node's trial sets them too). Empty when
    the two agree."""
    diff: Config = {}
    for scope, values in (target if every_value else searched_only(spaces, target)).items():
        settable = spaces[scope].settable if scope in spaces else values
        have = current.get(scope, {})
        changed = {name: value for name, value in values.items()
                   if name in settable and (name not in have or have[name] != value)}
        if changed:
            diff[scope] = changed
    return diff


def plan_actions(spaces: Mapping[str, VariableSpace], current: Config, target: Config, *,
                 every_value: bool = False) -> list[SetVariables]:
    """The minimal actions from ``current`` to ``target``: one ``SetVariables`` carrying the changed
    values of every scope (``scopes``), nothing else; none when nothing changed. One message, so
    the node checks, reconciles and stores the whole configuration as one write: a scope it
    refuses leaves the others as they were (the node reconciles the processes the values decide)."""
    diff = config_diff(spaces, current, target, every_value=every_value)
    return [SetVariables(0, "", {}, scopes=diff)] if diff else []


def action_config(action: SetVariables) -> Config:
    """The values a ``SetVariables`` sets, per scope (its ``scope``/``values`` and its ``scopes``,
    merged as the node merges them)."""
    config = {scope: dict(values) for scope, values in action.scopes.items()}
    if action.scope or action.values:
        config[action.scope] = {**config.get(action.scope, {}), **action.values}
    return config


class _Failures:
    """The failed calls of one compile: how many, and the first one's traceback; and the first
    reason a trial's configuration could not be applied."""

    def __init__(self) -> None:
        self.failures, self.first_error, self.first_apply_error = 0, None, None

    def apply_error(self, exc: Exception) -> str:
        reason = _reason(exc)
        self.first_apply_error = self.first_apply_error or reason
        return reason

    def add(self, evaluation: Evaluation) -> Evaluation:
        self.failures += evaluation.failures
        self.first_error = self.first_error or evaluation.first_error
        return evaluation


def _reason(exc: BaseException) -> str:
    """Why an action failed, in one line: an ``OptimizeError``'s message says it; others are named."""
    return str(exc) if isinstance(exc, OptimizeError) else f"{type(exc).__name__}: {exc}"


def _finished(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
