"""Scoped values: resolution child > supervisors > global, explain, versions, compare-and-set, atomic batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from otpy.topology.load import parse_topology
from otpy.variables.scopes import GLOBAL, ScopedValue, ScopedValues, VariableSpace, VersionConflict, parents_of
from otpy.variables.types import CompositeVariable, FloatVariable, IntegerVariable, VariableError

KNN, SVM = "examples.digits.agents:KNN", "examples.digits.agents:SVM"

# root ─┬─ greeter
#       └─ team ─┬─ planner
#                └─ critic
TOPOLOGY = f"""
[supervisor]
[[supervisor.children]]
id = "greeter"
program = "otpy.agent.program:Program"

[[supervisor.children]]
id = "team"
type = "supervisor"

  [[supervisor.children.children]]
  id = "planner"
  program = "otpy.agent.program:Program"

  [[supervisor.children.children]]
  id = "critic"
  program = "otpy.agent.program:Program"

[variables.global]
classifier = {{ type = "module", modules = ["{KNN}", "{SVM}"], default = "{KNN}" }}
temperature = {{ type = "float", low = 0.0, high = 2.0, default = 0.7 }}

[variables.team]
timeout = {{ type = "float", low = 0.1, high = 10.0, default = 2.0 }}

[variables.critic]
timeout = {{ type = "float", low = 0.1, high = 1.0, default = 0.5 }}
"""


@pytest.fixture
def store() -> ScopedValues:
    topology = parse_topology(TOPOLOGY)
    return ScopedValues.for_tree(topology.raw_variables, topology.node.root)


def problems_of(call, *args, **kwargs) -> list[str]:
    with pytest.raises(VariableError) as caught:
        call(*args, **kwargs)
    return caught.value.problems


def test_scope_chain_follows_the_tree_to_global(store):
    assert store.parents == {"registry": "root", "greeter": "root", "team": "root", "planner": "team", "critic": "team"}
    assert store.scope_chain("critic") == ["critic", "team", "root", GLOBAL]
    assert store.scope_chain("greeter") == ["greeter", "root", GLOBAL]
    assert store.scope_chain("root") == ["root", GLOBAL]
    assert store.scope_chain(GLOBAL) == [GLOBAL]
    assert problems_of(store.scope_chain, "nobody") == [
        ("nobody: unknown child; expected 'global', a scope, or an id of the tree: "
        "'critic', 'greeter', 'planner', 'registry', 'root', 'team'")
    ]


def test_resolution_most_specific_declaration_wins(store):
    assert store.resolve("greeter") == {"classifier": KNN, "temperature": 0.7}
    assert store.resolve("planner") == {"classifier": KNN, "temperature": 0.7, "timeout": 2.0}
    assert store.resolve("critic") == {"classifier": KNN, "temperature": 0.7, "timeout": 0.5}


def test_a_global_value_reaches_every_child(store):
    store.set(GLOBAL, "classifier", SVM)
    assert {child: store.resolve(child)["classifier"] for child in ("greeter", "planner", "critic")} == {
        "greeter": SVM, "planner": SVM, "critic": SVM,
    }
    assert store.explain("critic", "classifier") == (GLOBAL, SVM, "set")


def test_a_supervisor_value_reaches_its_children_unless_they_declare_their_own(store):
    store.set("team", "timeout", 3.0)
    assert store.resolve("planner")["timeout"] == 3.0
    assert store.explain("planner", "timeout") == ("team", 3.0, "set")
    # critic declares its own timeout: its own default shadows the supervisor's value.
    assert store.resolve("critic")["timeout"] == 0.5
    assert store.explain("critic", "timeout") == ("critic", 0.5, "default")
    store.set("critic", "timeout", 0.9)
    assert store.explain("critic", "timeout") == ("critic", 0.9, "set")
    assert store.explain("greeter", "temperature") == (GLOBAL, 0.7, "default")


def test_explain_names_what_is_visible(store):
    assert problems_of(store.explain, "greeter", "timeout") == [
        ("timeout: unknown variable for 'greeter' (scopes 'greeter', 'root', 'global'); "
        "visible variables: 'classifier', 'temperature'")
    ]


def test_get_list_and_versions(store):
    assert store.get("team", "timeout") == ScopedValue("team", "timeout", 2.0, 0, "default")
    assert store.version == 0
    first = store.set("team", "timeout", 4)
    second = store.set(GLOBAL, "temperature", 1.0)
    assert (first, second, store.version) == (1, 2, 2)
    assert store.get("team", "timeout") == ScopedValue("team", "timeout", 4.0, 1, "set")  # int stored as float
    assert store.list("critic") == [ScopedValue("critic", "timeout", 0.5, 0, "default")]
    assert [(e.scope, e.name, e.version) for e in store.list()] == [
        (GLOBAL, "classifier", 0), (GLOBAL, "temperature", 2), ("team", "timeout", 1), ("critic", "timeout", 0),
    ]


def test_compare_and_set(store):
    assert store.set("team", "timeout", 3.0, expected_version=0) == 1  # 0: never set
    with pytest.raises(VersionConflict) as caught:
        store.set("team", "timeout", 5.0, expected_version=0)
    assert str(caught.value) == "scope 'team': timeout: expected version 0, but the current version is 1"
    assert caught.value.current == 1
    assert pickle.loads(pickle.dumps(caught.value)).current == 1
    assert store.get("team", "timeout").value == 3.0
    assert store.set("team", "timeout", 5.0, expected_version=1) == 2
    assert store.get("team", "timeout").value == 5.0


def test_writes_are_checked_against_the_scope_space(store):
    assert problems_of(store.set, "critic", "timeout", 5.0) == [
        "scope 'critic': timeout: got 5.0; expected a float in [0.1, 1.0]"
    ]
    assert problems_of(store.set, "planner", "timeout", 1.0) == [
        "planner: unknown scope; the scopes with variables are 'global', 'team', 'critic'"
    ]
    assert problems_of(store.set, "team", "retries", 1) == [
        "scope 'team': retries: unknown variable (got 1); space 'team' declares 'timeout'"
    ]
    assert problems_of(store.get, "team", "retries") == [
        "retries: unknown variable in scope 'team'; it declares 'timeout'"
    ]
    assert store.version == 0 and store.values == {GLOBAL: {}, "team": {}, "critic": {}}


def test_set_many_is_atomic(store):
    before = store.set("team", "timeout", 3.0)
    batch = {GLOBAL: {"classifier": SVM, "temperature": 9.0}, "team": {"timeout": 4.0}, "critic": {"timeout": 0.0}}
    assert problems_of(store.set_many, batch) == [
        "scope 'global': temperature: got 9.0; expected a float in [0.0, 2.0]",
        "scope 'critic': timeout: got 0.0; expected a float in [0.1, 1.0]",
    ]
    assert store.version == before
    assert store.resolve("planner") == {"classifier": KNN, "temperature": 0.7, "timeout": 3.0}
    versions = store.set_many({GLOBAL: {"classifier": SVM, "temperature": 1.5}, "team": {"timeout": 4.0}})
    assert versions == {GLOBAL: {"classifier": 2, "temperature": 2}, "team": {"timeout": 2}}
    assert store.resolve("planner") == {"classifier": SVM, "temperature": 1.5, "timeout": 4.0}
    assert store.set_many({}) == {} and store.version == 2


def test_a_write_is_checked_with_the_scope_constraints():
    space = VariableSpace(GLOBAL, [
        IntegerVariable(name="max_tokens", low=1, high=8192, default=256),
        IntegerVariable(name="context_window", low=1, high=8192, default=4096),
    ]).add_constraint(lambda c: c["max_tokens"] <= c["context_window"], "max_tokens <= context_window")
    store = ScopedValues({GLOBAL: space})
    assert problems_of(store.set, GLOBAL, "max_tokens", 5000) == [
        "scope 'global': constraint 'max_tokens <= context_window': not met"
    ]
    # Both at once is fine where one at a time is not.
    store.set_many({GLOBAL: {"max_tokens": 5000, "context_window": 8000}})
    assert store.resolve(GLOBAL) == {"max_tokens": 5000, "context_window": 8000}


def test_resolve_checks_every_constraint_of_the_chain_over_the_effective_values():
    top = VariableSpace(GLOBAL, [FloatVariable(name="temperature", low=0.0, high=2.0, default=1.8),
                                 FloatVariable(name="top_p", low=0.0, high=1.0, default=0.9)])
    top.add_constraint(lambda c: not (c["temperature"] > 1.5 and c["top_p"] < 0.3), "not hot and narrow")
    worker = VariableSpace("worker", [FloatVariable(name="top_p", low=0.0, high=1.0, default=0.2)])
    store = ScopedValues({GLOBAL: top, "worker": worker}, parents={"worker": "root"})
    assert problems_of(store.resolve, "worker") == ["scope 'global': constraint 'not hot and narrow': not met"]
    store.set(GLOBAL, "temperature", 1.0)
    assert store.resolve("worker") == {"temperature": 1.0, "top_p": 0.2}


def test_composites_are_computed_over_the_effective_values():
    top = VariableSpace(GLOBAL, [
        IntegerVariable(name="budget", low=1, high=100, default=10),
        CompositeVariable("tokens", lambda c: c["budget"] * 100, ["budget"]),
        CompositeVariable("tokens_k", lambda c: c["tokens"] / 1000, ["tokens"]),
    ])
    worker = VariableSpace("worker", [IntegerVariable(name="budget", low=1, high=5, default=5)])
    store = ScopedValues({GLOBAL: top, "worker": worker}, parents={"worker": GLOBAL})
    assert store.resolve("worker") == {"budget": 5, "tokens": 500, "tokens_k": 0.5}
    assert store.explain("worker", "tokens_k") == (GLOBAL, 0.5, "computed")
    assert store.get(GLOBAL, "tokens") == ScopedValue(GLOBAL, "tokens", 1000, 0, "computed")
    assert problems_of(store.set, GLOBAL, "tokens", 3) == [
        "scope 'global': tokens: got 3; expected no value: it is computed from 'budget'"
    ]


def test_a_variable_without_default_must_be_set_before_it_resolves():
    space = VariableSpace(GLOBAL, [FloatVariable(name="a", low=0.0, high=1.0),
                                   FloatVariable(name="b", low=0.0, high=1.0)])
    store = ScopedValues({GLOBAL: space})
    assert store.get(GLOBAL, "a") == ScopedValue(GLOBAL, "a", None, 0, "missing")
    store.set(GLOBAL, "a", 0.5)  # b still has no value: a partial scope can be written
    assert problems_of(store.resolve, GLOBAL) == ["b: missing; no value set in scope 'global' and no default"]
    store.set(GLOBAL, "b", 0.25)
    assert store.resolve(GLOBAL) == {"a": 0.5, "b": 0.25}


def test_parents_come_from_the_tree_and_a_dynamic_child_can_be_added():
    topology = parse_topology(TOPOLOGY)
    assert parents_of(topology.node.root) == {"registry": "root", "greeter": "root", "team": "root", "planner": "team", "critic": "team"}
    store = ScopedValues.for_tree(topology.raw_variables, topology.node.root)
    store.learn_chain("worker_7", ["pool_3", "team", "root"])
    assert store.scope_chain("worker_7") == ["worker_7", "pool_3", "team", "root", GLOBAL]
    assert store.resolve("worker_7")["timeout"] == 2.0
    store.learn_chain("stray", ["nowhere"])  # a chain that never reaches the tree teaches nothing
    store.learn_chain("critic", ["greeter"])  # nor does one of a child the tree knows
    assert "stray" not in store.parents and store.parents["critic"] == "team"
    looped = ScopedValues(store.spaces, {**store.parents, "team": "worker_7"})
    with pytest.raises(ValueError, match="parents form a cycle"):
        looped.scope_chain("worker_7")


def test_from_topology_is_for_tree_of_a_loaded_topology():
    topology = parse_topology(TOPOLOGY)
    store = ScopedValues.from_topology(topology)
    assert store.parents == parents_of(topology.node.root) and list(store.spaces) == [GLOBAL, "team", "critic"]


def test_the_values_written_since_they_were_last_taken_each_once_as_they_are_now(store):
    assert store.take_changes() == []
    store.set("team", "timeout", 3.0)
    store.set_many({GLOBAL: {"temperature": 1.5}, "team": {"timeout": 4.0}})
    with pytest.raises(VariableError):
        store.set("critic", "timeout", 9.0)  # refused: not a change
    assert store.take_changes() == [ScopedValue("team", "timeout", 4.0, 2, "set"),
                                    ScopedValue(GLOBAL, "temperature", 1.5, 2, "set")]
    assert store.take_changes() == []


def test_load_replaces_the_values_and_drops_what_the_declarations_refuse(store):
    store.set("team", "timeout", 3.0)
    dropped = store.load(7, [(GLOBAL, "temperature", 1, 5), ("team", "timeout", 99.0, 6),
                             ("gone", "x", 1, 2), (GLOBAL, "gone", 1, 3)])
    assert dropped == ["team.timeout: timeout: got 99.0; expected a float in [0.1, 10.0]"]
    assert store.version == 7 and store.take_changes() == []
    assert store.get(GLOBAL, "temperature") == ScopedValue(GLOBAL, "temperature", 1.0, 5, "set")  # a float now
    assert store.get("team", "timeout").reason == "default"
    assert store.set("team", "timeout", 3.0) == 8


def test_declaring_variables_and_what_they_would_break(store):
    no_default = IntegerVariable(name="retries", low=0, high=3)
    assert store.unresolvable_with("team", [no_default]) == ["critic", "planner", "team"]
    assert store.unresolvable_with("critic", [no_default]) == ["critic"]
    assert "retries" not in store.spaces["team"].variables  # the trial changed nothing
    store.declare("planner", [IntegerVariable(name="retries", low=0, high=3, default=1)])
    assert store.resolve("planner")["retries"] == 1
    assert problems_of(store.declare, "planner", [IntegerVariable(name="retries", low=0, high=5, default=2)]) == [
        "retries: already declared in space 'planner'"
    ]


def test_a_topology_with_a_scope_that_names_no_id_does_not_load():
    from otpy.topology.load import TopologyError

    with pytest.raises(TopologyError) as error:
        parse_topology(TOPOLOGY + '\n[variables.tema]\nx = { type = "bool", default = true }\n')
    assert error.value.problems == [
        ("<string>: variables.tema: unknown scope 'tema'; expected 'global' or an id of the topology: "
         "'critic', 'greeter', 'planner', 'root', 'team'")
    ]


def test_the_worked_example_in_the_docs():
    docs = (Path(__file__).parent.parent / "docs" / "variables.md").read_text()
    toml = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    topology = parse_topology(toml)
    store = ScopedValues.for_tree(topology.raw_variables, topology.node.root)
    assert store.resolve("greeter") == {"classifier": KNN, "C": 1.0}
    assert store.resolve("planner") == {"classifier": KNN, "C": 1.0, "timeout": 2.0}
    assert store.resolve("critic") == {"classifier": KNN, "C": 1.0, "timeout": 0.5}
    store.set(GLOBAL, "classifier", SVM)
    assert store.explain("critic", "classifier") == (GLOBAL, SVM, "set")
    store.set("team", "timeout", 3.0)
    assert store.resolve("planner")["timeout"] == 3.0
    assert store.explain("critic", "timeout") == ("critic", 0.5, "default")
    assert problems_of(store.set, "critic", "timeout", 5.0) == [
        "scope 'critic': timeout: got 5.0; expected a float in [0.1, 1.0]"
    ]
