"""The ``document`` variable type (#17): a JSON value (a DSPy program's saved state) declared,
checked, stored durably by the registry, set with ``otpy vars set`` (JSON text or ``@FILE``, read
by the safe reader), given to programs as plain data, and never searched by the optimizer."""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from collections import OrderedDict

import msgspec
import pytest
from click.testing import CliRunner

import otpy
from otpy.cli.vars import vars_group
from otpy.node.control import MAX_MESSAGE_BYTES
from otpy.topology.load import TopologyError, parse_topology
from otpy.variables.registry import Registry
from otpy.variables.space import VariableSpace
from otpy.variables.types import (
    DocumentVariable, FloatVariable, VariableError, WireVariable, variable_from_table, variable_table,
)
from otpy.wire.registry_protocol import MAX_DOCUMENT_BYTES, MAX_WRITE_BYTES
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.timeout(60)

STATE = {  # the shape of dspy's Module.dump_state(): per predictor, demos and the signature
    "predict": {
        "traces": [], "train": [],
        "demos": [{"augmented": True, "question": "2+2?", "answer": "4"}, {"question": "ça va ?", "answer": "✓ 好"}],
        "signature": {"instructions": "Answer briefly.", "fields": [{"prefix": "Question:", "description": None}]},
        "lm": None, "weights": [0.5, -1e-300, 1.7976931348623157e308, 0, -(1 << 63), (1 << 64) - 1],
    },
    "metadata": {"dependency_versions": {"python": "3.12", "dspy": "3.4.1"}},
}


def nested(depth: int):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --- the declaration and its values ----------------------------------------------------------


def test_the_default_is_an_empty_object_and_the_limits_are_the_registrys():
    state = DocumentVariable(name="state")
    assert (state.default, state.max_bytes) == ({}, 262144)
    assert MAX_WRITE_BYTES == MAX_MESSAGE_BYTES == 1 << 20  # a write travels in one message to the node
    assert DocumentVariable(name="state", max_bytes=MAX_DOCUMENT_BYTES).max_bytes == MAX_DOCUMENT_BYTES


@pytest.mark.parametrize("fields, problem", [
    ({"max_bytes": 0}, "state.max_bytes: got 0; expected an integer in [1, 1032192]"),
    ({"max_bytes": MAX_WRITE_BYTES}, "state.max_bytes: got 1048576; expected an integer in [1, 1032192]"),
    ({"max_bytes": True}, "state.max_bytes: got True; expected an integer"),
    ({"max_bytes": "64KB"}, "state.max_bytes: got '64KB'; expected an integer"),
    ({"default": {"a": {1, 2}}}, "state.default: got a document holding {1, 2} (a set) at $.a; expected JSON"),
    ({"default": [math.nan]}, "state.default: got a document holding nan (a float) at $[0]; expected JSON: finite"),
    ({"default": "x" * 20, "max_bytes": 10}, "state.default: got a document of 22 bytes; expected at most 10 bytes"),
])
def test_declaration_problems_name_the_field(fields, problem):
    with pytest.raises(VariableError) as refused:
        DocumentVariable(name="state", **fields)
    assert str(refused.value).startswith(problem)


@pytest.mark.parametrize("value, problem", [
    ("x" * 299_998, "state: got a document of 300,000 bytes; expected at most 262,144 bytes"),
    (nested(33), "state: got a document nested deeper than 32 levels; expected objects and arrays nested at most 32"),
    ({"demos": [{"score": math.nan}]}, "state: got a document holding nan (a float) at $.demos[0].score; expected JSON"),
    ({"x": math.inf}, "state: got a document holding inf (a float) at $.x; expected JSON: finite numbers"),
    ({"x": {1: "a"}}, "state: got a document holding the key 1 (an int) at $.x; expected JSON: object keys that are str"),
    ({"x": {"a", "b"}}, "state: got a document holding {"),
    ({"a b": (1, 2)}, 'state: got a document holding (1, 2) (a tuple) at $["a b"]; expected JSON'),
    ([1 << 64], "state: got a document holding 18446744073709551616 (an int) at $[0]; expected JSON: integers within 64"),
    ({"s": "\ud800"}, "state: got a document holding a string that is not Unicode text"),
    (b"bytes", "state: got a document holding b'bytes' (a bytes) at $; expected JSON"),
])
def test_value_problems_say_what_and_where(value, problem):
    found = DocumentVariable(name="state").problem(value)
    assert found is not None and found.startswith(problem), found


