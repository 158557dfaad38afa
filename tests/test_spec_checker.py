"""One spec checker for topology files, Python specs and the wire (``otpy.specs.rules``): the
same rule gives the same message whoever built the spec; a file's names its key path, a
runtime spec's names the child. One walk over specs (``otpy.specs.model.places``)."""

from __future__ import annotations

import pytest

from otpy.specs.model import (
    ChildSpec, DynamicSupervisorSpec, SupervisorSpec, is_import_target, places, walk,
)
from otpy.specs.rules import (
    SUN_PATH_MAX, id_problem, located_problems, reconfigure_problems, significance_problem, spec_problems,
)
from otpy.topology.load import TopologyError, parse_topology

pytestmark = pytest.mark.timeout(60)


def worker(id, **kw):
    return ChildSpec(id=id, command=("true",), **kw)


def file_problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, source="t.toml")
    return caught.value.problems


# Each case: a file and the spec it describes, with the key path and the child's name of the
# one problem they share. The file says where, the runtime says who; the rest is the same.
SAME_RULE = [
    (  # significance in a dynamic supervisor's template
        '[supervisor]\n[[supervisor.children]]\nid = "pool"\ntype = "dynamic_supervisor"\n'
        '[supervisor.children.templates.echo]\ncommand = ["true"]\nrestart = "transient"\nsignificant = true\n',
        SupervisorSpec(id="root", children=(DynamicSupervisorSpec(id="pool", templates={
            "echo": worker("echo", restart="transient", significant=True)}),)),
        "supervisor.children[0].templates.echo.significant", "child 'pool.templates.echo': significant"),
    (  # significance under a supervisor whose auto_shutdown is 'never'
        '[supervisor]\n[[supervisor.children]]\nid = "a"\ncommand = ["true"]\nrestart = "temporary"\n'
        'significant = true\n',
        SupervisorSpec(id="root", children=(worker("a", restart="temporary", significant=True),)),
        "supervisor.children[0].significant", "child 'a': significant"),
    (  # significance with restart 'permanent'
        '[supervisor]\nauto_shutdown = "any_significant"\n[[supervisor.children]]\nid = "a"\ncommand = ["true"]\n'
        'significant = true\n',
        SupervisorSpec(id="root", auto_shutdown="any_significant", children=(worker("a", significant=True),)),
        "supervisor.children[0].significant", "child 'a': significant"),
    (  # a value rule
        '[supervisor]\n[[supervisor.children]]\nid = "a"\ncommand = ["true"]\nenv = { "A=B" = "1" }\n',
        SupervisorSpec(id="root", children=(worker("a", env={"A=B": "1"}),)),
        'supervisor.children[0].env."A=B"', "child 'a': env.\"A=B\""),
]


@pytest.mark.parametrize("text, spec, key_path, who", SAME_RULE, ids=["template", "never", "permanent", "env"])
def test_a_file_and_a_python_spec_get_the_same_message(text, spec, key_path, who):
    (in_file,) = file_problems(text)
    (at_runtime,) = spec_problems(spec)
    assert in_file.startswith(f"t.toml: {key_path}: got "), in_file
    assert at_runtime.startswith(f"{who}: got "), at_runtime
    assert in_file.removeprefix(f"t.toml: {key_path}: ") == at_runtime.removeprefix(f"{who}: ")


def test_significance_problem_is_the_rule_the_checker_uses():
    child = worker("a", restart="transient", significant=True)
    assert significance_problem(child, SupervisorSpec(id="s", auto_shutdown="any_significant")) is None
    assert significance_problem(worker("a"), DynamicSupervisorSpec(id="d")) is None
    assert significance_problem(child, DynamicSupervisorSpec(id="d")) == (
        "child 'a': significant: got true under dynamic supervisor 'd'; expected false "
        "(dynamic supervisors never auto-shut down)")
    assert spec_problems(child, SupervisorSpec(id="s")) == [significance_problem(child, SupervisorSpec(id="s"))]


