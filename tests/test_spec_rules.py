"""Specs built in Python or sent over the wire are checked like a topology file is: a bad
spec starts nothing and the answer names the child and the field (OTP's check_childspecs)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import psutil
import pytest

import otpy
from otpy.specs import rules as _spec_rules
from otpy.specs.rules import node_problems, spec_problems
from otpy.specs.model import NodeSpec
from tests.helpers import sleeper, unique_name

pytestmark = pytest.mark.timeout(60)

ChildSpec, SupervisorSpec, DynamicSupervisorSpec = otpy.ChildSpec, otpy.SupervisorSpec, otpy.DynamicSupervisorSpec


def worker(id, **kw):
    return ChildSpec(id=id, command=("true",), **kw)


@pytest.mark.parametrize("spec, expected", [
    (SupervisorSpec(id="s", children=(worker("a"), worker("a"))), "child 'a': id: got 'a' used twice"),
    (SupervisorSpec(id="s", children=(SupervisorSpec(id="t", children=(worker("s"),)),)), "child 's': id: got 's' used twice"),
    (ChildSpec(id="a"), "child 'a': got neither 'program' nor 'command'; expected exactly one"),
    (ChildSpec(id="a", program="m:f", command=("x",)), "child 'a': got both 'program' and 'command'; expected exactly one"),
    (ChildSpec(id="a", command=()), "child 'a': command: got (); expected the program to run"),
    (ChildSpec(id="a", program="m:f", ready="notify"), "child 'a': ready: got 'notify' with a program"),
    (worker("a", shutdown=-1.0), "child 'a': shutdown: got -1.0"),
    (worker("a", start_timeout=0.0), "child 'a': start_timeout: got 0.0"),
    (worker("a", max_rss=0.0), "child 'a': max_rss: got 0.0"),
    (SupervisorSpec(id="s", max_seconds=0), "supervisor 's': max_seconds: got 0"),
    (SupervisorSpec(id="s", max_restarts=-1), "supervisor 's': max_restarts: got -1"),
    (DynamicSupervisorSpec(id="d", max_children=-1), "dynamic supervisor 'd': max_children: got -1"),
    (DynamicSupervisorSpec(id="d", templates={"t": ChildSpec(id="")}), "child 'd.templates.t': got neither"),
    (SupervisorSpec(id="s", auto_shutdown="any_significant",
                    children=(worker("a", significant=True),)), "child 'a': significant: got true with restart 'permanent'"),
    (SupervisorSpec(id="s", children=(worker("a", significant=True, restart="transient"),)),
     "child 'a': significant: got true under 's', whose auto_shutdown is 'never'"),
    (SupervisorSpec(id="s", children=(ChildSpec(id="", command=("true",)),)), "child '': id: got ''; expected a name"),
])
def test_each_rule_names_the_child_and_the_field(spec, expected):
    problems = spec_problems(spec)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_good_spec_has_no_problem():
    spec = SupervisorSpec(id="s", auto_shutdown="any_significant", children=(
        worker("a", significant=True, restart="transient"), DynamicSupervisorSpec(id="d", templates={"t": worker("x")})))
    assert spec_problems(spec) == []


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".."])
def test_a_node_name_is_a_folder_name(name):
    assert node_problems(NodeSpec(name=name, root=SupervisorSpec(id="root")))[0].startswith("node name")


def test_a_node_with_duplicate_ids_does_not_start_and_leaves_nothing():
    root = SupervisorSpec(id="root", children=(sleeper("x"), sleeper("x")))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(otpy.NodeStartError, match="child 'x': id: got 'x' used twice"):
        otpy.Node.from_spec(root, name=unique_name("dup")).start()
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_start_child_and_reconfigure_of_a_bad_spec_are_invalid_and_start_nothing():
    root = SupervisorSpec(id="root", children=(DynamicSupervisorSpec(id="pool"),))
    with otpy.Node.from_spec(root, name=unique_name("badspec")) as node:  # __enter__ starts it
        nest = SupervisorSpec(id="nest", children=(sleeper("x"), sleeper("x")))
        result = node.start_child("root", nest)
        assert result.outcome == "invalid" and "child 'x': id: got 'x' used twice" in result.detail
        assert [c.id for c in node.which_children("root")] == ["pool"]
        assert node.start_child("pool", sleeper("agent")).ok
        bad = ChildSpec(id="agent", command=("true",), shutdown=-5.0)
        result = node.reconfigure("pool", "agent", bad)
        assert result.outcome == "invalid" and "shutdown: got -5.0" in result.detail
        with otpy.connect(node.name) as client:  # the same over the control socket
            assert client.start_child("root", nest).outcome == "invalid"
            assert client.reconfigure("pool", "agent", bad).outcome == "invalid"


def test_the_doctests_of_every_module_pass():
    failed = {}
    for info in pkgutil.walk_packages(otpy.__path__, "otpy."):
        if info.name == "otpy.__main__":  # runs the CLI
            continue
        module = importlib.import_module(info.name)
        result = doctest.testmod(module)
        if result.failed:
            failed[info.name] = result.failed
    assert failed == {}
    assert doctest.testmod(_spec_rules).attempted >= 1