def test_json_values_are_accepted_and_kept_exactly():
    state = DocumentVariable(name="state", max_bytes=MAX_DOCUMENT_BYTES)
    for value in (STATE, [], "text", 3, -2.5, True, None, nested(32), "é" * 100):
        assert state.problem(value) is None
        assert state.normalize(value) == value
    size = len(json.dumps(STATE, ensure_ascii=False, separators=(",", ":")).encode())
    assert DocumentVariable(name="state", max_bytes=size).problem(STATE) is None  # compact UTF-8 JSON is counted
    assert DocumentVariable(name="state", max_bytes=size - 1).problem(STATE) is not None
    plain = state.normalize(OrderedDict(a=[1]))  # subclasses become what the store gives back
    assert type(plain) is dict and plain == {"a": [1]}


def test_the_table_form_and_the_wire_form_round_trip():
    table = {"type": "document", "default": STATE, "max_bytes": 65536, "description": "the program's state"}
    state = variable_from_table("program_state", table, scope="coder")
    assert variable_table(state) == table
    wire = msgspec.json.encode([state])
    assert msgspec.json.decode(wire, type=list[WireVariable]) == [state]
    with pytest.raises(VariableError) as refused:
        variable_from_table("program_state", {"type": "document", "max_bytes": 0, "size": 1}, scope="coder")
    assert refused.value.problems == [
        "variables.coder.program_state.size: unknown key 'size'; accepted keys: 'type', 'default', 'description', "
        "'max_bytes'"]


def test_a_topology_declares_one_and_an_inline_table_default_is_the_object():
    topology = parse_topology("""
[supervisor]
[[supervisor.children]]
id = "coder"
program = "tests.document_agents:ShowsKinds"

[variables.coder]
program_state = { type = "document", default = { demos = [{ q = "1+1", a = "2" }], n = 1.5 }, max_bytes = 65536 }
""", check_imports=False)
    space = otpy.variables.scopes.ScopedValues.from_topology(topology).spaces["coder"]
    assert space.validate({}) == {"program_state": {"demos": [{"q": "1+1", "a": "2"}], "n": 1.5}}
    with pytest.raises(TopologyError) as refused:
        parse_topology("""
[supervisor]
[variables.global]
program_state = { type = "document", default = { when = 1979-05-27 }, max_bytes = 65536 }
""", check_imports=False)
    assert "variables.global.program_state.default: got a document holding datetime.date(1979, 5, 27)" in str(
        refused.value)


def test_a_space_never_searches_a_document():
    space = VariableSpace("global", [FloatVariable(name="t", low=0.0, high=1.0, default=0.5),
                                     DocumentVariable(name="state", default={"k": 1})])
    assert list(space.to_optuna_distributions()) == ["t"]
    assert all(space.sample(random.Random(seed))["state"] == {"k": 1} for seed in range(20))


def test_an_optimizer_over_a_space_with_a_document_runs_and_never_suggests_it():
    from otpy.optimize.optimizer import Example, Optimizer

    space = VariableSpace("global", [FloatVariable(name="t", low=0.0, high=1.0, default=0.5),
                                     DocumentVariable(name="state", default={"demos": []})])
    applied: list[dict] = []
    optimizer = Optimizer({"global": space}, seed=0, progress=False)
    result = optimizer.compile(lambda n: {"t": applied[-1]["global"]["t"]}, [Example(inputs={"n": 1}, label=1)],
                               lambda example, prediction: prediction["t"], trials=4, apply=applied.append)
    assert result.trials == 4 and len(applied) >= 4
    assert list(optimizer.distributions()) == ["global.t"]
    assert all(config["global"]["state"] == {"demos": []} for config in applied)  # the default, never a suggestion


# --- the registry: refused writes, durability ------------------------------------------------

VARIABLES = {"global": {"program_state": {"type": "document", "max_bytes": 4096},
                        "t": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}}}


def test_the_registry_refuses_a_write_over_the_limit_naming_it_and_writes_nothing(tmp_path):
    registry = Registry()
    registry.setup({"variables": VARIABLES, "path": str(tmp_path / "registry.db")}, {})
    big = {"demos": ["x" * 5000]}
    refused = registry.forward(op="set_many", values={"global": {"t": 0.9, "program_state": big}})
    assert refused["ok"] is False and refused["error"] == "invalid"
    assert refused["problems"] == ["scope 'global': program_state: got a document of 5,014 bytes; expected at most "
                                   "4,096 bytes"]
    assert registry.forward(op="get", scope="global", name="t")["reason"] == "default"
    assert registry.forward(op="set", scope="global", name="program_state", value=STATE)["ok"]
    registry.teardown()
    again = Registry()
    again.setup({"variables": VARIABLES, "path": str(tmp_path / "registry.db")}, {})
    assert again.forward(op="get", scope="global", name="program_state")["value"] == STATE
    again.teardown()


