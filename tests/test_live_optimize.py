"""The optimizer on live agents: trials reconfigure a scratch node; --apply reconfigures the real one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import otpy
from otpy.topology.load import parse_topology
from otpy.optimize.live_system import LiveSystem, bindings_from_table, optimize_topology
from tests.helpers import unique_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(120)

TOPOLOGY = """
[node]
name = "{name}"
[supervisor]
[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
[[supervisor.children]]
id = "manager"
program = "tests.live_agents:Manager"
args = {{ steps = ["solver"], programs = {{ solver = "solver" }} }}
[variables.global]
solver = {{ type = "module", modules = ["tests.live_agents:Doubler", "tests.live_agents:Tripler"], default = "tests.live_agents:Doubler" }}
[variables.pool]
bias = {{ type = "float", low = -1.0, high = 1.0, default = 0.5 }}
[optimizer]
program = "manager"
dataset = "tests.live_agents:dataset"
metric = "tests.live_agents:exact"
trials = 12
seed = 0
  [optimizer.bindings.solver]
  supervisor = "pool"
  program = "global.solver"
  args = "pool"
"""


def topology(name):
    return parse_topology(TOPOLOGY.format(name=name), check_imports=True)


def test_a_seeded_optimization_picks_the_program_that_serves_the_name_and_applies_it():
    name = unique_name("live")
    topo = topology(name)
    result = optimize_topology(topo, trials=12, progress=False)
    assert result.best_config["global"]["solver"] == "tests.live_agents:Tripler"
    assert abs(result.best_config["pool"]["bias"]) < 0.5
    assert [type(a).__name__ for a in result.actions] == ["SetVariables", "SetVariables", "Reconfigure"]

    with otpy.Node(topo.node) as node:
        assert node.start_child("pool", otpy.ChildSpec(id="solver", program="tests.live_agents:Doubler")).ok
        before = node.which_children("pool")[0].pid
        assert node.call("solver", {"x": 1.0}) == {"y": 2.0}
        with otpy.connect(name) as client:
            live = LiveSystem(client, bindings_from_table(topo.raw_optimizer["bindings"]))
            live.send(result.actions)
        after = node.which_children("pool")[0].pid
        assert after != before
        assert node.call("solver", {"x": 1.0})["y"] == pytest.approx(3.0 + result.best_config["pool"]["bias"])
        answer = node.call("manager", {"x": 2.0})
        assert answer["trace"][0]["program"] == "tests.live_agents:Tripler"
        with otpy.Caller(name) as caller:
            reply = caller.call("registry", {"op": "get", "scope": "global", "name": "solver"})
        assert reply["value"] == "tests.live_agents:Tripler"


def test_otpy_optimize_prints_the_best_and_the_actions(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY.format(name=unique_name("cli")))
    proc = subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path), "--trials", "6"],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert "best score" in proc.stdout and '"type":"Reconfigure"' in proc.stdout


def test_an_optimizer_table_without_a_metric_is_a_usage_error(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY.format(name=unique_name("bad")).replace('metric = "tests.live_agents:exact"\n', ""))
    proc = subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "optimizer.metric" in proc.stderr
