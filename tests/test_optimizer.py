"""The optimizer on optuna: search space, infeasible trials, resuming a stored study."""

from __future__ import annotations

import pytest

from otpy.optimize.live_system import LiveSystem, format_change, format_plan, registry_values, set_changes
from otpy.optimize.optimizer import Example, OptimizeError, Optimizer, evaluate, plan_actions
from otpy.variables.scopes import VariableSpace
from otpy.variables.types import CompositeVariable, FloatVariable, ModuleVariable, VariableError
from otpy.wire.protocol import Change, Outcome, SetVariables
from otpy.wire.registry_protocol import ValueEntry

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
    assert result.config["global"]["solver"] == "pkg.a:Good"
    assert abs(result.config["solver"]["x"] - 0.7) < 0.2
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
    assert result.config["solver"]["x"] < 0.5


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


# --- scores you can trust: failures reported, failed trials, a held-out score --------------


def test_a_call_that_raises_is_counted_and_its_traceback_kept_not_silently_scored():
    def program(n):
        if n == 3:
            raise ZeroDivisionError("bad example")
        return {"answer": n}

    evaluation = evaluate(program, TRAIN, lambda ex, pred: float(pred["answer"] == ex.label))
    assert (evaluation.count, evaluation.failures) == (5, 1)
    assert evaluation.score == pytest.approx(4 / 5)  # the failed call counts 0 in the mean
    assert "ZeroDivisionError: bad example" in evaluation.first_error and "Traceback" in evaluation.first_error


def test_a_trial_where_every_call_fails_is_a_failed_trial_not_a_zero():
    state = {}

    def program(n):
        if state["global"]["solver"] == "pkg.a:Bad":
            raise RuntimeError("Bad cannot serve")
        return {"answer": n, "x": state["solver"]["x"]}

    result = Optimizer(spaces(), seed=1, progress=False).compile(program, TRAIN, metric, trials=12, apply=state.update)
    assert result.failed >= 1  # the baseline (Bad) at least
    assert result.failures == 5 * result.failed and "RuntimeError: Bad cannot serve" in result.first_error
    assert result.config["global"]["solver"] == "pkg.a:Good"
    assert result.best_score > -1.0  # a failed trial never became the best with a made-up 0


def test_every_trial_failing_is_an_error_that_shows_the_first_traceback():
    def program(n):
        raise KeyError("missing")

    with pytest.raises(OptimizeError, match="(?s)every trial failed.*KeyError"):
        Optimizer(spaces(), seed=1, progress=False).compile(program, TRAIN, metric, trials=2)


def test_with_a_valset_the_best_configuration_is_scored_again_on_it_separately():
    state, applied = {}, []

    def apply(config):
        applied.append(config)
        state.update(config)

    held_out = [Example(inputs={"n": n}, label=n + 1) for n in range(4)]  # Good answers n: wrong on these
    result = Optimizer(spaces(), seed=1, progress=False).compile(
        make_program(state), TRAIN, metric, valset=held_out, trials=10, apply=apply)
    assert applied[-1] == result.config  # the best applied again before it was scored on the valset
    assert result.best_score == result.train_score > 0.5
    assert result.val_score == pytest.approx(-abs(result.config["solver"]["x"] - 0.7))


def test_without_a_valset_there_is_no_validation_score():
    state = {}
    result = Optimizer(spaces(), seed=1, progress=False).compile(make_program(state), TRAIN, metric, trials=3,
                                                               apply=state.update)
    assert result.val_score is None


def test_a_metric_that_raises_is_counted_like_a_failed_call_with_its_traceback():
    def metric(example, prediction):
        if example.label == 2:
            raise KeyError("no such label")
        return 1.0

    evaluation = evaluate(lambda n: {"answer": n}, TRAIN, metric)
    assert (evaluation.count, evaluation.failures) == (5, 1)
    assert evaluation.score == pytest.approx(4 / 5)
    assert "KeyError: 'no such label'" in evaluation.first_error and "Traceback" in evaluation.first_error


def test_a_trial_whose_apply_fails_is_a_failed_trial_with_its_reason_and_the_search_goes_on():
    state = {}

    def apply(config):
        if config["global"]["solver"] == "pkg.a:Bad":
            raise OptimizeError("start_failed: child 'solver-1' did not start")
        state.update(config)

    result = Optimizer(spaces(), seed=1, progress=False).compile(make_program(state), TRAIN, metric, trials=8,
                                                               apply=apply)
    assert result.trials == 8  # the search went on after the baseline (Bad) could not be applied
    assert result.apply_failed >= 1 and result.failed >= result.apply_failed
    assert "start_failed: child 'solver-1' did not start" in result.first_apply_error
    assert result.config["global"]["solver"] == "pkg.a:Good"


