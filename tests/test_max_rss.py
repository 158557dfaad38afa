"""max_rss: a program that leaks past its limit is restarted, as an option of its spec."""

from __future__ import annotations

import pytest

import otpy
from otpy.topology.load import parse_topology
from tests.helpers import Events, unique_name

pytestmark = pytest.mark.timeout(60)


def test_a_leaking_program_over_max_rss_exits_after_its_call_and_is_restarted():
    spec = otpy.ChildSpec(id="leaky", program="tests.reliability_agents:Leaky", max_rss=100.0)
    node = otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=(spec,)), name=unique_name("rss")).start()
    events = Events(node)
    try:
        first = node.which_children()[0].pid
        # A worker holds about 25 MiB: the first call stays under 100 MiB, the second goes over;
        # both are answered, then the worker exits and is restarted.
        answers = [node.call("leaky", {"mib": 60}) for _ in range(2)]
        assert all(a["pid"] == first for a in answers)
        assert "exit status 76" in events.wait("exited", "leaky")["detail"]
        events.wait("started", "leaky")
        assert node.call("leaky", {"mib": 1}, timeout=5)["held_mib"] == 1  # a fresh process
    finally:
        node.stop()


def test_max_rss_must_be_positive_in_a_topology():
    with pytest.raises(Exception, match=r"children\[0\]\.max_rss"):
        parse_topology('[supervisor]\n[[supervisor.children]]\nid = "a"\ncommand = ["true"]\nmax_rss = 0\n')
