"""The spec rules of bound fields (#13): a ``Bound`` names ``SCOPE.NAME``; ``enabled`` is a bool or
a Bound; ``replicas`` only on a dynamic supervisor's template, a count or a Bound, and its
replica ids must be ids. One checker (``otpy.specs.rules``) for Python, the wire and files."""

from __future__ import annotations

import pytest

from otpy.specs.bindings import replica_ids
from otpy.specs.model import Bound, ChildSpec, DynamicSupervisorSpec, SupervisorSpec, from_template
from otpy.specs.rules import (
    SUN_PATH_MAX, located_problems, reconfigure_problems, replica_id_problems, spec_problems,
    template_start_problems,
)

pytestmark = pytest.mark.timeout(60)


def bound_worker(id, **kw):
    return ChildSpec(id=id, program=Bound("global.classifier"), **kw)


def pool(**templates):
    return DynamicSupervisorSpec(id="pool", templates=templates)


@pytest.mark.parametrize("variable", [
    "global.classifier", "pool.workers", "my.sup.x", "pool-2._n", "global.ключ",
])
def test_a_bound_variable_of_the_form_scope_name_is_accepted(variable):
    assert spec_problems(ChildSpec(id="c", program=Bound(variable))) == []


@pytest.mark.parametrize("variable, suggestion", [
    ("classifier", "global.classifier"),
    ("", "global.classifier"),
    ("global.", "global.classifier"),
    (".classifier", "global.classifier"),
    ("global.1st", "global.classifier"),
    ("global.a-b", "global.classifier"),
    ("../x.y", "global.classifier"),
    ("a/b.c", "global.classifier"),
    (7, "global.classifier"),
])
def test_a_bound_variable_that_is_not_scope_name_is_refused_naming_the_field(variable, suggestion):
    assert spec_problems(ChildSpec(id="c", program=Bound(variable))) == [
        f"child 'c': program.variable: got {variable!r}; expected SCOPE.NAME, e.g. {suggestion!r}"]


def test_the_same_bound_rule_for_enabled_and_replicas_with_their_own_example():
    (enabled,) = spec_problems(ChildSpec(id="c", command=("true",), enabled=Bound("on")))
    assert enabled == "child 'c': enabled.variable: got 'on'; expected SCOPE.NAME, e.g. 'global.on'"
    (replicas,) = spec_problems(pool(t=ChildSpec(id="t", command=("true",), replicas=Bound("pool/n"))))
    assert replicas == ("child 'pool.templates.t': replicas.variable: got 'pool/n'; expected SCOPE.NAME, "
                        "e.g. 'global.workers'")


def test_a_file_names_the_key_path_of_the_bound_field():
    tree = SupervisorSpec(id="root", children=(
        ChildSpec(id="a", command=("true",)), ChildSpec(id="b", command=("true",)),
        ChildSpec(id="c", program=Bound("classifier"))))
    assert [(p.field, p.message) for p in located_problems(tree, "supervisor")] == [
        ("supervisor.children[2].program.variable", "got 'classifier'; expected SCOPE.NAME, e.g. 'global.classifier'")]


@pytest.mark.parametrize("enabled", [True, False, Bound("global.on")])
def test_enabled_is_a_bool_or_a_bound(enabled):
    assert spec_problems(ChildSpec(id="c", command=("true",), enabled=enabled)) == []


@pytest.mark.parametrize("enabled", ["yes", 1, None, {"variable": "global.on"}])
def test_enabled_of_another_type_is_refused(enabled):
    (problem,) = spec_problems(ChildSpec(id="c", command=("true",), enabled=enabled))
    assert problem.startswith(f"child 'c': enabled: got {enabled!r}; expected true or false, or Bound('SCOPE.NAME')")


def test_a_bound_program_and_a_command_is_still_exactly_one_of():
    (problem,) = spec_problems(ChildSpec(id="c", program=Bound("global.p"), command=("true",)))
    assert problem == "child 'c': got both 'program' and 'command'; expected exactly one of them"
    (notify,) = spec_problems(ChildSpec(id="c", program=Bound("global.p"), ready="notify"))
    assert notify.startswith("child 'c': ready: got 'notify' with a program")


@pytest.mark.parametrize("replicas", [0, 1, 3, 1_000_000, Bound("pool.workers")])
def test_a_template_takes_replicas_a_count_or_a_bound(replicas):
    assert spec_problems(pool(w=ChildSpec(id="w", command=("true",), replicas=replicas))) == []


@pytest.mark.parametrize("replicas", [-1, True, 2.0, "3", 1_000_001])
def test_replicas_of_another_value_are_refused(replicas):
    (problem,) = spec_problems(pool(w=ChildSpec(id="w", command=("true",), replicas=replicas)))
    assert problem.startswith(f"child 'pool.templates.w': replicas: got {replicas!r}; expected an integer >= 0 "
                              "and <= 1000000, or Bound('SCOPE.NAME')")


