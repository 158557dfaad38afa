"""Topology files bind fields to variables (#13): ``program``, ``enabled`` and a template's
``replicas`` take ``{ variable = "SCOPE.NAME" }``; the loader checks that the variable is
declared, of the field's type, with a default, and (``otpy validate``) that every module a bound
program may run imports. Problems name the file's own key paths."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from otpy.cli.main import main
from otpy.specs.bindings import bindings
from otpy.specs.model import Bound
from otpy.topology import load as load_module
from otpy.topology.load import TopologyError, check_programs, load_topology, parse_topology, topology_json_schema

pytestmark = pytest.mark.timeout(60)

HERE = Path(__file__).parent
DOCS = HERE.parent / "docs" / "topology.md"
KNN, SVM, TREE = (f"examples.digits.agents:{name}" for name in ("KNN", "SVM", "Tree"))
VARIABLES = f"""
[variables.global]
classifier = {{ type = "module", modules = ["{KNN}", "{SVM}"], default = "{KNN}" }}
C = {{ type = "float", low = 0.1, high = 10.0, default = 1.0 }}
use_cache = {{ type = "bool", default = false }}
nodefault = {{ type = "module", modules = ["{KNN}"] }}
[variables.pool]
workers = {{ type = "integer", low = 0, high = 8, default = 2 }}
signed = {{ type = "integer", low = -1, high = 8, default = 2 }}
"""


@pytest.fixture(autouse=True)
def forget_imports(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [name for name in sys.modules if name.startswith(("examples", "otpy_bind_"))]:
        del sys.modules[name]


def tree(first: str = "", template: str = "") -> str:
    """A root with one worker (``first``'s keys) and a dynamic supervisor 'pool' with template 'clf'."""
    return f"""
[supervisor]
[[supervisor.children]]
id = "a"
{first or f'program = "{KNN}"'}
[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
[supervisor.children.templates.clf]
{template or f'program = "{KNN}"'}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, source="t.toml")
    return caught.value.problems


# --- the file's forms ----------------------------------------------------------------------


def test_program_enabled_and_replicas_take_a_variable_table():
    text = tree('program = { variable = "global.classifier" }\nenabled = { variable = "global.use_cache" }',
                'program = { variable = "global.classifier" }\nreplicas = { variable = "pool.workers" }') + VARIABLES
    root = parse_topology(text).file_root
    worker, clf = root.children[0], root.children[1].templates["clf"]
    assert (worker.program, worker.enabled) == (Bound("global.classifier"), Bound("global.use_cache"))
    assert (clf.program, clf.replicas, clf.enabled) == (Bound("global.classifier"), Bound("pool.workers"), True)


def test_plain_values_keep_working():
    root = parse_topology(tree("command = [\"true\"]\nenabled = false", f'program = "{KNN}"\nreplicas = 3')).file_root
    assert root.children[0].enabled is False and root.children[1].templates["clf"].replicas == 3


def test_an_unknown_key_in_the_variable_table_is_an_error_listing_the_accepted_one():
    (problem,) = problems_of(tree('program = { variable = "global.classifier", scope = "x" }') + VARIABLES)
    assert problem == "t.toml: supervisor.children[0].program.scope: unknown key 'scope'; accepted keys: 'variable'"


def test_a_variable_table_without_variable_names_the_missing_key():
    (problem,) = problems_of(tree('enabled = {}\ncommand = ["true"]'))
    assert problem == "t.toml: supervisor.children[0].enabled.variable: missing; this key is required"


@pytest.mark.parametrize("line, path, expected", [
    ("program = 5", "program", "got 5; expected a string, or { variable = \"SCOPE.NAME\" }"),
    ('program = "nope"', "program",
     "got 'nope'; expected 'module:attr', e.g. 'examples.hello.agents:Greeter', or { variable = \"SCOPE.NAME\" }"),
    ('enabled = "yes"\ncommand = ["true"]', "enabled", "got 'yes'; expected true or false, or { variable = \"SCOPE.NAME\" }"),
    ('program = { variable = 5 }', "program.variable", "got 5; expected a string"),
])
def test_a_bindable_field_of_the_wrong_type_says_both_forms(line, path, expected):
    (problem,) = problems_of(tree(line))
    assert problem == f"t.toml: supervisor.children[0].{path}: {expected}"


def test_a_bound_variable_not_of_the_form_scope_name_is_the_spec_rule_at_its_key_path():
    (problem,) = problems_of(tree(template='program = { variable = "classifier" }') + VARIABLES)
    assert problem == ("t.toml: supervisor.children[1].templates.clf.program.variable: got 'classifier'; "
                       "expected SCOPE.NAME, e.g. 'global.classifier'")


def test_replicas_on_a_worker_child_is_refused_saying_where_it_belongs():
    (problem,) = problems_of(tree('command = ["true"]\nreplicas = 2'))
    assert problem.startswith("t.toml: supervisor.children[0].replicas: got 2 on a child; expected no replicas: "
                              "only a dynamic supervisor's template has replicas")


def test_negative_replicas_are_refused():
    (problem,) = problems_of(tree(template='command = ["true"]\nreplicas = -1'))
    assert problem == ("t.toml: supervisor.children[1].templates.clf.replicas: got -1; expected a number >= 0, "
                       "or { variable = \"SCOPE.NAME\" }")


def test_the_schema_shows_the_bound_forms_and_constraints():
    schema = topology_json_schema()
    template = schema["$defs"]["TemplateTable"]["properties"]
    for name in ("program", "enabled", "replicas"):
        assert "#/$defs/BoundTable" in json.dumps(template[name]), name
    assert schema["$defs"]["BoundTable"]["required"] == ["variable"]
    assert "constraints" in schema["properties"]
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0 and '"BoundTable"' in result.output


# --- [constraints] -------------------------------------------------------------------------


def test_constraints_are_kept_and_given_to_the_registry_placement(monkeypatch):
    seen = {}

    def placed(root, variables, constraints=None):
        seen["constraints"] = constraints
        return root

    monkeypatch.setattr(load_module, "with_registry", placed)
    text = tree() + VARIABLES + '[constraints]\nglobal = [{ check = "builtins:bool", description = "any" }]\n'
    topology = parse_topology(text)
    assert topology.raw_constraints == {"global": [{"check": "builtins:bool", "description": "any"}]}
    assert seen["constraints"] == topology.raw_constraints


def test_without_constraints_the_placement_is_called_as_before(monkeypatch):
    calls = []
    monkeypatch.setattr(load_module, "with_registry", lambda root, variables: calls.append(variables) or root)
    assert parse_topology(tree() + VARIABLES).raw_constraints == {}
    assert len(calls) == 1


@pytest.mark.parametrize("entry, problem", [
    ('{ check = "builtins:bool", description = "x", when = 1 }',
     "constraints.global[0].when: unknown key 'when'; accepted keys: 'check', 'description'"),
    ('{ check = "nope", description = "x" }',
     "constraints.global[0].check: got 'nope'; expected 'module:attr', e.g. 'examples.hello.agents:Greeter'"),
    ('{ check = "builtins:bool" }', "constraints.global[0].description: missing; this key is required"),
])
def test_a_bad_constraint_entry_names_its_key(entry, problem):
    assert problems_of(tree() + VARIABLES + f"[constraints]\nglobal = [{entry}]\n") == [f"t.toml: {problem}"]


# --- cross-checks: the variable a field is bound to ----------------------------------------


@pytest.mark.parametrize("first, template, path, message", [
    ('program = { variable = "global.clasifier" }', "", "supervisor.children[0].program.variable",
     "global.clasifier is not declared; declared in global: 'classifier', 'C', 'use_cache', 'nodefault'"),
    ("", 'program = { variable = "global.clasifier" }', "supervisor.children[1].templates.clf.program.variable",
     "global.clasifier is not declared; declared in global: 'classifier', 'C', 'use_cache', 'nodefault'"),
    ('program = { variable = "a.classifier" }', "", "supervisor.children[0].program.variable",
     "a.classifier is not declared: this file has no [variables.a] table (scopes with variables: 'global', "
     "'pool'); expected [variables.a] classifier = { type = \"module\", ..., default = ... }"),
    ('program = { variable = "global.C" }', "", "supervisor.children[0].program.variable",
     "global.C is a float variable; expected a module variable (program takes the program to run)"),
    (f'program = "{KNN}"\nenabled = {{ variable = "global.classifier" }}', "", "supervisor.children[0].enabled.variable",
     "global.classifier is a module variable; expected a bool variable (enabled takes true or false)"),
    ("", f'program = "{KNN}"\nreplicas = {{ variable = "global.use_cache" }}',
     "supervisor.children[1].templates.clf.replicas.variable",
     "global.use_cache is a bool variable; expected an integer variable (replicas takes a count)"),
    ('program = { variable = "global.nodefault" }', "", "supervisor.children[0].program.variable",
     "global.nodefault has no default; expected one: the node must know what to run before anything is set "
     "(add default = ... to variables.global.nodefault)"),
    ("", f'program = "{KNN}"\nreplicas = {{ variable = "pool.signed" }}',
     "supervisor.children[1].templates.clf.replicas.variable",
     "pool.signed may be -1 (its low); expected low >= 0: replicas counts children"),
])
def test_a_bound_field_must_name_a_declared_variable_of_its_type_with_a_default(first, template, path, message):
    assert problems_of(tree(first, template) + VARIABLES) == [f"t.toml: {path}: {message}"]


def test_a_bound_field_in_a_file_without_variables_says_so():
    (problem,) = problems_of(tree('program = { variable = "global.classifier" }'))
    assert problem == ("t.toml: supervisor.children[0].program.variable: global.classifier is not declared: this "
                       "file has no [variables] table; expected [variables.global] classifier = "
                       "{ type = \"module\", ..., default = ... }")


def test_a_bound_replica_count_checks_the_ids_of_its_highest_value():
    name = "t" * 62
    text = f"""
[supervisor]
[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
[supervisor.children.templates.{name}]
command = ["true"]
replicas = {{ variable = "pool.n" }}
[variables.pool]
n = {{ type = "integer", low = 0, high = HIGH, default = 1 }}
"""
    parse_topology(text.replace("HIGH", "9"))
    (problem,) = problems_of(text.replace("HIGH", "10"))
    assert problem.startswith(f"t.toml: supervisor.children[0].templates.{name}.replicas: got 'pool.n up to 10': "
                              f"the replica id '{name}-10' is not an id")


def test_a_bound_replica_count_whose_high_exceeds_max_children_is_refused_at_the_field():
    text = tree(template='replicas = { variable = "pool.workers" }\nprogram = "' + KNN + '"') + VARIABLES
    with_limit = text.replace('type = "dynamic_supervisor"', 'type = "dynamic_supervisor"\nmax_children = LIMIT')
    parse_topology(with_limit.replace("LIMIT", "8"), source="t.toml")
    (problem,) = problems_of(with_limit.replace("LIMIT", "7"))
    assert problem == ("t.toml: supervisor.children[1].templates.clf.replicas: got pool.workers up to 8 (its high); "
                       "expected at most max_children (7) of supervisor 'pool': lower the variable's high or raise "
                       "max_children")


# --- validate: imports, at the file's own key paths ------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return path


def test_every_module_a_bound_program_may_run_is_import_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    text = tree('program = { variable = "global.classifier" }') + VARIABLES.replace(
        f'modules = ["{KNN}", "{SVM}"]', f'modules = ["{KNN}", "{SVM}", "examples.digits.agents:Nope"]')
    with pytest.raises(TopologyError) as caught:
        load_topology(write(tmp_path, text))
    (problem,) = caught.value.problems
    assert problem.startswith(f"{tmp_path / 't.toml'}: variables.global.classifier.modules[2]: ")
    assert "Nope" in problem


def test_a_module_variable_no_field_is_bound_to_is_not_imported(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    text = tree() + VARIABLES.replace(f'modules = ["{KNN}"]', 'modules = ["examples.digits.agents:Nope"]')
    assert load_topology(write(tmp_path, text)).node.root.children[0].id == "registry"


def test_import_problems_name_the_files_own_paths_with_a_registry(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    topology = parse_topology(tree('program = "examples.digits.agents:Nope"') + VARIABLES,
                              source=str(tmp_path / "t.toml"))
    assert topology.node.root.children[0].id == "registry"
    (problem,) = check_programs(topology)
    assert problem.startswith(f"{tmp_path / 't.toml'}: supervisor.children[0].program: ")


def test_machine_problems_name_the_files_own_paths_with_a_registry(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    result = CliRunner().invoke(main, ["validate", str(write(tmp_path, tree('command = ["otpy-no-such-command"]')
                                                                   + VARIABLES))])
    assert result.exit_code == 2
    assert "supervisor.children[0].command[0]: got 'otpy-no-such-command', not found" in result.output


def test_validate_accepts_a_bound_file_and_refuses_an_undeclared_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    good = write(tmp_path, tree('program = { variable = "global.classifier" }') + VARIABLES)
    assert CliRunner().invoke(main, ["validate", str(good)]).exit_code == 0
    bad = write(tmp_path, tree('program = { variable = "global.clasifier" }') + VARIABLES)
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "supervisor.children[0].program.variable: global.clasifier is not declared" in result.output


# --- the docs' example -----------------------------------------------------------------------


def test_the_docs_binding_example_loads_with_its_programs(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    section = DOCS.read_text().split("## Binding fields to variables", 1)[1]
    example = re.search(r"```toml\n(.*?)```", section, re.S)[1]
    topology = load_topology(write(tmp_path, example))
    assert {binding.bound.variable for binding in bindings(topology.file_root)} >= {
        "global.classifier", "pool.workers"}