def test_an_id_used_twice_in_a_file_names_where_it_was_first_used():
    problems = file_problems('[supervisor]\n[[supervisor.children]]\nid = "a"\ncommand = ["true"]\n'
                             '[[supervisor.children]]\nid = "t"\ntype = "supervisor"\n'
                             '  [[supervisor.children.children]]\n  id = "a"\n  command = ["true"]\n')
    assert problems == ["t.toml: supervisor.children[1].children[0].id: got 'a' used twice in this topology, "
                        "first at supervisor.children[0].id (OTP's duplicate_child_name); expected ids unique in "
                        "the node"]


def test_located_problems_put_every_problem_at_its_key_path():
    spec = SupervisorSpec(id="s", children=(worker("a", shutdown=-1.0), worker("a")))
    assert [(p.field, p.message.split(";")[0]) for p in located_problems(spec, "supervisor")] == [
        ("supervisor.children[0].shutdown", "got -1.0"),
        ("supervisor.children[1].id", "got 'a' used twice in this topology, first at supervisor.children[0].id "
                                      "(OTP's duplicate_child_name)"),
    ]


def test_a_node_folder_adds_each_agent_socket_to_the_checks():
    folder = "/r/" + "n" * (SUN_PATH_MAX - len("/r//agents/a.sock"))  # exactly fits for id 'a'
    assert spec_problems(worker("a"), node_folder=folder) == []
    (problem,) = spec_problems(worker("ab"), node_folder=folder)
    assert problem.startswith("child 'ab': id: got 'ab': its socket ") and "would be 108 bytes long" in problem
    assert spec_problems(worker("ab")) == []  # no folder: no socket rule


def test_an_id_arriving_alone_is_checked_by_the_name_rule_and_its_socket():
    assert id_problem("worker-1") is None
    assert id_problem("../control").startswith("id '../control'; expected a name")
    assert id_problem(7).startswith("id 7; expected a name")
    folder = "/r/" + "n" * (SUN_PATH_MAX - len("/r//agents/a.sock"))
    assert id_problem("a", folder) is None
    assert id_problem("ab", folder).startswith("id 'ab': its socket ")


def test_reconfigure_problems_check_the_source_id_and_the_target():
    parent = SupervisorSpec(id="s")
    assert reconfigure_problems("a", worker("a"), parent) == []
    assert reconfigure_problems("../a", worker("a"), parent)[0].startswith("id '../a'; expected a name")
    assert reconfigure_problems("a", worker("b"), parent) == [
        "child 'b': id: got 'b'; expected 'a', the id of the child it replaces"]
    assert reconfigure_problems("a", worker("a", significant=True, restart="transient"),
                                DynamicSupervisorSpec(id="d"))[0].startswith(
        "child 'a': significant: got true under dynamic supervisor 'd'")


def test_one_walk_gives_paths_parents_and_templates():
    tree = SupervisorSpec(id="s", children=(
        worker("a"), DynamicSupervisorSpec(id="d", templates={"x y": worker("t")})))
    assert [(p.path, p.parent and p.parent.id, p.spec.id, p.template) for p in places(tree, "supervisor")] == [
        ("supervisor", None, "s", None),
        ("supervisor.children[0]", "s", "a", None),
        ("supervisor.children[1]", "s", "d", None),
        ('supervisor.children[1].templates."x y"', "d", "t", "x y"),
    ]
    assert [(parent, spec.id) for parent, spec in walk(tree)] == [(None, "s"), ("s", "a"), ("s", "d")]


@pytest.mark.parametrize("value, ok", [
    ("examples.hello.agents:Greeter", True), ("m:f", True), ("m.n:A.b", True),
    ("m", False), ("m:", False), (":f", False), ("1m:f", False), ("m:f:g", False), (None, False),
])
def test_an_import_target_is_module_colon_attr(value, ok):
    assert is_import_target(value) is ok