TOPOLOGY = """
[node]
name = "{name}"

[supervisor]

[[supervisor.children]]
id = "coder"
program = "tests.document_agents:ShowsKinds"

[variables.global]
program_state = {{ type = "document", default = {{ demos = [] }}, max_bytes = 65536 }}
"""


def run(name: str, *args: str):
    return CliRunner().invoke(vars_group, [*args, "--node", name], catch_exceptions=False)


def wait_for(check, timeout: float = 10.0, what: str = "the condition"):
    """``wait_until``, a call that fails meanwhile (the agent is restarting) counting as not yet."""
    def attempt():
        try:
            return check()
        except otpy.CallError:
            return None
    return wait_until(attempt, timeout, what)


def test_set_from_a_file_reaches_the_program_as_plain_data_and_survives_a_node_restart(tmp_path):
    name = unique_name("docvar")
    path = tmp_path / f"{name}.toml"
    path.write_text(TOPOLOGY.format(name=name))
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(STATE, indent=2, ensure_ascii=False), encoding="utf-8")
    with otpy.Node.from_toml(path) as node:
        first = node.call("coder")
        assert (first["via"], first["kinds"]) == ("setup", {"dict": {"program_state": {"dict": {"demos": {"list": []}}}}})
        result = run(name, "set", "global", f"program_state=@{state_file}")
        assert result.exit_code == 0, result.output
        got = wait_for(lambda: (r := node.call("coder"))["via"] == "on_config" and r, what="on_config")
        assert got["config"]["program_state"] == STATE
        kinds = got["kinds"]["dict"]["program_state"]["dict"]["predict"]["dict"]
        assert kinds["demos"] == {"list": [{"dict": {"augmented": "bool", "question": "str", "answer": "str"}},
                                           {"dict": {"question": "str", "answer": "str"}}]}
        assert kinds["weights"] == {"list": ["float", "float", "float", "int", "int", "int"]}
        printed = run(name, "get", "global.program_state")
        assert json.loads(printed.output) == STATE and "✓ 好" in printed.output  # compact, UTF-8
    with otpy.Node.from_toml(path) as node:  # the same node again: its registry's file
        assert json.loads(run(name, "get", "global.program_state").output) == STATE
        assert node.call("coder")["config"]["program_state"] == STATE
        result = run(name, "set", "global", 'program_state={"demos": [], "é": [1, {"b": null}]}')
        assert result.exit_code == 0, result.output
        wait_for(lambda: node.call("coder")["config"]["program_state"] == {"demos": [], "é": [1, {"b": None}]},
                 what="on_config")
        listed = run(name, "list", "global")
        assert 'global.program_state  {"demos":[],"é":[1,{"b":null}]}  ' in listed.output


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    name = unique_name("docfile")
    path = tmp_path_factory.mktemp("docfile") / f"{name}.toml"
    path.write_text(TOPOLOGY.format(name=name))
    with otpy.Node.from_toml(path) as running:
        yield running


def test_a_file_over_max_bytes_is_refused_at_once(node, tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"demos": ["x" * 70000]}))
    result = run(node.name, "set", "global", f"program_state=@{big}")
    assert result.exit_code == 1
    assert f"program_state: {big}: the file has 70015 bytes, over the variable's max_bytes (65,536)" in result.output


def test_a_fifo_is_refused_without_waiting_for_a_writer(node, tmp_path):
    fifo = tmp_path / "state.fifo"
    os.mkfifo(fifo)
    done = threading.Event()
    outcome: list = []

    def invoke():
        outcome.append(run(node.name, "set", "global", f"program_state=@{fifo}"))
        done.set()

    threading.Thread(target=invoke, daemon=True).start()
    if not done.wait(20):
        with open(fifo, "wb"):  # unblock the reader, then fail
            pass
        raise AssertionError("otpy vars set waited on a FIFO")
    assert outcome[0].exit_code == 1
    assert "it is a FIFO (named pipe), not a regular file" in outcome[0].output


def test_a_symlink_to_dev_zero_is_refused(node, tmp_path):
    link = tmp_path / "state.json"
    link.symlink_to("/dev/zero")
    result = run(node.name, "set", "global", f"program_state=@{link}")
    assert result.exit_code == 1 and "it is a character device, not a regular file" in result.output


def test_text_that_is_not_json_is_refused_for_a_document(node, tmp_path):
    result = run(node.name, "set", "global.program_state", '{"demos": [')
    assert result.exit_code == 1 and "program_state: the value is not JSON" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"demos": NaN}')
    result = run(node.name, "set", "global", f"program_state=@{bad}")
    assert result.exit_code == 1 and "program_state: got a value holding nan (a float) at $.demos" in result.output
    assert json.loads(run(node.name, "get", "global.program_state").output) == {"demos": []}


