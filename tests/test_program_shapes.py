"""What the worker runs: an otpy.Program, a function, or a plain class with setup and forward
(each as ``otpy validate`` accepts it, ``agent.import_check.program_problem``)."""

from __future__ import annotations

import pytest

import otpy
from tests.helpers import unique_name

pytestmark = pytest.mark.timeout(60)


def test_a_plain_class_with_setup_and_forward_serves_calls():
    """validate accepts it (agent.import_check.program_problem); before, every call failed with
    TypeError: 'PlainForward' object is not callable."""
    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="plain", program="tests.agents:PlainForward", args={"greeting": "hello"}),))
    with otpy.Node.from_spec(root, name=unique_name("plain")) as node:
        assert node.call("plain", {"x": 1}, timeout=5.0) == {"said": "hello", "x": 1}
