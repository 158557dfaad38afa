"""What the optimizer searches: composites and constraints declared in the topology (enforced by
the registry and by ``spaces_from_topology``), and ``get_space``, the declared variables of every
scope, topology-declared and registered at run time (#13 section 1)."""

from __future__ import annotations

import pytest

from otpy.topology.load import parse_topology
from otpy.variables.client import RegistryClient
from otpy.variables.registry import Registry
from otpy.variables.space import spaces_from_topology
from otpy.variables.types import VariableError, variable_from_table, variable_table
from otpy.wire.registry_protocol import SpaceTables


def budget(config: dict) -> int:
    return config["max_tokens"] * 2


def tokens_fit(config: dict) -> bool:
    return config["max_tokens"] <= config["context"]


def always_fails(config: dict) -> bool:
    raise RuntimeError("no")


HERE = "tests.test_registry_space"
VARIABLES = {
    "global": {
        "classifier": {"type": "module", "modules": ["pkg.a:KNN", "pkg.a:SVM"], "default": "pkg.a:KNN"},
    },
    "llm": {
        "max_tokens": {"type": "integer", "low": 1, "high": 4096, "default": 256},
        "context": {"type": "integer", "low": 512, "high": 8192, "default": 1024},
        "budget": {"type": "composite", "compute": f"{HERE}:budget", "depends_on": ["max_tokens"],
                   "description": "twice the tokens"},
    },
}
CONSTRAINTS = {"llm": [{"check": f"{HERE}:tokens_fit", "description": "max_tokens <= context"}]}


def problems_of(call, *args, **kwargs) -> list[str]:
    with pytest.raises(VariableError) as raised:
        call(*args, **kwargs)
    return raised.value.problems


@pytest.fixture
def reg(tmp_path):
    registry = Registry()
    registry.setup({"variables": VARIABLES, "constraints": CONSTRAINTS, "bound": ["global.classifier"],
                    "path": str(tmp_path / "registry.db")}, {})
    yield registry
    registry.teardown()


class TestDeclared:
    def test_composites_and_constraints_from_the_topology_form(self):
        space = spaces_from_topology(VARIABLES, CONSTRAINTS)["llm"]
        assert space.validate({"max_tokens": 100}) == {"max_tokens": 100, "context": 1024, "budget": 200}
        assert problems_of(space.validate, {"max_tokens": 2000}) == ["constraint 'max_tokens <= context': not met"]

    def test_the_registry_enforces_them(self, reg):
        refused = reg.forward(op="set", scope="llm", name="max_tokens", value=2000)
        assert refused["error"] == "invalid" and "max_tokens <= context" in refused["problems"][0]
        assert reg.forward(op="set", scope="llm", name="max_tokens", value=300)["ok"]
        assert reg.forward(op="get", scope="llm", name="budget")["value"] == 600
        assert reg.forward(op="resolve", child="llm")["config"]["budget"] == 600

    @pytest.mark.parametrize("variables, constraints, problem", [
        ({"llm": {**VARIABLES["llm"], "budget": {**VARIABLES["llm"]["budget"], "compute": f"{HERE}:nope"}}}, None,
         f"variables.llm.budget.compute: cannot import '{HERE}:nope'"),
        ({"llm": {**VARIABLES["llm"], "budget": {**VARIABLES["llm"]["budget"], "compute": "no_such_pkg.m:f"}}}, None,
         "variables.llm.budget.compute: cannot import 'no_such_pkg.m:f': ModuleNotFoundError"),
        ({"llm": {**VARIABLES["llm"], "budget": {**VARIABLES["llm"]["budget"], "depends_on": ["temperature"]}}}, None,
         "variables.llm.budget.depends_on: got 'temperature'; expected variables of scope 'llm'"),
        ({"llm": {"a": {"type": "composite", "compute": f"{HERE}:budget", "depends_on": ["b"]},
                  "b": {"type": "composite", "compute": f"{HERE}:budget", "depends_on": ["a"]}}}, None,
         "variables.llm.b: composite dependencies form a cycle"),
        (VARIABLES, {"llm": [{"check": f"{HERE}:missing"}]}, f"constraints.llm[0].check: cannot import '{HERE}:missing'"),
        (VARIABLES, {"llm": [{"description": "x"}]}, "constraints.llm[0].check: missing; this key is required"),
        (VARIABLES, {"llm": [{"check": f"{HERE}:tokens_fit", "why": "x"}]},
         "constraints.llm[0].why: unknown key 'why'; accepted keys: 'check', 'description'"),
        (VARIABLES, {"llm": [{"check": f"{HERE}:tokens_fit", "description": 3}]},
         "constraints.llm[0].description: got 3; expected a string"),
        (VARIABLES, {"llm": {"check": f"{HERE}:tokens_fit"}}, "constraints.llm: got {'check'"),
        (VARIABLES, {"llm": ["x"]}, "constraints.llm[0]: got 'x'; expected a table such as"),
        (VARIABLES, {"team": [{"check": f"{HERE}:tokens_fit"}]},
         "constraints.team: scope 'team' declares no variables; a constraint checks the values of its scope"),
        (VARIABLES, {"llm": [{"check": f"{HERE}:always_fails", "description": "fails"}]},
         "variables.llm: with the defaults, constraint 'fails': raised RuntimeError: no"),
    ])
    def test_declaration_problems_name_the_key_path(self, variables, constraints, problem):
        (found,) = problems_of(spaces_from_topology, variables, constraints)
        assert found.startswith(problem), found

    def test_a_topology_file_declares_them(self):
        text = f"""
[supervisor]
[[supervisor.children]]
id = "llm"
program = "pkg.a:KNN"

[variables.llm]
max_tokens = {{ type = "integer", low = 1, high = 4096, default = 256 }}
budget = {{ type = "composite", compute = "{HERE}:budget", depends_on = ["max_tokens"] }}
"""
        topology = parse_topology(text)
        space = spaces_from_topology(topology.raw_variables)["llm"]
        assert space.validate({}) == {"max_tokens": 256, "budget": 512}

    @pytest.mark.parametrize("name", ["classifier", "max_tokens", "context", "budget"])
    def test_a_table_reads_back_as_the_same_variable(self, name):
        scope = "global" if name == "classifier" else "llm"
        variable = spaces_from_topology(VARIABLES)[scope].variables[name]
        assert variable_from_table(name, variable_table(variable)) == variable


