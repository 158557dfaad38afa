"""Values that ``validate`` passed and ``start`` could not use are refused by the value rules.

Each case failed at start before: a control endpoint on another machine's address, a spec
too big for the node->zygote datagram, an exec string over the kernel's limit, a missing
working folder or command, a start timeout of 1e-300 s, a program that is not a program.
"""

from __future__ import annotations

import pytest

from otpy._config import TopologyError, parse_topology
from otpy._spec_rules import node_problems, spec_problems
from otpy._specs import ChildSpec, NodeSpec, SupervisorSpec

pytestmark = pytest.mark.timeout(60)


def node(control_tcp: str) -> NodeSpec:
    return NodeSpec(name="n", root=SupervisorSpec(id="root"), control_tcp=control_tcp)


@pytest.mark.parametrize("endpoint", ["tcp://8.8.8.8:47712", "tcp://[2001:db8::1]:47712", "tcp://192.0.2.1:7400"])
def test_a_control_endpoint_on_an_address_of_another_machine_is_refused(endpoint):
    problems = node_problems(node(endpoint))
    assert problems and "not an address of this machine" in problems[0], problems


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:7400", "tcp://[::1]:7400", "tcp://localhost:7400"])
def test_a_local_control_endpoint_passes(endpoint):
    assert node_problems(node(endpoint)) == []


def test_a_foreign_control_endpoint_in_a_file_is_refused_at_its_key():
    with pytest.raises(TopologyError) as caught:
        parse_topology('[node]\ncontrol_tcp = "tcp://8.8.8.8:47712"\n[supervisor]\n', source="t.toml")
    assert "node.control_tcp" in str(caught.value) and "not an address of this machine" in str(caught.value)
