"""Agents of the tabular example: a manager plans impute -> scale -> select -> model per goal.

Two goals, two data sets that ship inside scikit-learn (nothing is downloaded): ``classify``
the wines of ``load_wine`` (3 cultivars, 13 features), ``regress`` the ``load_diabetes``
disease progression (10 features). A tenth of the cells are blanked (seeded), so imputing is
real work. Each data set is split once, seeded, into three disjoint parts: ``train`` (60%: what
the agents fit on), ``trial`` (20%: what the optimizer scores its trials on, ``examples``) and
``held_out`` (20%: what the best configuration is scored on, ``validation``; no trial saw it).

Every step is a program, and every program takes rows and returns rows (``{"rows": [[...]]}``,
``None`` for a missing cell), the model returns ``{"predictions": [...]}``: the stages compose.
A step's agent is fitted in ``setup`` on the training split as the steps before it transform it
(``args.upstream``: their programs, refitted in its own process from the same variables), with
its knobs from its configuration (the variables of scope ``pool``, where the manager starts it),
and refitted in ``on_config`` when one of those knobs changes.

``Manager`` is otpy's ``ManagerProgram`` with one rule added (``wired``): a step named in
``args.optional`` runs only while its ``bool`` variable is true, and each program step gets
``goal`` and ``upstream`` as its agent's args.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import numpy as np

# Imported at module level, so otpy's zygote loads scikit-learn once: an agent the manager
# starts is a fork, not a fresh import.
from sklearn import decomposition, ensemble, feature_selection, impute, linear_model, neighbors, preprocessing
from sklearn.datasets import load_diabetes, load_wine

import otpy
from otpy.optimize.manager import program_of
from otpy.optimize.pipeline import PlanError, parse_step

DATA = {"classify": load_wine, "regress": load_diabetes}  # goal -> scikit-learn loader
SEED = 0
MISSING = 0.1  # the share of cells blanked


# --- the data (pure, cached per process) -------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One goal's data: features (NaN where blanked) and targets, three disjoint parts."""

    train_X: np.ndarray
    train_y: np.ndarray
    trial_X: np.ndarray
    trial_y: np.ndarray
    held_X: np.ndarray
    held_y: np.ndarray


@lru_cache(maxsize=None)
def split(goal: str) -> Split:
    """``goal``'s data set, blanked and split 60/20/20 (seeded: the same in every process)."""
    if goal not in DATA:
        raise ValueError(f"goal: got {goal!r}; expected one of {', '.join(sorted(DATA))}")
    X, y = DATA[goal](return_X_y=True)
    rng = np.random.default_rng(SEED)
    X = np.where(rng.random(X.shape) < MISSING, np.nan, X)
    order = rng.permutation(len(X))
    a, b = int(0.6 * len(X)), int(0.8 * len(X))
    train, trial, held = order[:a], order[a:b], order[b:]
    return Split(X[train], y[train], X[trial], y[trial], X[held], y[held])


def as_rows(X: np.ndarray, digits: int | None = None) -> list[list[float | None]]:
    """An array as rows of plain floats (rounded to ``digits``), ``None`` for a missing cell:
    what a call carries."""
    return [[None if np.isnan(v) else float(v) if digits is None else round(float(v), digits) for v in row] for row in X]


def as_array(rows) -> np.ndarray:
    """Rows from a call (``None`` for a missing cell) as a float array (NaN for missing)."""
    X = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    if X.ndim != 2:
        raise ValueError(f"rows: a list of rows of numbers, got shape {X.shape}")
    return X


def _examples(goal: str, X: np.ndarray, y: np.ndarray) -> list[otpy.Example]:
    label = int if goal == "classify" else float
    return [otpy.Example(inputs={"goal": goal, "rows": as_rows(X[i:i + 1])}, label=label(y[i])) for i in range(len(X))]


def examples() -> list[otpy.Example]:
    """What the optimizer's trials are scored on: the ``trial`` part of both goals, one row each."""
    return [e for goal in DATA for e in _examples(goal, split(goal).trial_X, split(goal).trial_y)]


def validation() -> list[otpy.Example]:
    """Held out: the ``held_out`` part of both goals (the best configuration is scored on it)."""
    return [e for goal in DATA for e in _examples(goal, split(goal).held_X, split(goal).held_y)]


