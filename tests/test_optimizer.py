"""The optimizer on optuna: search space, infeasible trials, resuming a stored study."""

from __future__ import annotations

import pytest

from otpy.optimize.optimizer import Example, Optimizer
from otpy.variables.scopes import VariableSpace
from otpy.variables.types import FloatVariable, ModuleVariable

pytestmark = pytest.mark.timeout(60)


def spaces():
    glob = VariableSpace("global")
    glob.add(ModuleVariable(name="solver", modules=["pkg.a:Bad", "pkg.a:Good"], default="pkg.a:Bad"))
    local = VariableSpace("solver")
    local.add(FloatVariable(name="x", low=0.0, high=1.0, default=0.1))
    return {"global": glob, "solver": local}


TRAIN = [Example(inputs={"n": n}, label=n) for n in range(5)]


def make_program(state):
    def program(n):
        good = state["global"]["solver"] == "pkg.a:Good"
        return {"answer": n if good else -1, "x": state["solver"]["x"]}
    return program


def metric(example, prediction):
    return float(prediction["answer"] == example.label) - abs(prediction["x"] - 0.7)


def test_finds_the_module_and_value_that_score_best_and_reports_the_config():
    state = {}
    result = Optimizer(spaces(), seed=1, progress=False).compile(
        make_program(state), TRAIN, metric, trials=25, apply=state.update)
    assert result.best_config["global"]["solver"] == "pkg.a:Good"
    assert abs(result.best_config["solver"]["x"] - 0.7) < 0.2
    assert result.trials == 25


def test_the_first_trial_is_the_baseline_of_defaults():
    seen = []
    Optimizer(spaces(), seed=1, progress=False).compile(
        lambda n: {"answer": n, "x": 0.7}, TRAIN, metric, trials=1, apply=seen.append)
    assert seen == [{"global": {"solver": "pkg.a:Bad"}, "solver": {"x": 0.1}}]


def test_constraints_make_trials_infeasible_not_a_crash():
    sp = spaces()
    sp["solver"].add_constraint(lambda c: c["x"] < 0.5, "x below 0.5")
    state = {}
    result = Optimizer(sp, seed=2, progress=False).compile(
        make_program(state), TRAIN, metric, trials=15, apply=state.update)
    assert result.infeasible > 0
    assert result.best_config["solver"]["x"] < 0.5


def test_an_interrupted_study_resumes_from_its_storage(tmp_path):
    db = str(tmp_path / "study.db")
    state = {}
    calls = []

    def apply(config):
        calls.append(config)
        state.update(config)
        if len(calls) == 4:
            raise KeyboardInterrupt  # interrupted in the middle of trial 4

    with pytest.raises(KeyboardInterrupt):
        Optimizer(spaces(), seed=3, storage=db, study_name="s", progress=False).compile(
            make_program(state), TRAIN, metric, trials=10, apply=apply)
    calls.clear()
    result = Optimizer(spaces(), seed=3, storage=db, study_name="s", progress=False).compile(
        make_program(state), TRAIN, metric, trials=10, apply=state.update)
    assert result.trials == 10
    import optuna

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert len([t for t in study.trials if t.state.is_finished()]) >= 10


def test_search_space_maps_each_variable_to_an_optuna_distribution():
    import optuna

    dists = Optimizer(spaces(), progress=False).distributions()
    assert isinstance(dists["global.solver"], optuna.distributions.CategoricalDistribution)
    assert isinstance(dists["solver.x"], optuna.distributions.FloatDistribution)