def test_a_write_bigger_than_a_message_to_the_node_is_refused_at_once(node):
    floats = json.dumps([0.5] * 200_000)  # 800 KB of JSON, 1.8 MB as msgpack
    result = run(node.name, "set", "global.program_state", floats)
    assert result.exit_code == 1 and "a message to the node carries" in result.output


def test_composites_and_constraints_read_a_document_as_plain_data():
    from otpy.variables.types import CompositeVariable

    seen = []

    def demos(config):
        seen.append(config["state"])
        return len(config["state"]["demos"])

    space = VariableSpace("coder", [DocumentVariable(name="state", default={"demos": []}),
                                    CompositeVariable(name="n_demos", compute=demos, depends_on=["state"])])
    space.add_constraint(lambda config: type(config["state"]["demos"]) is list and config["n_demos"] <= 2,
                         "at most two demos")
    assert space.validate({"state": OrderedDict(demos=[{"q": "1"}])}) == {"state": {"demos": [{"q": "1"}]},
                                                                          "n_demos": 1}
    assert type(seen[-1]) is dict  # an OrderedDict is stored, and read, as a plain dict
    with pytest.raises(VariableError, match="constraint 'at most two demos': not met"):
        space.validate({"state": {"demos": [1, 2, 3]}})


def test_set_takes_several_assignments_of_one_scope(monkeypatch):
    from otpy.cli import vars as vars_cli
    from otpy.wire.protocol import Outcome

    sent = []
    monkeypatch.setattr(vars_cli, "_set_through_node", lambda node, scope, values, dry: sent.append(
        (scope, values)) or Outcome("ok"))
    asked = []  # '@' asks the registry whether the variable is a document: here it is a choice
    monkeypatch.setattr(vars_cli, "_declared", lambda node, scope: asked.append(scope) or {
        "note": {"type": "choice", "choices": ["@not-a-document"]}})
    result = CliRunner().invoke(vars_group, ["set", "coder", 'program_state={"demos": [1]}', "lm_model=dummy",
                                             "note=@not-a-document"])
    assert result.exit_code == 0, result.output
    assert sent == [("coder", {"program_state": {"demos": [1]}, "lm_model": "dummy", "note": "@not-a-document"})]
    assert asked == ["coder"]
    twice = CliRunner().invoke(vars_group, ["set", "coder", "a=1", "a=2"])
    assert twice.exit_code == 2 and "a variable is given twice" in twice.output
    cas = CliRunner().invoke(vars_group, ["set", "coder", "a=1", "b=2", "--expected-version", "1"])
    assert cas.exit_code == 2 and "--expected-version sets one variable" in cas.output


@pytest.mark.parametrize("declared, sent", [
    ({"b": {"type": "choice", "choices": ["x=1"]}}, ("a", {"b": "x=1"})),  # SCOPE.NAME VALUE, as before
    ({}, ("a.b", {"x": 1})),  # a scope id may hold a dot: SCOPE NAME=VALUE
])
def test_a_dotted_first_argument_with_one_assignment_reads_as_the_registry_declares(monkeypatch, declared, sent):
    from otpy.cli import vars as vars_cli
    from otpy.wire.protocol import Outcome

    got = []
    monkeypatch.setattr(vars_cli, "_declared", lambda node, scope: declared if scope == "a" else {})
    monkeypatch.setattr(vars_cli, "_set_through_node", lambda node, scope, values, dry: got.append(
        (scope, values)) or Outcome("ok"))
    assert CliRunner().invoke(vars_group, ["set", "a.b", "x=1"]).exit_code == 0
    assert got == [sent]


def test_a_python_client_request_over_the_node_limit_is_refused_before_it_is_sent(node):
    """A frame over 1 MiB is dropped by the node's socket: the client used to wait its whole
    timeout for a reply that could not come; now ControlError (bad_request) at once, nothing sent."""
    too_big = {"demos": ["x" * 1000] * 1100}  # ~1.1 MB
    with otpy.connect(node.name, timeout=60) as client:  # before: TimeoutError after 60 s
        with pytest.raises(otpy.ControlError, match="the node takes at most 1,048,576") as refused:
            client.set_variables("global", {"program_state": too_big})
        assert refused.value.kind == "bad_request"
        assert json.loads(run(node.name, "get", "global.program_state").output) != too_big


@pytest.mark.parametrize("value", ["\ud800", 1 << 64])
def test_a_python_client_value_that_cannot_be_encoded_is_a_control_error(node, value):
    """Before: a raw UnicodeEncodeError / OverflowError from the encoder."""
    with otpy.connect(node.name) as client:
        with pytest.raises(otpy.ControlError, match="cannot be sent") as refused:
            client.set_variables("global", {"program_state": {"x": value}})
    assert refused.value.kind == "bad_request"