@pytest.mark.parametrize("tree, who", [
    (ChildSpec(id="c", command=("true",), replicas=2), "child 'c'"),
    (SupervisorSpec(id="s", children=(ChildSpec(id="c", command=("true",), replicas=Bound("s.n")),)), "child 'c'"),
])
def test_replicas_anywhere_but_a_template_are_refused_saying_where_they_belong(tree, who):
    (problem,) = spec_problems(tree)
    assert problem.startswith(f"{who}: replicas: got ")
    assert "expected no replicas: only a dynamic supervisor's template has replicas" in problem


def test_a_child_started_under_a_dynamic_supervisor_with_replicas_is_refused_unless_it_is_a_replica():
    owner = pool(w=ChildSpec(id="w", command=("true",), replicas=2))
    (problem,) = spec_problems(ChildSpec(id="x", command=("true",), replicas=2), owner)
    assert problem.startswith("child 'x': replicas: got 2")
    # the replica children the supervisor makes from its template (from_template keeps the field)
    assert spec_problems(from_template(owner.templates["w"], "w-2"), owner) == []
    assert reconfigure_problems("w-1", from_template(owner.templates["w"], "w-1"), owner) == []


def test_start_child_from_a_template_with_replicas_checks_the_one_child():
    owner = pool(w=ChildSpec(id="w", command=("true",), replicas=Bound("pool.workers")))
    assert template_start_problems(owner, "w", "extra", {}) == []


def test_replica_ids_must_be_ids():
    name = "t" * 62  # 't...t-1' fits in 64 characters, 't...t-100' does not
    assert spec_problems(pool(**{name: ChildSpec(id=name, command=("true",), replicas=9)})) == []
    (problem,) = spec_problems(pool(**{name: ChildSpec(id=name, command=("true",), replicas=100)}))
    last = replica_ids(name, 100)[-1]
    assert problem.startswith(f"child 'pool.templates.{name}': replicas: got 100: the replica id {last!r} is not "
                              "an id (expected a name of 1 to 64")
    assert problem.endswith("; expected fewer replicas or a shorter template name")


def test_a_bound_count_checks_the_first_replica_id():
    name = "t" * 63  # 't...t-1' is 65 characters
    (problem,) = spec_problems(pool(**{name: ChildSpec(id=name, command=("true",), replicas=Bound("pool.n"))}))
    assert f"the replica id '{name}-1' is not an id" in problem


def test_replica_ids_must_fit_a_socket_path():
    folder = "/r/" + "n" * (SUN_PATH_MAX - len("/r//agents/w-9.sock"))  # exactly fits for 'w-9'
    owner = SupervisorSpec(id="root", children=(pool(w=ChildSpec(id="w", command=("true",), replicas=9)),))
    assert spec_problems(owner, node_folder=folder) == []
    bigger = SupervisorSpec(id="root", children=(pool(w=ChildSpec(id="w", command=("true",), replicas=10)),))
    (problem,) = spec_problems(bigger, node_folder=folder)
    assert problem.startswith("child 'pool.templates.w': replicas: got 10: the replica id 'w-10': its socket ")
    assert "would be 108 bytes long" in problem


def test_replica_id_problems_is_one_rule_for_a_count():
    assert replica_id_problems("w", 0) == []
    assert replica_id_problems("w", 5) == []
    assert [p.field for p in replica_id_problems("w" * 64, 1)] == ["replicas"]


def test_a_bound_spec_from_the_wire_goes_through_the_same_rules():
    parent = SupervisorSpec(id="root")
    assert spec_problems(bound_worker("c"), parent) == []
    assert spec_problems(ChildSpec(id="c", program=Bound("nope")), parent) == [
        "child 'c': program.variable: got 'nope'; expected SCOPE.NAME, e.g. 'global.nope'"]
    assert reconfigure_problems("c", ChildSpec(id="c", program=Bound("x")), parent) == [
        "child 'c': program.variable: got 'x'; expected SCOPE.NAME, e.g. 'global.x'"]


def test_plain_replicas_above_max_children_are_refused_at_the_template_that_crosses_it():
    w, v = (ChildSpec(id=t, command=("true",), replicas=2) for t in "wv")
    assert spec_problems(DynamicSupervisorSpec(id="pool", max_children=4, templates={"w": w, "v": v})) == []
    (problem,) = spec_problems(DynamicSupervisorSpec(id="pool", max_children=3, templates={"w": w, "v": v}))
    assert problem == ("dynamic supervisor 'pool': templates.v.replicas: got 2 (4 replicas with the templates "
                       "before it); expected at most max_children (3) in all: lower replicas or raise max_children")
    (located,) = located_problems(DynamicSupervisorSpec(id="pool", max_children=1, templates={"w": w}), "supervisor")
    assert located.field == "supervisor.templates.w.replicas"


def test_a_bound_count_is_left_to_its_variables_high():
    bound = ChildSpec(id="w", command=("true",), replicas=Bound("pool.workers"))
    assert spec_problems(DynamicSupervisorSpec(id="pool", max_children=0, templates={"w": bound})) == []
