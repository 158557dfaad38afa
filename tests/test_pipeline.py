"""Pipelines over real agent processes: both strategies, each error-handling mode."""

from __future__ import annotations

import pytest

import otpy
from otpy.wire.calls import Caller
from otpy.wire.errors import NoSuchAgent, RemoteError
from otpy.optimize.pipeline import Pipeline, PipelineError, Stage
from tests.helpers import unique_name

pytestmark = pytest.mark.timeout(30)


def agent(id: str, name: str, **args) -> otpy.ChildSpec:
    return otpy.ChildSpec(id=id, program=f"tests.call_agents:{name}", args=args)


@pytest.fixture(scope="module")
def caller():
    root = otpy.SupervisorSpec(id="root", children=(
        agent("a", "Append"), agent("b", "Append"), agent("c", "Append"),
        agent("bad", "Raises"), agent("once", "FailsFirst"), agent("slow", "Slow"),
    ))
    node = otpy.Node.from_spec(root, name=unique_name("pipe")).start()
    try:
        with Caller(node.name) as caller:
            yield caller
    finally:
        node.stop()


def test_sequential_feeds_each_stage_the_previous_outputs(caller):
    result = Pipeline(["a", "b", "c"]).run({"path": [], "x": 1}, caller)
    assert result.ok and result.outputs == {"path": ["a", "b", "c"], "x": 1}
    assert [t[0] for t in result.trace] == ["a", "b", "c"] and all(t[2] for t in result.trace)
    assert result.stage_results["b"]["path"] == ["a", "b"]


def test_sequential_fail_fast_stops_at_the_failed_stage(caller):
    result = Pipeline(["a", "bad", "b"]).run({"path": []}, caller)
    assert isinstance(result.errors["bad"], RemoteError)
    assert "b" not in result.stage_results and [t[0] for t in result.trace] == ["a", "bad"]


def test_sequential_continue_on_error_passes_the_inputs_on(caller):
    result = Pipeline(["a", "bad", "b"], error_handling="continue_on_error").run({"path": []}, caller)
    assert set(result.errors) == {"bad"}
    assert result.outputs["path"] == ["a", "b"]


def test_sequential_retry_calls_a_failing_stage_again(caller):
    result = Pipeline(["once"], error_handling="retry", max_retries=1).run({"key": "seq"}, caller)
    assert result.ok and result.outputs == {"key": "seq", "second_try": True}


def test_parallel_gives_every_stage_the_same_inputs(caller):
    result = Pipeline(["a", "b", Stage("c2", "c")], strategy="parallel").run({"path": ["in"]}, caller)
    assert result.ok
    assert result.outputs == {"a": {"path": ["in", "a"]}, "b": {"path": ["in", "b"]}, "c2": {"path": ["in", "c"]}}


def test_parallel_fail_fast_returns_without_waiting_for_the_rest(caller):
    pipeline = Pipeline(["bad", Stage("slow", timeout=3)], strategy="parallel")
    result = pipeline.run({"seconds": 1.0}, caller)
    assert set(result.errors) == {"bad"} and "slow" not in result.outputs
    assert max(ms for *_, ms in result.trace) < 900


def test_parallel_continue_on_error_keeps_the_other_outputs(caller):
    pipeline = Pipeline(["a", "bad", "b"], strategy="parallel", error_handling="continue_on_error")
    result = pipeline.run({"path": []}, caller)
    assert set(result.errors) == {"bad"} and set(result.outputs) == {"a", "b"}
    assert {t[0]: t[2] for t in result.trace} == {"a": True, "bad": False, "b": True}


def test_parallel_retry_recovers_and_an_always_failing_stage_fails(caller):
    ok = Pipeline(["a", "once"], strategy="parallel", error_handling="retry").run({"key": "par"}, caller)
    assert ok.ok and ok.outputs["once"]["second_try"]
    bad = Pipeline(["a", "bad"], strategy="parallel", error_handling="retry", max_retries=2).run({}, caller)
    assert isinstance(bad.errors["bad"], RemoteError)


def test_an_unknown_stage_is_no_such_agent(caller):
    result = Pipeline(["nobody"]).run({}, caller)
    assert isinstance(result.errors["nobody"], NoSuchAgent)


def test_from_table():
    pipeline = Pipeline.from_table("review", {"strategy": "parallel", "error_handling": "retry",
                                              "max_retries": 2, "stage_timeout": 1.5, "stages": ["a", "b"]})
    assert pipeline.stages == (Stage("a"), Stage("b")) and pipeline.max_retries == 2
    assert pipeline.stage_timeout == 1.5 and pipeline.strategy == "parallel"


@pytest.mark.parametrize("table, key", [
    ({"stages": "a"}, "stages"), ({"stages": ["a"], "strategy": "zigzag"}, "strategy"),
    ({"stages": ["a"], "colour": 1}, "colour"), ({"stages": ["a", "a"]}, "unique"), ({"stages": []}, "stage"),
])
def test_from_table_errors_name_the_key(table, key):
    with pytest.raises(PipelineError, match=key):
        Pipeline.from_table("p", table)
