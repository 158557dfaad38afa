"""A program's ``on_config`` may refuse values it cannot run (``otpy.ConfigRefused``): it keeps
running its old ones, the node undoes the write (the previous values are stored again, and run
again by the programs that took the new ones), and the writer gets ``invalid`` naming the child
and the reason. Declared stays what runs."""

import pytest
from click.testing import CliRunner

import otpy
from otpy.cli.vars import vars_group
from tests.helpers import unique_name

pytestmark = pytest.mark.timeout(60)

TOPOLOGY = """
[node]
name = "{name}"

[supervisor]

[[supervisor.children]]
id = "picky"
program = "tests.refusing_agents:Picky"

[[supervisor.children]]
id = "easy"
program = "tests.refusing_agents:Easy"

[variables.global]
k = {{ type = "integer", low = -5, high = 5, default = 2 }}
"""


@pytest.fixture
def node(tmp_path):
    name = unique_name("refuse")
    path = tmp_path / f"{name}.toml"
    path.write_text(TOPOLOGY.format(name=name))
    with otpy.Node.from_toml(path) as running:
        yield running


def test_a_refused_write_is_undone_and_every_program_runs_the_old_values(node):
    picky, easy = node.call("picky"), node.call("easy")
    result = node.set_variables("global", {"k": 0})
    assert result.outcome == "invalid", result
    assert "child 'picky' refused the new values: k: got 0; expected at least 1" in result.detail
    assert "the previous values are stored and run again" in result.detail
    stored = CliRunner().invoke(vars_group, ["get", "global.k", "--node", node.name])
    assert stored.output.strip() == "2", stored.output  # declared: what runs
    assert node.call("picky") == picky  # the same process, the old value
    assert node.call("easy") == easy  # it took 0 for a moment; it runs 2 again


def test_a_value_the_program_takes_is_stored_as_before(node):
    result = node.set_variables("global", {"k": 3})
    assert result.ok, result
    assert node.call("picky")["k"] == 3 and node.call("easy")["k"] == 3


def test_vars_set_says_who_refused_and_exits_non_zero(node):
    before = node.call("picky")
    result = CliRunner().invoke(vars_group, ["set", "--node", node.name, "--", "global.k", "-1"])
    assert result.exit_code != 0
    assert "child 'picky' refused the new values: k: got -1; expected at least 1" in result.output
    assert node.call("picky") == before
