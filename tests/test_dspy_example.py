"""The DSPy team example (examples/dspy_team) and DSPy's conventions in the optimizer: datasets
of dspy.Examples, metrics metric(example, prediction, trace=None), examples scored on several
threads, the manager's trace as DSPy-style traces and demos. Everything on the dummy LM with
scripted answers: no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

dspy = pytest.importorskip("dspy")

import otpy  # noqa: E402
from examples.dspy_team import data, script  # noqa: E402
from otpy.dspy import evaluate as dspy_evaluate  # noqa: E402
from otpy.dspy.traces import demos, program_state, traces  # noqa: E402
from otpy.optimize.evaluation import evaluate  # noqa: E402
from otpy.optimize.live_system import OptimizeError, OptimizerTable  # noqa: E402
from otpy.optimize.optimizer import Optimizer, plan_actions  # noqa: E402
from otpy.topology.load import parse_topology  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "examples", "dspy_team", "topology.toml")
P = "examples.dspy_team.programs:"
pytestmark = pytest.mark.timeout(120)


def short_name(prefix: str) -> str:
    short_name.count += 1
    return f"{prefix}{os.getpid()}{short_name.count}"


short_name.count = 0


def topology_text(name: str) -> str:
    return open(PATH).read().replace('name = "dspy_team"', f'name = "{name}"')


def topology(name: str):
    return parse_topology(topology_text(name), source=PATH, base_dir=ROOT)


def test_the_core_and_otpy_optimize_of_a_plain_dataset_never_import_dspy(tmp_path):
    from tests.test_live_optimize import text

    path = tmp_path / "plain.toml"
    path.write_text(text("plain"))
    code = ("import sys, otpy.optimize.optimizer, otpy.optimize.live_system, otpy.optimize.orchestrator\n"
            "import otpy.cli.optimize_cmd as cmd\n"
            "from otpy.optimize.live_system import OptimizerTable\n"
            "from otpy.topology.load import load_topology\n"
            f"table = cmd.conventions(OptimizerTable(load_topology({str(path)!r})))\n"
            "assert table.trainset and 'dspy' not in sys.modules, 'dspy imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# --- the example's data and script (pure) -------------------------------------------------------


def test_the_scripted_answers_make_the_careful_coder_pass_more_often_than_the_quick_one():
    def passed(careful: bool, temperature: float) -> int:
        answers = (script.careful_script if careful else script.quick_script)({"temperature": temperature})
        return sum(script.correct(task, answers[task.text]["code"]) for task in script.TASKS[:data.TRAIN])

    assert passed(True, 0.5) == data.TRAIN > passed(True, 1.2) > passed(False, 0.5) == passed(False, 1.2)


def test_the_dataset_is_dspy_examples_whose_inputs_are_the_managers_call_and_the_metric_is_dspys():
    train, dev = data.trainset(), data.devset()
    assert len(train) == 8 and len(dev) == 4 and not {e.task for e in train} & {e.task for e in dev}
    assert set(train[0].inputs().keys()) == {"goal", "task"} and set(train[0].labels().keys()) == {"must"}
    task = script.BY_NAME["mean"]
    good = dspy.Prediction(code=task.careful, verdict="approve")
    assert data.metric(train[3], good) == 1.0 and data.metric(train[3], good, trace=[]) is True
    assert data.metric(train[3], dspy.Prediction(code=task.quick, verdict="approve")) == 0.0
    assert data.metric(train[3], dspy.Prediction(code=task.careful, verdict="reject")) == 0.0


# --- DSPy's conventions in the optimizer --------------------------------------------------------


def test_evaluate_scores_examples_on_several_threads_at_once_and_reports_the_first_failure_in_order():
    together = threading.Barrier(4, timeout=10)  # passes only when 4 calls run at once

    def program(n):
        together.wait()
        if n in (1, 3):
            raise ValueError(f"bad {n}")
        return {"y": n}

    examples = [otpy.Example(inputs={"n": n}, label=n) for n in range(8)]
    evaluation = evaluate(program, examples, lambda ex, pred: float(pred["y"] == ex.label), threads=4)
    assert (evaluation.score, evaluation.count, evaluation.failures) == (6 / 8, 8, 2)
    assert "ValueError: bad 1" in evaluation.first_error  # the first in the dataset's order
    with pytest.raises(ValueError, match="threads"):
        evaluate(program, examples, lambda ex, pred: 1.0, threads=0)


def test_a_dspy_dataset_and_a_three_argument_metric_drive_the_optimizer():
    space = otpy.VariableSpace("global")
    space.add(otpy.FloatVariable(name="x", low=0.0, high=1.0, default=0.1))
    state, seen = {}, []

    def program(n, goal):
        return {"y": n * state["global"]["x"], "goal": goal}

    def metric(example, prediction, trace=None):
        seen.append((type(example), type(prediction), trace))
        return -abs(prediction.y - example.y)

    train = [dspy.Example(n=n, goal="g", y=0.7 * n).with_inputs("n", "goal") for n in (1, 2)]
    dev = [dspy.Example(n=3, goal="g", y=2.1).with_inputs("n", "goal")]
    examples, scored = dspy_evaluate.adapt(train, metric)
    assert examples[0].inputs == {"n": 1, "goal": "g"} and examples[0].label is train[0]
    result = Optimizer({"global": space}, seed=1, progress=False).compile(
        program, examples, scored, valset=dspy_evaluate.examples(dev), trials=12, apply=state.update, threads=2)
    assert abs(result.config["global"]["x"] - 0.7) < 0.2 and result.failures == 0
    assert set(seen) == {(dspy.Example, dspy.Prediction, None)}  # DSPy's Evaluate: no trace
    with pytest.raises(TypeError, match="otpy.dspy.evaluate.adapt"):  # not adapted: said, not a KeyError
        Optimizer({"global": space}, progress=False).compile(program, train, metric, trials=1)


def test_evaluate_is_dspys_shape_with_each_examples_prediction():
    def program(n, goal):
        if n == 2:
            raise RuntimeError("down")
        return {"y": n}

    dev = [dspy.Example(n=n, goal="g", y=1).with_inputs("n", "goal") for n in (1, 2, 3)]
    result = dspy_evaluate.Evaluate(devset=dev, metric=lambda ex, pred, trace=None: pred.y == ex.y, num_threads=3)(program)
    assert result.score == pytest.approx(100 / 3, abs=0.01)
    assert [(ex.n, None if p is None else p.y, s) for ex, p, s in result.results] == [(1, 1, 1.0), (2, None, 0.0),
                                                                                     (3, 3, 0.0)]
    assert result.evaluation.failures == 1


def test_the_optimizer_table_reads_threads_and_the_cli_adapts_a_dspy_table():
    from otpy.cli.optimize_cmd import conventions

    table = conventions(OptimizerTable(topology("tbl")))
    assert table.threads == 4 and table.trainset[0].label.task == data.trainset()[0].task
    assert table.metric(table.trainset[0], {"code": "", "verdict": "reject"}) == 0.0
    for bad in (0, True, "4", 65):
        text = topology_text("tbl").replace("threads = 4 ", f"threads = {json.dumps(bad)} ")
        with pytest.raises(OptimizeError, match="optimizer.threads"):
            OptimizerTable(parse_topology(text, source=PATH, base_dir=ROOT))


def test_a_document_variable_is_never_planned_by_the_optimizer_so_a_set_program_state_stays():
    topo = topology("docs")
    from otpy.optimize.live_system import spaces_of

    spaces = spaces_of(topo)
    assert "coder.program_state" not in Optimizer(spaces, progress=False).distributions()
    saved = {"write.predict": {"demos": [{"task": "t", "plan": "p", "code": "c"}]}}
    current = {"global": {"coder": P + "QuickCoder"}, "coder": {"program_state": saved}}
    target = {"global": {"coder": P + "CarefulCoder"}, "coder": {"program_state": {}}}
    [action] = plan_actions(spaces, current, target)
    assert action.scopes == {"global": {"coder": P + "CarefulCoder"}}


def test_a_compile_result_proposes_the_searched_values_only_while_each_apply_gets_the_documents_default():
    from otpy.variables.types import DocumentVariable

    space = otpy.VariableSpace("global")
    space.add(otpy.FloatVariable(name="x", low=0.0, high=1.0, default=0.1))
    space.add(DocumentVariable(name="state", default={"demos": []}))
    applied = []
    result = Optimizer({"global": space}, seed=1, progress=False).compile(
        lambda n: {"y": n * applied[-1]["global"]["x"]}, [otpy.Example(inputs={"n": 1}, label=0.5)],
        lambda ex, pred: -abs(pred["y"] - ex.label), valset=[otpy.Example(inputs={"n": 2}, label=1.0)],
        trials=3, apply=applied.append)
    assert set(result.config["global"]) == {"x"} and result.val_score is not None
    assert all(config["global"]["state"] == {"demos": []} for config in applied) and len(applied) == 4


def test_a_document_is_no_knob_so_the_restart_warning_names_the_searched_knobs_only():
    from otpy.optimize.knob_check import programs_without_on_config
    from otpy.optimize.live_system import spaces_of
    from tests.test_live_optimize import TOPOLOGY, TRIPLER

    text = TOPOLOGY.format(name="knobdoc", doubler="tests.optimize_agents:Picky", tripler=TRIPLER).replace(
        "[variables.pool]\n", '[variables.pool]\nstate = { type = "document", default = {} }\n')
    topo = parse_topology(text, check_imports=True)
    [restarted] = programs_without_on_config(topo.node.root, spaces_of(topo))
    assert restarted.knobs == ("pool.bias",)  # not pool.state: no trial changes a document


# --- traces and demos -----------------------------------------------------------------------------

REPLY = {"code": "c2", "verdict": "approve", "trace": [
    {"step": "planner", "program": P + "Planner", "agent": "planner", "pid": 1, "inputs": {"task": "t"},
     "outputs": {"task": "t", "plan": "p"}, "ms": 1.0, "error": None},
    {"step": "coder", "program": P + "CarefulCoder", "agent": "coder", "pid": 2, "inputs": {"task": "t", "plan": "p"},
     "outputs": {"task": "t", "plan": "p", "reasoning": "r", "code": "c2"}, "ms": 1.0, "error": None},
    {"step": "reviewer", "program": P + "Reviewer", "agent": "reviewer", "pid": 3, "inputs": {"task": "t", "code": "c2"},
     "outputs": None, "ms": 1.0, "error": "RemoteError: down"}]}


def test_traces_are_stage_inputs_and_a_prediction_per_step_that_answered():
    found = traces(REPLY)
    assert [(stage, inputs) for stage, inputs, _ in found] == [("planner", {"task": "t"}),
                                                               ("coder", {"task": "t", "plan": "p"})]
    assert all(isinstance(p, dspy.Prediction) for _, _, p in found) and found[1][2].code == "c2"
    shape = lambda found: [(stage, inputs, p.toDict()) for stage, inputs, p in found]  # noqa: E731
    assert shape(traces(dspy.Prediction(**REPLY))) == shape(traces(REPLY["trace"])) == shape(found)
    with pytest.raises(TypeError, match="no trace"):
        traces({"code": "c"})


def test_demos_of_a_stage_become_a_program_state_a_module_loads():
    from examples.dspy_team.programs import CodeCarefully

    made = demos(traces(REPLY), "coder")
    assert len(made) == 1 and made[0].inputs().toDict() == {"task": "t", "plan": "p"}
    state = program_state(CodeCarefully(), made)
    json.dumps(state)  # a document variable's value
    assert state["write.predict"]["demos"][0]["code"] == "c2"
    fresh = CodeCarefully()
    fresh.load_state(state)
    assert fresh.write.predict.demos[0]["code"] == "c2" and CodeCarefully().write.predict.demos == []
    from examples.dspy_team.programs import CodeQuickly

    quick = program_state(CodeQuickly(), made)["write"]["demos"][0]  # cut to its signature: no reasoning
    assert set(quick) == {"task", "plan", "code"}


# --- the example's node -----------------------------------------------------------------------------

TASK = script.BY_NAME["mean"]


def test_the_example_starts_and_the_manager_runs_planner_coder_reviewer_on_the_dummy_lm():
    with otpy.Node(topology(short_name("dt")).node) as node:
        reply = node.call("manager", {"goal": "code", "task": TASK.text}, timeout=60)
        assert [e["step"] for e in reply["trace"]] == ["planner", "coder", "reviewer"]
        assert reply["trace"][1]["program"] == P + "QuickCoder"  # the default
        assert reply["code"] == TASK.quick.strip() and reply["verdict"] == "reject"
        draft = node.call("manager", {"goal": "draft", "task": TASK.text}, timeout=60)
        assert [e["step"] for e in draft["trace"]] == ["planner", "coder"] and "verdict" not in draft

        assert node.set_variables("global", {"coder": P + "CarefulCoder"}).ok  # reconfigures the child coder
        hot = node.call("manager", {"goal": "code", "task": TASK.text}, timeout=60)  # lm_temperature 1.2
        assert hot["trace"][1]["program"] == P + "CarefulCoder" and hot["code"] == TASK.quick.strip()
        assert node.set_variables("team", {"lm_temperature": 0.5}).ok  # on_config: a new LM, same process
        cool = node.call("manager", {"goal": "code", "task": TASK.text}, timeout=60)
        assert cool["code"] == TASK.careful.strip() and cool["verdict"] == "approve"
        assert cool["trace"][1]["pid"] == hot["trace"][1]["pid"]


def test_the_examples_optimize_apply_replaces_the_coder_process_with_the_careful_program(tmp_path):
    name = short_name("do")
    path = tmp_path / "topology.toml"
    path.write_text(topology_text(name))
    with otpy.Node(topology(name).node) as node:
        [before] = [c for c in node.which_children("team") if c.id == "coder"]
        assert before.program.endswith("QuickCoder")
        done = subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path), "--trials", "2", "--apply",
                               "--storage", f"sqlite:///{tmp_path}/study.db"],
                              cwd=ROOT, capture_output=True, text=True, timeout=100)
        assert done.returncode == 0, done.stderr
        assert "best score 1.0000 (train) after 2 trials" in done.stdout, done.stdout
        assert "\"coder\": {" not in done.stdout  # program_state (a document) is never searched nor planned
        assert "reconfigure examples.dspy_team.programs:QuickCoder -> examples.dspy_team.programs:CarefulCoder" \
            in done.stdout
        [after] = [c for c in node.which_children("team") if c.id == "coder"]
        assert after.program == P + "CarefulCoder" and after.pid != before.pid
        reply = node.call("manager", {"goal": "code", "task": TASK.text}, timeout=60)
        assert reply["trace"][1]["pid"] == after.pid and reply["verdict"] == "approve"
        assert reply["code"] == TASK.careful.strip()


def test_demos_bootstrapped_from_the_nodes_traces_set_as_program_state_fix_the_hot_coders_answer(tmp_path):
    name = short_name("db")
    with otpy.Node(topology(name).node) as node:
        assert node.set_config({"global": {"coder": P + "CarefulCoder"}, "team": {"lm_temperature": 0.5}}).ok
        path = tmp_path / "state.json"
        done = subprocess.run([sys.executable, "-m", "examples.dspy_team.bootstrap", str(path), "--node", name],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"trainset score 100.0%; 4 demos of {P}CarefulCoder (write.predict)" in done.stdout
        state = json.loads(path.read_text())
        assert [demo["task"] for demo in state["write.predict"]["demos"]] == [t.text for t in script.TASKS[:4]]
        assert node.set_variables("team", {"lm_temperature": 1.4}).ok  # hot: careless on the mean task
        assert node.call("manager", {"goal": "code", "task": TASK.text}, timeout=60)["verdict"] == "reject"
        assert node.set_variables("coder", {"program_state": state}).ok  # the demos, on the running coder
        fixed = node.call("manager", {"goal": "code", "task": TASK.text}, timeout=60)
        assert fixed["verdict"] == "approve" and fixed["code"] == TASK.careful.strip()


# --- a DSPy [optimizer] table's problems: one usage error naming the item -------------------------

@pytest.mark.parametrize("target, message", [
    ("tests.dspy_bad_data:no_inputs", "optimizer.dataset ('tests.dspy_bad_data:no_inputs'): item 0: a dspy.Example "
                                      "without its inputs marked"),
    ("tests.dspy_bad_data:stray", "optimizer.dataset ('tests.dspy_bad_data:stray'): item 2: an example is a "
                                  "dspy.Example, an otpy.Example or a mapping with 'inputs' (and 'label'); got "
                                  "'write mean(xs)'"),
])
def test_a_bad_dspy_dataset_is_one_usage_error_naming_the_item(target, message):
    from otpy.cli.optimize_cmd import conventions

    text = topology_text("bad").replace("examples.dspy_team.data:trainset", target)
    with pytest.raises(OptimizeError) as raised:
        conventions(OptimizerTable(parse_topology(text, source=PATH, base_dir=ROOT)))
    assert raised.value.usage and message in str(raised.value), str(raised.value)


def test_a_dspy_dataset_may_hold_the_cores_mappings_too():
    from otpy.cli.optimize_cmd import conventions

    text = topology_text("mixed").replace("examples.dspy_team.data:trainset", "tests.dspy_bad_data:mixed")
    table = conventions(OptimizerTable(parse_topology(text, source=PATH, base_dir=ROOT)))
    assert [example.inputs["goal"] for example in table.trainset] == ["code"] * 3
    assert isinstance(table.trainset[0].label, dspy.Example) and table.trainset[2].label is None


def test_otpy_optimize_of_a_bad_dspy_dataset_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(topology_text(short_name("bd")).replace("examples.dspy_team.data:trainset",
                                                            "tests.dspy_bad_data:no_inputs"))
    proc = subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path), "--trials", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("optimize: optimizer.dataset ('tests.dspy_bad_data:no_inputs'): item 0: ") and \
        proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("metric", ["nan", "number_text"])
def test_a_dspy_metric_returning_no_score_is_a_failure_in_evaluate(metric):
    from tests import dspy_bad_data

    dev = [dspy.Example(n=n).with_inputs("n") for n in (1, 2)]
    result = dspy_evaluate.Evaluate(devset=dev, metric=getattr(dspy_bad_data, metric))(lambda n: {"y": n})
    assert result.score is None and result.evaluation.failures == 2
    assert result.evaluation.first_error.startswith("the metric returned "), result.evaluation.first_error
    assert [score for _, _, score in result.results] == [0.0, 0.0]