class TestGetSpace:
    def test_every_scope_in_table_form_with_constraints_and_bound(self, reg):
        space = reg.forward(op="get_space")
        assert space["ok"] is True
        assert space["spaces"]["llm"] == {
            "max_tokens": {"type": "integer", "low": 1, "high": 4096, "step": 1, "default": 256},
            "context": {"type": "integer", "low": 512, "high": 8192, "step": 1, "default": 1024},
            "budget": {"type": "composite", "compute": f"{HERE}:budget", "depends_on": ["max_tokens"],
                       "description": "twice the tokens"},
        }
        assert space["spaces"]["global"]["classifier"] == {
            "type": "module", "modules": ["pkg.a:KNN", "pkg.a:SVM"], "default": "pkg.a:KNN"}
        assert space["constraints"] == {"llm": [{"check": f"{HERE}:tokens_fit", "description": "max_tokens <= context"}]}
        assert space["bound"] == ["global.classifier"]
        # what get_space gives declares the same spaces again
        again = spaces_from_topology(space["spaces"], space["constraints"])
        assert again["llm"].validate({"max_tokens": 7}) == {"max_tokens": 7, "context": 1024, "budget": 14}

    def test_spaces_registered_at_run_time_are_served_and_survive_a_restart(self, reg, tmp_path):
        table = {"type": "float", "low": 0.0, "high": 1.0, "log": False, "default": 0.5}
        assert reg.forward(op="register_space", scope="planner", variables={"p": table})["added"] == ["p"]
        composite = {"type": "composite", "compute": f"{HERE}:budget", "depends_on": ["max_tokens"]}
        assert reg.forward(op="register_space", scope="llm", variables={"double": composite})["added"] == ["double"]
        for registry in (reg, _reopened(tmp_path)):
            spaces = registry.forward(op="get_space")["spaces"]
            assert spaces["planner"] == {"p": table}
            assert spaces["llm"]["double"] == composite
        assert reg.forward(op="get_space", scope="planner")["spaces"] == {"planner": {"p": table}}

    def test_a_composite_registered_at_run_time_depends_on_its_scope(self, reg):
        composite = {"type": "composite", "compute": f"{HERE}:budget", "depends_on": ["temperature"]}
        refused = reg.forward(op="register_space", scope="llm", variables={"x": composite})
        assert refused["error"] == "invalid" and "variables.llm.x.depends_on" in refused["problems"][0]

    def test_an_unknown_scope_is_invalid_naming_the_scopes(self, reg):
        refused = reg.forward(op="get_space", scope="nowhere")
        assert refused["error"] == "invalid" and "'global', 'llm'" in refused["problems"][0]

    def test_the_client_returns_the_typed_reply(self, reg):
        class Local:
            def call(self, agent, inputs, timeout):
                return reg.forward(**inputs)

        space = RegistryClient(Local()).get_space("llm")
        assert isinstance(space, SpaceTables) and list(space.spaces) == ["llm"]
        assert space.constraints["llm"][0]["description"] == "max_tokens <= context"


def _reopened(tmp_path) -> Registry:
    registry = Registry()
    registry.setup({"variables": VARIABLES, "constraints": CONSTRAINTS, "path": str(tmp_path / "registry.db")}, {})
    return registry


def test_the_composite_and_constraint_example_in_the_docs(tmp_path, monkeypatch):
    import re
    import sys
    import tomllib
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "variables.md").read_text()
    (toml,) = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[constraints]" in b]
    (module,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith("# llm_rules.py")]
    (tmp_path / "llm_rules.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llm_rules", raising=False)
    declared = tomllib.loads(toml)
    space = spaces_from_topology(declared["variables"], declared["constraints"])["llm"]
    assert space.validate({"max_tokens": 300}) == {"max_tokens": 300, "context": 1024, "budget": 600}
    assert problems_of(space.validate, {"max_tokens": 2000}) == ["constraint 'max_tokens <= context': not met"]