@lru_cache(maxsize=None)
def target_spread(goal: str) -> float:
    """The standard deviation of the training targets: a regression error's scale."""
    return float(np.std(split(goal).train_y))


def score(example: otpy.Example, prediction: Mapping[str, Any]) -> float:
    """1 for a right class; for a regression, 1 minus the error in standard deviations of the
    target (0 when off by one or more). Both goals score 0..1, so one mean ranks a configuration."""
    predicted = prediction["predictions"][0]
    if example.inputs["goal"] == "classify":
        return float(predicted == example.label)
    return max(0.0, 1.0 - abs(predicted - example.label) / target_spread("regress"))


# --- the steps ---------------------------------------------------------------------------


def step_class(program: str) -> type["Step"]:
    """The class a ``module:attr`` program names."""
    module, _, attr = program.partition(":")
    return getattr(importlib.import_module(module), attr)


def fitted_input(goal: str, upstream: list[str], config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The training split as it reaches a step: transformed by each ``upstream`` program, each
    fitted (with its knobs from ``config``) on what the one before it gave."""
    data = split(goal)
    X, y = data.train_X, data.train_y
    for program in upstream:
        X = step_class(program).make(config, goal).fit(X, y).transform(X)
    return X, y


class Step(otpy.Program):
    """A pipeline step's agent. ``make(config, goal)`` builds its scikit-learn estimator from
    its ``KNOBS`` (variables of scope ``pool``). Args: ``goal`` and ``upstream`` (the programs of
    the steps before it, given by the manager)."""

    KNOBS: tuple[str, ...] = ()

    def setup(self, args, config):
        self.goal = args["goal"]
        self.upstream = list(args.get("upstream", ()))
        self.knobs = None
        self.fit(config)

    def on_config(self, config):
        """New values: refit when a knob of this step or of one before it changed (calls wait)."""
        self.fit(config)

    def fit(self, config):
        knobs = knobs_of([type(self), *map(step_class, self.upstream)], config)
        if knobs == self.knobs:
            return
        X, y = fitted_input(self.goal, self.upstream, config)
        self.estimator, self.knobs = self.make(config, self.goal).fit(X, y), knobs

    @classmethod
    def make(cls, config: Mapping[str, Any], goal: str):
        raise NotImplementedError


def knobs_of(classes, config: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the knobs ``classes`` read: what a fit depends on besides the programs."""
    return {name: config.get(name) for cls in classes for name in cls.KNOBS}


class Transform(Step):
    def forward(self, rows):
        return {"rows": as_rows(self.estimator.transform(as_array(rows)), digits=4)}


class Model(Step):
    def forward(self, rows):
        predicted = self.estimator.predict(as_array(rows))
        kind = int if self.goal == "classify" else lambda v: round(float(v), 2)
        return {"predictions": [kind(v) for v in predicted]}


class MeanImputer(Transform):
    @classmethod
    def make(cls, config, goal):
        return impute.SimpleImputer(strategy="mean")


class MedianImputer(Transform):
    @classmethod
    def make(cls, config, goal):
        return impute.SimpleImputer(strategy="median")


class KNNImputer(Transform):
    KNOBS = ("impute_k",)

    @classmethod
    def make(cls, config, goal):
        return impute.KNNImputer(n_neighbors=int(config.get("impute_k", 5)))


class StandardScaler(Transform):
    @classmethod
    def make(cls, config, goal):
        return preprocessing.StandardScaler()


class MinMaxScaler(Transform):
    @classmethod
    def make(cls, config, goal):
        return preprocessing.MinMaxScaler()


class RobustScaler(Transform):
    @classmethod
    def make(cls, config, goal):
        return preprocessing.RobustScaler()


class SelectKBest(Transform):
    """The ``k_features`` features with the highest F statistic against the target."""

    KNOBS = ("k_features",)

    @classmethod
    def make(cls, config, goal):
        score = feature_selection.f_classif if goal == "classify" else feature_selection.f_regression
        return feature_selection.SelectKBest(score, k=min(int(config.get("k_features", 6)), n_features(goal)))


class PCA(Transform):
    """The first ``k_features`` principal components."""

    KNOBS = ("k_features",)

    @classmethod
    def make(cls, config, goal):
        return decomposition.PCA(n_components=min(int(config.get("k_features", 6)), n_features(goal)), random_state=SEED)


def n_features(goal: str) -> int:
    return split(goal).train_X.shape[1]


class LogisticRegression(Model):
    KNOBS = ("C",)

    @classmethod
    def make(cls, config, goal):
        return linear_model.LogisticRegression(C=float(config.get("C", 1.0)), max_iter=1000)


class RandomForestClassifier(Model):
    KNOBS = ("n_estimators", "max_depth")

    @classmethod
    def make(cls, config, goal):
        return ensemble.RandomForestClassifier(n_estimators=int(config.get("n_estimators", 50)),
                                               max_depth=int(config.get("max_depth", 4)), random_state=SEED)


class KNeighborsClassifier(Model):
    KNOBS = ("k",)

    @classmethod
    def make(cls, config, goal):
        return neighbors.KNeighborsClassifier(n_neighbors=int(config.get("k", 5)))


class Ridge(Model):
    KNOBS = ("alpha",)

    @classmethod
    def make(cls, config, goal):
        return linear_model.Ridge(alpha=float(config.get("alpha", 1.0)))


class RandomForestRegressor(Model):
    KNOBS = ("n_estimators", "max_depth")

    @classmethod
    def make(cls, config, goal):
        return ensemble.RandomForestRegressor(n_estimators=int(config.get("n_estimators", 50)),
                                              max_depth=int(config.get("max_depth", 4)), random_state=SEED)


class KNeighborsRegressor(Model):
    KNOBS = ("k",)

    @classmethod
    def make(cls, config, goal):
        return neighbors.KNeighborsRegressor(n_neighbors=int(config.get("k", 5)))


# --- the manager -------------------------------------------------------------------------


def wired(steps: list[Any], goal: str, config: Mapping[str, Any], optional: Mapping[str, str]) -> list[Any]:
    """The declared ``steps`` of ``goal`` as they run now: without a step whose ``optional``
    variable (step -> a ``bool`` variable's name) is false, and each program step's args with
    ``goal`` and ``upstream`` (the programs of the program steps kept before it).

    >>> wired([{"step": "scale", "program": "a:B"}, {"step": "model", "program": "m"}],
    ...       "classify", {"m": "a:M", "use_scale": False}, {"scale": "use_scale"})
    [{'step': 'model', 'program': 'm', 'args': {'goal': 'classify', 'upstream': []}}]
    """
    kept, upstream = [], []
    for raw in steps:
        step = parse_step(raw)
        if step.name in optional and not switched_on(step.name, optional[step.name], config):
            continue
        program = program_of(step, config)
        if program is None:
            kept.append(raw)  # a named agent: called as it is
            continue
        kept.append({**raw, "args": {**step.args, "goal": goal, "upstream": list(upstream)}})
        upstream.append(program)
    return kept


def switched_on(step: str, variable: str, config: Mapping[str, Any]) -> bool:
    """The value of the ``bool`` variable that keeps an optional step; ``PlanError`` naming it
    when the manager has no such variable (a typo would otherwise drop or keep it silently)."""
    value = config.get(variable)
    if not isinstance(value, bool):
        found = "is not one of the manager's variables" if variable not in config else f"is {value!r}, not a bool"
        raise PlanError(f"args.optional.{step}: variable {variable!r} {found}: declare it (type bool) in a scope "
                        "of the manager, e.g. [variables.global]")
    return value


def optional_steps(args: Mapping[str, Any]) -> dict[str, str]:
    """``args.optional`` checked at setup: a table of step name -> variable name.

    >>> optional_steps({"optional": {"select": 1}})
    Traceback (most recent call last):
    otpy.optimize.pipeline.PlanError: args.optional.select: the name of a bool variable, got 1
    """
    optional = args.get("optional", {})
    if not isinstance(optional, Mapping):
        raise PlanError(f"args.optional: a table of step = \"bool variable\", got {optional!r}")
    for step, variable in optional.items():
        if not (isinstance(variable, str) and variable):
            raise PlanError(f"args.optional.{step}: the name of a bool variable, got {variable!r}")
    return dict(optional)


class Manager(otpy.ManagerProgram):
    """Plans by goal (``args.plans``), keeps the optional steps whose variable is true, and
    starts an agent per (step, program, args) under ``args.supervisor``."""

    def setup(self, args, config):
        self.optional = optional_steps(args)
        super().setup(args, config)

    def plan(self, goal, config):
        return wired(super().plan(goal, config), goal, config, self.optional)
