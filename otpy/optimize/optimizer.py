"""The optimizer: optuna searches the variable spaces against a metric on a dataset.

DSPy's shape: ``compile(program, trainset, metric, valset=None, trials=N)`` with
``metric(example, prediction) -> float``. What makes it otpy's: before each trial, ``apply``
turns the live system into that trial's configuration (starting the agent programs a
``module`` variable names, setting variables in the registry), so every trial runs on real
agents; and the result carries the actions that turn the running system into the best one.

Parameters are named ``SCOPE.NAME`` (``global.classifier``, ``svm.C``). A configuration that
breaks a space's constraints is an infeasible trial (told to optuna as failed), not a crash.
With ``storage`` (an SQLite path), the study is kept in optuna's RDB storage: a new
``compile`` with the same study name resumes where the last one stopped, and
``optuna-dashboard sqlite:///PATH`` can open it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..variables.scopes import VariableSpace
from ..variables.types import VariableError

Config = dict[str, dict[str, Any]]  # scope -> name -> value


@dataclass(frozen=True)
class Example:
    """One item of a dataset: what the program is called with, and what a metric compares to."""

    inputs: dict[str, Any]
    label: Any = None


@dataclass(frozen=True)
class CompileResult:
    best_config: Config
    best_score: float
    study_name: str
    storage: str | None
    trials: int  # finished trials in the study (this run and earlier ones)
    infeasible: int
    actions: list = field(default_factory=list)


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
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spaces = dict(spaces)
        self.sampler = sampler or optuna.samplers.TPESampler(seed=seed)
        self.storage = storage
        self.study_name = study_name
        self.direction = direction
        self.progress = progress

    def distributions(self) -> dict[str, Any]:
        """The search space: one optuna distribution per settable variable, named ``SCOPE.NAME``."""
        return {f"{scope}.{name}": dist
                for scope, space in self.spaces.items()
                for name, dist in space.to_optuna_distributions().items()}

    def defaults(self) -> dict[str, Any]:
        params = {}
        for scope, space in self.spaces.items():
            for name, variable in space.settable.items():
                if variable.default is not None:
                    params[f"{scope}.{name}"] = variable.default
        return params

    def open_study(self):
        import optuna

        storage = f"sqlite:///{self.storage}" if self.storage and "://" not in self.storage else self.storage
        study = optuna.create_study(storage=storage, study_name=self.study_name, sampler=self.sampler,
                                    direction=self.direction, load_if_exists=True)
        if not study.trials:
            study.enqueue_trial(self.defaults(), skip_if_exists=True)  # the baseline goes first
        return study

    def compile(
        self,
        program: Callable[..., Mapping[str, Any]],
        trainset: Iterable[Example | Mapping[str, Any]],
        metric: Callable[[Any, Mapping[str, Any]], float],
        *,
        valset: Iterable[Example | Mapping[str, Any]] | None = None,
        trials: int = 20,
        apply: Callable[[Config], None] | None = None,
        plan_actions: Callable[[Config], list] | None = None,
    ) -> CompileResult:
        """Run trials until the study has ``trials`` finished ones; return the best and its actions.

        ``apply(config)`` makes the live system match a trial's configuration before it is
        scored; ``plan_actions(best_config)`` lists what turns the running system into the best.
        """
        from optuna.trial import TrialState

        study = self.open_study()
        scored = [_as_example(e) for e in (valset if valset is not None else trainset)]
        distributions = self.distributions()
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
        for number in range(len(finished), trials):
            trial = study.ask(distributions)
            try:
                config = self.validate(trial.params)
            except VariableError as infeasible:
                trial.set_user_attr("infeasible", infeasible.problems)
                study.tell(trial, state=TrialState.FAIL)
                self._show(number + 1, trials, None, study)
                continue
            if apply is not None:
                apply(config)
            score = evaluate(program, scored, metric)
            study.tell(trial, score)
            self._show(number + 1, trials, score, study)
        if self.progress:
            print(file=sys.stderr)
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if not complete:
            raise VariableError(["every trial was infeasible: the spaces' constraints cannot be met"])
        best = study.best_trial
        best_config = self.validate(best.params)
        return CompileResult(
            best_config=best_config,
            best_score=best.value,
            study_name=self.study_name,
            storage=self.storage,
            trials=len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]),
            infeasible=len([t for t in study.trials if t.state == TrialState.FAIL]),
            actions=plan_actions(best_config) if plan_actions else [],
        )

    def validate(self, params: Mapping[str, Any]) -> Config:
        """Flat ``SCOPE.NAME`` params to a checked configuration per scope (defaults, composites)."""
        per_scope: Config = {scope: {} for scope in self.spaces}
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

    def _show(self, done: int, total: int, score: float | None, study) -> None:
        if not self.progress:
            return
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:
            best = "-"
        shown = "infeasible" if score is None else f"{score:.4f}"
        print(f"\rtrial {done}/{total}  score {shown}  best {best}   ", end="", file=sys.stderr, flush=True)


def evaluate(program, examples: list[Example], metric) -> float:
    """Mean metric over ``examples``; an example whose call raises scores 0."""
    if not examples:
        raise ValueError("the dataset is empty")
    total = 0.0
    for example in examples:
        try:
            prediction = program(**example.inputs)
        except Exception:
            continue
        value = float(metric(example, prediction))
        total += 0.0 if math.isnan(value) else value
    return total / len(examples)


def _as_example(item) -> Example:
    if isinstance(item, Example):
        return item
    if isinstance(item, Mapping) and "inputs" in item:
        return Example(inputs=dict(item["inputs"]), label=item.get("label"))
    raise TypeError(f"an example is an otpy.Example or a mapping with 'inputs' (and 'label'); got {item!r}")
