"""The tabular example (examples/tabular) end to end: its data splits, the manager's plan rule
(optional steps, upstream programs), a node from its topology answering both goals, `otpy vars
set` of a step's program changing the process that serves the step, a knob refitting in
on_config, and a tiny optimization whose result, applied, is what the manager runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import otpy
from examples.tabular import agents
from examples.tabular.agents import wired
from otpy.optimize.live_system import LiveSystem, optimize_topology, spaces_of
from otpy.optimize.pipeline import PlanError
from otpy.topology.load import parse_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "examples", "tabular", "topology.toml")
P = "examples.tabular.agents:"
pytestmark = pytest.mark.timeout(120)


def short_name(prefix: str) -> str:
    """A node name unique in this test session (its runtime folder is the session's), short:
    the manager's agent ids are long, and an agent's socket path must fit AF_UNIX's 107 bytes."""
    short_name.count += 1
    return f"{prefix}{os.getpid()}{short_name.count}"


short_name.count = 0


def topology(name: str, small: bool = False):
    text = open(PATH).read().replace('name = "tabular"', f'name = "{name}"')
    if small:  # a few examples per goal: a trial in well under a second
        text = text.replace(f'"{P}examples"', '"tests.test_tabular_example:few_examples"')
        text = text.replace(f'"{P}validation"', '"tests.test_tabular_example:few_validation"')
    return parse_topology(text, source=PATH, base_dir=ROOT)


def few_examples():
    return _few(agents.examples())


def few_validation():
    return _few(agents.validation())


def _few(examples, n=6):
    return [e for goal in agents.DATA for e in [x for x in examples if x.inputs["goal"] == goal][:n]]


def held_out(goal: str, n: int = 2) -> dict:
    return {"goal": goal, "rows": agents.as_rows(agents.split(goal).held_X[:n])}


def steps(reply) -> dict[str, dict]:
    return {entry["step"]: entry for entry in reply["trace"]}


# --- the data and the plan rule (pure) ------------------------------------------------------


@pytest.mark.parametrize("goal", sorted(agents.DATA))
def test_the_three_splits_are_disjoint_and_hold_every_row(goal):
    data = agents.split(goal)
    parts = [data.train_X, data.trial_X, data.held_X]
    rows = [{tuple(np.nan_to_num(row, nan=-1e9)) for row in part} for part in parts]
    total = agents.DATA[goal](return_X_y=True)[0].shape[0]
    assert sum(len(part) for part in parts) == total
    assert sum(len(r) for r in rows) == len(set().union(*rows)) == total  # no row in two parts
    assert np.isnan(data.train_X).any()  # a tenth blanked: imputing is real work


def test_the_optimizer_sets_have_both_goals_and_share_no_example():
    trial, held = agents.examples(), agents.validation()
    assert {e.inputs["goal"] for e in trial} == {e.inputs["goal"] for e in held} == set(agents.DATA)
    key = lambda e: (e.inputs["goal"], str(e.inputs["rows"]))  # noqa: E731
    assert not {key(e) for e in trial} & {key(e) for e in held}


def test_the_metric_scores_both_goals_from_0_to_1():
    right = otpy.Example(inputs={"goal": "classify"}, label=2)
    assert agents.score(right, {"predictions": [2]}) == 1.0 and agents.score(right, {"predictions": [1]}) == 0.0
    close = otpy.Example(inputs={"goal": "regress"}, label=100.0)
    spread = agents.target_spread("regress")
    assert agents.score(close, {"predictions": [100.0]}) == 1.0
    assert agents.score(close, {"predictions": [100.0 + spread / 2]}) == pytest.approx(0.5)
    assert agents.score(close, {"predictions": [100.0 - 3 * spread]}) == 0.0


PLAN = [{"step": "impute", "program": "imputer"}, {"step": "scale", "program": "scaler"},
        {"step": "select", "program": "selector"}, {"step": "model", "program": "model_classify"}]
CONFIG = {"imputer": P + "MeanImputer", "scaler": P + "MinMaxScaler", "selector": P + "PCA",
          "model_classify": P + "Ridge", "use_scale": True, "use_select": True}
OPTIONAL = {"scale": "use_scale", "select": "use_select"}


def test_a_plan_keeps_an_optional_step_while_its_variable_is_true_and_gives_each_step_its_upstream():
    every = wired(PLAN, "classify", CONFIG, OPTIONAL)
    assert [s["step"] for s in every] == ["impute", "scale", "select", "model"]
    assert [s["args"]["upstream"] for s in every] == [
        [], [P + "MeanImputer"], [P + "MeanImputer", P + "MinMaxScaler"],
        [P + "MeanImputer", P + "MinMaxScaler", P + "PCA"]]
    assert {s["args"]["goal"] for s in every} == {"classify"}
    fewer = wired(PLAN, "classify", {**CONFIG, "use_select": False}, OPTIONAL)
    assert [s["step"] for s in fewer] == ["impute", "scale", "model"]
    assert fewer[-1]["args"]["upstream"] == [P + "MeanImputer", P + "MinMaxScaler"]  # what the model really gets


def test_an_optional_step_whose_variable_the_manager_lacks_is_a_plan_error_naming_it():
    config = {k: v for k, v in CONFIG.items() if k != "use_select"}
    with pytest.raises(PlanError, match=r"args\.optional\.select: variable 'use_select' is not one of the manager's"):
        wired(PLAN, "classify", config, OPTIONAL)
    with pytest.raises(PlanError, match=r"args\.optional\.scale: variable 'use_scale' is 'yes', not a bool"):
        wired(PLAN, "classify", {**CONFIG, "use_scale": "yes"}, OPTIONAL)
    with pytest.raises(PlanError, match=r"args\.optional\.select: the name of a bool variable"):
        agents.optional_steps({"optional": {"select": 1}})


def test_a_step_fits_on_the_training_split_as_the_steps_before_it_transform_it():
    config = {"k_features": 2}
    X, y = agents.fitted_input("regress", [P + "MedianImputer", P + "StandardScaler", P + "SelectKBest"], config)
    assert X.shape == (len(agents.split("regress").train_y), 2) and not np.isnan(X).any()
    assert np.allclose(X.mean(axis=0), 0.0, atol=1e-9)  # scaled after imputing, before selecting


# --- a node from the topology ---------------------------------------------------------------


def test_a_node_answers_both_goals_and_vars_set_of_a_steps_program_changes_the_process_serving_it():
    name = short_name("tab")
    with otpy.Node(topology(name).node) as node:
        first = node.call("manager", held_out("classify"), timeout=60)
        assert len(first["predictions"]) == 2 and set(first["predictions"]) <= {0, 1, 2}
        before = steps(first)
        assert [e["program"] for e in first["trace"]] == [
            P + "MeanImputer", P + "MinMaxScaler", P + "SelectKBest", P + "KNeighborsClassifier"]
        assert len({e["pid"] for e in first["trace"]}) == 4  # one OS process per step
        again = steps(node.call("manager", held_out("classify"), timeout=60))
        assert {k: e["pid"] for k, e in again.items()} == {k: e["pid"] for k, e in before.items()}  # reused

        regress = node.call("manager", held_out("regress"), timeout=60)
        assert all(isinstance(p, float) for p in regress["predictions"]) and len(regress["predictions"]) == 2
        assert steps(regress)["model"]["program"] == P + "Ridge"
        assert steps(regress)["impute"]["pid"] != before["impute"]["pid"]  # another goal: its own agents

        done = subprocess.run([sys.executable, "-m", "otpy", "vars", "set", "--node", name, "global.scaler",
                               P + "StandardScaler"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        after = steps(node.call("manager", held_out("classify"), timeout=60))
        assert after["scale"]["program"] == P + "StandardScaler" and after["scale"]["pid"] != before["scale"]["pid"]
        assert after["impute"]["pid"] == before["impute"]["pid"]  # before the changed step: kept
        assert after["model"]["pid"] != before["model"]["pid"]  # after it: fitted on other input, another agent
        assert after["scale"]["agent"] in {c.id for c in node.which_children("pool")}

        assert node.set_variables("global", {"use_select": False}).ok
        assert "select" not in steps(node.call("manager", held_out("classify"), timeout=60))

        assert node.set_variables("global", {"use_select": True}).ok
        kept = steps(node.call("manager", held_out("classify"), timeout=60))["select"]
        assert len(kept["outputs"]["rows"][0]) == 3
        # a knob: the write returns once the agents that read it refitted in on_config (same process)
        assert node.set_variables("pool", {"k_features": 2}).ok
        selected = steps(node.call("manager", held_out("classify"), timeout=60))["select"]
        assert len(selected["outputs"]["rows"][0]) == 2 and selected["pid"] == kept["pid"]


def test_a_tiny_optimization_then_apply_makes_the_manager_run_the_best_programs_and_a_second_apply_sends_nothing():
    name = short_name("opt")
    topo = topology(name, small=True)
    result = optimize_topology(topo, trials=2, progress=False)
    assert result.failures == 0 and result.first_error is None
    assert 0.0 <= result.train_score <= 1.0 and result.val_score is not None and 0.0 <= result.val_score <= 1.0
    best = result.config["global"]
    with otpy.Node(topo.node) as node, otpy.connect(name) as client, otpy.Caller(name) as caller:
        live = LiveSystem(client, caller, spaces_of(topo))
        live.apply(result.config)
        for goal in agents.DATA:
            ran = steps(node.call("manager", held_out(goal), timeout=60))
            expected = {"impute": best["imputer"], "model": best[f"model_{goal}"]}
            if best["use_scale"]:
                expected["scale"] = best["scaler"]
            if best["use_select"]:
                expected["select"] = best["selector"]
            assert {step: entry["program"] for step, entry in ran.items()} == expected
        assert live.plan(result.config) == [] and live.apply(result.config) == []