def test_an_apply_failure_is_kept_on_the_optuna_trial(tmp_path):
    import optuna

    db = str(tmp_path / "study.db")

    def apply(config):
        raise OptimizeError("start_failed: child 'solver-1'")

    with pytest.raises(OptimizeError, match="(?s)every trial failed.*start_failed: child 'solver-1'"):
        Optimizer(spaces(), seed=1, storage=db, study_name="s", progress=False).compile(
            lambda n: {"answer": n, "x": 0.7}, TRAIN, metric, trials=3, apply=apply)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3
    assert all("start_failed: child 'solver-1'" in t.user_attrs["apply_failed"] for t in study.trials)


def test_a_failed_apply_of_the_best_for_the_valset_is_a_missing_val_score_with_the_reason():
    state, applied = {}, []

    def apply(config):
        applied.append(config)
        if len(applied) > 4:  # the four trials apply; the best's re-apply for the valset does not
            raise OptimizeError("start_failed: child 'solver-1'")
        state.update(config)

    result = Optimizer(spaces(), seed=1, progress=False).compile(
        make_program(state), TRAIN, metric, valset=TRAIN, trials=4, apply=apply)
    assert len(applied) == 5 and result.val_score is None
    assert "start_failed: child 'solver-1'" in result.val_error


def test_ctrl_c_during_a_trial_tells_optuna_it_failed_before_raising(tmp_path):
    import optuna

    db = str(tmp_path / "study.db")

    def program(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Optimizer(spaces(), seed=1, storage=db, study_name="s", progress=False).compile(
            program, TRAIN, metric, trials=3, apply=lambda config: None)
    [trial] = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["failed"] == "interrupted"


# --- plans are diffs ---------------------------------------------------------------------


def scoped(config):
    """The one action of a plan: every changed scope in one ``SetVariables``."""
    return [SetVariables(0, "", {}, scopes=config)] if config else []


def test_the_plan_is_one_set_variables_of_the_changed_values_of_every_scope():
    current = {"global": {"solver": "pkg.a:Bad"}, "solver": {"x": 0.1}}
    target = {"global": {"solver": "pkg.a:Good"}, "solver": {"x": 0.1}}
    assert plan_actions(spaces(), current, target) == scoped({"global": {"solver": "pkg.a:Good"}})
    assert plan_actions(spaces(), target, target) == []
    both = {"global": {"solver": "pkg.a:Good"}, "solver": {"x": 0.3}}
    assert plan_actions(spaces(), current, both) == scoped({"global": {"solver": "pkg.a:Good"}, "solver": {"x": 0.3}})


def test_composites_are_never_in_a_plan():
    sp = spaces()
    sp["solver"].add(CompositeVariable(name="double", compute=lambda c: 2 * c["x"], depends_on=["x"]))
    target = sp["solver"].validate({"x": 0.4})
    assert target["double"] == 0.8
    assert plan_actions(sp, {"solver": {"x": 0.1}}, {"solver": target}) == scoped({"solver": {"x": 0.4}})


def test_without_a_live_system_the_actions_are_the_diff_from_the_defaults():
    state = {}
    result = Optimizer(spaces(), seed=1, progress=False).compile(
        make_program(state), TRAIN, metric, trials=15, apply=state.update)
    defaults = {"global": {"solver": "pkg.a:Bad"}, "solver": {"x": 0.1}}
    assert result.actions == plan_actions(spaces(), defaults, result.config)
    [action] = result.actions
    assert action.scopes["global"] == {"solver": "pkg.a:Good"}
    assert [format_change(c) for c in set_changes(result.actions, defaults)][0] == (
        '~ global.solver "pkg.a:Bad" -> "pkg.a:Good"')
    again = Optimizer(spaces(), seed=1, progress=False).compile(
        make_program(state), TRAIN, metric, trials=15, apply=state.update, current=result.config)
    assert again.config == result.config and again.actions == []  # a system already running it: nothing


class FakeNode:
    """A node's control socket and registry: values per scope, and every set_config it got
    (one write, all or nothing, as the node's)."""

    def __init__(self, values):
        self.values = {scope: dict(v) for scope, v in values.items()}
        self.sent = []

    def set_config(self, config, *, dry_run=False):
        self.sent.append((config, dry_run))
        changes = [Change(action="set", scope=scope, name=n, before=self.values[scope].get(n), after=v)
                   for scope, values in config.items() for n, v in values.items()]
        if "solver" in config.get("global", {}):
            changes.append(Change(action="reconfigure", supervisor="pool", child="solver-1",
                                  before=self.values["global"]["solver"], after=config["global"]["solver"]))
            if config["global"]["solver"] == "pkg.a:Broken":
                return Outcome("start_failed", detail="child 'solver-1' (under 'pool'): setup raised")
        if not dry_run:
            for scope, values in config.items():
                self.values[scope].update(values)
        return Outcome("ok", changes=changes)

    def call(self, agent, inputs, timeout):
        assert agent == "registry" and inputs["op"] == "list"
        return {"ok": True, "values": [{"scope": s, "name": n, "value": v, "version": 1, "reason": "set"}
                                       for s, vs in self.values.items() for n, v in vs.items()]}


def test_a_live_system_plans_against_the_registry_and_applying_twice_sends_nothing_the_second_time():
    node = FakeNode({"global": {"solver": "pkg.a:Bad"}, "solver": {"x": 0.1}})
    live = LiveSystem(node, node, spaces())
    target = {"global": {"solver": "pkg.a:Good"}, "solver": {"x": 0.1}}
    preview = live.preview(live.plan(target))
    assert [format_change(c) for c in preview] == [
        '~ global.solver "pkg.a:Bad" -> "pkg.a:Good"', "~ pool/solver-1 reconfigure pkg.a:Bad -> pkg.a:Good"]
    assert node.values["global"]["solver"] == "pkg.a:Bad"  # a dry run changes nothing
    assert live.apply(target) and node.sent[-1] == ({"global": {"solver": "pkg.a:Good"}}, False)
    sent = len(node.sent)
    assert live.apply(target) == [] and len(node.sent) == sent


def test_a_configuration_of_several_scopes_is_previewed_and_sent_as_one_write():
    node = FakeNode({"global": {"solver": "pkg.a:Bad"}, "solver": {"x": 0.1}})
    live = LiveSystem(node, node, spaces())
    target = {"global": {"solver": "pkg.a:Good"}, "solver": {"x": 0.3}}
    preview = [format_change(c) for c in live.preview(live.plan(target))]
    assert node.sent == [({"global": {"solver": "pkg.a:Good"}, "solver": {"x": 0.3}}, True)]  # one dry run
    assert '~ solver.x 0.1 -> 0.3' in preview and "~ pool/solver-1 reconfigure pkg.a:Bad -> pkg.a:Good" in preview
    live.apply(target)
    assert node.sent[1:] == [({"global": {"solver": "pkg.a:Good"}, "solver": {"x": 0.3}}, False)]  # one write


def test_a_refused_write_is_an_error_naming_the_nodes_reason_and_changes_no_scope():
    node = FakeNode({"global": {"solver": "pkg.a:Bad"}, "solver": {"x": 0.1}})
    sp = spaces()
    sp["global"] = VariableSpace("global")
    sp["global"].add(ModuleVariable(name="solver", modules=["pkg.a:Bad", "pkg.a:Broken"], default="pkg.a:Bad"))
    with pytest.raises(OptimizeError, match="start_failed.*solver-1.*no scope was changed"):
        LiveSystem(node, node, sp).apply({"solver": {"x": 0.3}, "global": {"solver": "pkg.a:Broken"}})
    assert node.values == {"global": {"solver": "pkg.a:Bad"}, "solver": {"x": 0.1}}


def test_a_plan_prints_like_terraform_plan():
    lines = format_plan([Change(action="start", supervisor="pool", child="w-2", after="m:A", pid=7),
                         Change(action="stop", supervisor="pool", child="w-3", before="m:A")])
    assert lines == ["+ start pool/w-2 m:A (pid 7)", "- stop pool/w-3 m:A"]
    assert format_plan([]) == ["no changes"]


def test_registry_values_are_the_set_and_default_ones():
    entries = [ValueEntry(scope="g", name="a", value=1, version=2, reason="set"),
               ValueEntry(scope="g", name="b", value=2, version=0, reason="default"),
               ValueEntry(scope="g", name="c", value=3, version=0, reason="computed")]
    assert registry_values(entries) == {"g": {"a": 1, "b": 2}}


def test_the_topologys_constraints_reach_the_optimizer_as_infeasible_trials():
    from otpy.optimize.live_system import spaces_of
    from otpy.topology.load import parse_topology

    topo = parse_topology(
        '[supervisor]\n[[supervisor.children]]\nid = "pool"\ntype = "dynamic_supervisor"\n'
        '[variables.pool]\nbias = { type = "float", low = -1.0, high = 1.0, default = 0.0 }\n'
        '[constraints]\npool = [{ check = "tests.optimize_agents:small_bias", description = "bias below 0.2" }]\n')
    with pytest.raises(VariableError, match="bias below 0.2"):
        Optimizer(spaces_of(topo), progress=False).validate({"pool.bias": 0.5})


def test_ctrl_c_while_optuna_tells_a_trial_is_still_a_keyboard_interrupt_and_leaves_no_running_trial(tmp_path):
    """Ctrl-C after the objective returned, while optuna tells the trial: optuna's own cleanup
    then raises UnboundLocalError; the caller still gets the KeyboardInterrupt it expects."""
    import optuna

    class InterruptedOnce(optuna.samplers.RandomSampler):
        interrupted = False

        def after_trial(self, study, trial, state, values):
            if not InterruptedOnce.interrupted:
                InterruptedOnce.interrupted = True
                raise KeyboardInterrupt
            super().after_trial(study, trial, state, values)

    db = str(tmp_path / "study.db")
    with pytest.raises(KeyboardInterrupt):
        Optimizer(spaces(), sampler=InterruptedOnce(seed=1), storage=db, study_name="s", progress=False).compile(
            lambda n: {"answer": n, "x": 0.7}, TRAIN, metric, trials=3)
    [trial] = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    assert trial.state != optuna.trial.TrialState.RUNNING


# --- what a metric returns: a score, or a failed metric (never a silent 0) -------------------------

@pytest.mark.parametrize("returned", [float("nan"), float("inf"), -float("inf"), "1.0", None, [1.0], 10 ** 400,
                                      object()])
def test_a_metric_returning_no_score_is_a_failure_counted_with_why_not_a_zero(returned):
    examples = [Example(inputs={"n": n}, label=n) for n in range(3)]
    metric = lambda example, prediction: 1.0 if example.label == 0 else returned  # noqa: E731
    result = evaluate(lambda n: {"answer": n}, examples, metric)
    assert (result.score, result.failures) == (pytest.approx(1 / 3), 2)
    assert result.first_error.startswith(f"the metric returned {repr(returned)[:40]}"), result.first_error
    assert "expected a finite number or a bool" in result.first_error or "not a finite number" in result.first_error
    assert "example inputs: {'n': 1}" in result.first_error
    every = evaluate(lambda n: {"answer": n}, examples, lambda example, prediction: returned)
    assert every.failed and every.failures == 3  # nothing measured: a failed trial, not a score of 0


def test_a_metric_may_return_a_bool_an_int_or_a_numpy_scalar():
    import numpy

    examples = [Example(inputs={"n": n}, label=n) for n in range(4)]
    values = {0: True, 1: 0, 2: numpy.float64(0.5), 3: numpy.bool_(True)}
    result = evaluate(lambda n: {"answer": n}, examples, lambda example, prediction: values[example.label])
    assert (result.score, result.failures) == (pytest.approx(2.5 / 4), 0)


def test_a_trial_whose_metric_never_scores_is_a_failed_trial():
    with pytest.raises(OptimizeError, match="(?s)every trial failed.*the metric returned nan"):
        Optimizer(spaces(), seed=1, progress=False).compile(
            lambda n: {"answer": n}, TRAIN, lambda example, prediction: float("nan"), trials=2)


def test_a_study_that_has_its_trials_runs_none_and_says_so_in_ran(tmp_path):
    db = str(tmp_path / "study.db")
    state = {}
    first = Optimizer(spaces(), seed=3, storage=db, study_name="s", progress=False).compile(
        make_program(state), TRAIN, metric, trials=3, apply=state.update)
    assert first.ran == 3
    again = Optimizer(spaces(), seed=8, storage=db, study_name="s", progress=False).compile(
        make_program(state), TRAIN, metric, trials=3, apply=state.update)
    assert (again.ran, again.trials) == (0, 3) and again.config == first.config
