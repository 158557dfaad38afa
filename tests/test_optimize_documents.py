"""``otpy optimize`` and the variables no trial searches (documents, e.g. a saved DSPy program):
trials keep the running node's values of them, so the scores describe the program the plan
leaves running and a plan never asks the node for a program its documents do not fit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import otpy
from otpy.optimize.live_system import spaces_of, study_name
from otpy.optimize.orchestrator import WatchPolicy, watch_topology
from otpy.optimize.optimizer import Optimizer, fixed_values
from otpy.topology.load import parse_topology
from tests.helpers import unique_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(120)
STATED, PLAIN = "tests.optimize_state_agents:Stated", "tests.optimize_state_agents:Plain"

TOPOLOGY = f"""
[node]
name = "{{name}}"
[supervisor]
[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
  [supervisor.children.templates.solver]
  program = {{{{ variable = "global.solver" }}}}
  replicas = 1
[[supervisor.children]]
id = "manager"
program = "tests.optimize_agents:Manager"
args = {{{{ steps = ["solver-1"], programs = {{{{ "solver-1" = "solver" }}}} }}}}
[variables.global]
solver = {{{{ type = "module", modules = ["{STATED}", "{PLAIN}"], default = "{STATED}" }}}}
[variables.pool]
state = {{{{ type = "document", default = {{{{}}}} }}}}
[optimizer]
program = "manager"
dataset = "tests.optimize_agents:dataset"
valset = "tests.optimize_agents:validation"
metric = "tests.optimize_agents:exact"
trials = 3
seed = 0
"""
SAVED = {"offset": 1.0}  # the live node's saved state: Stated is exact with it, Plain cannot start with it


def topology_file(tmp_path, name: str) -> str:
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY.format(name=name).replace("{{", "{").replace("}}", "}"))
    return str(path)


def optimize(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy", "optimize", path, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=110)


def test_trials_keep_the_running_nodes_document_so_apply_gets_a_plan_the_node_can_run(tmp_path):
    """The live node runs Stated with its saved state (exact). Scored with the topology's default
    state, Plain would win and --apply would fail (Plain cannot start with the live state); scored
    with the live state, Stated wins and Plain's trials are not applied."""
    name = unique_name("docs")
    path = topology_file(tmp_path, name)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    topo = parse_topology(open(path).read(), check_imports=True)
    with otpy.Node(topo.node) as node, otpy.connect(name) as client:
        assert client.set_variables("pool", {"state": SAVED}).ok
        proc = optimize(path, "--apply", "--storage", url)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert proc.stdout.startswith("best score -0.0000 (train)") or proc.stdout.startswith("best score 0.0000"), \
            proc.stdout
        assert "of them not applied" in proc.stdout, proc.stdout  # Plain's trials: the live state refuses it
        assert PLAIN not in proc.stdout.split("plan (against the running node")[1], proc.stdout
        assert node.call("manager", {"x": 2.0})["y"] == 6.0  # still Stated with its state
        assert f"study '{study_name(topo, {'pool': {'state': SAVED}})}'" in proc.stderr
    # No node now: the trials run the topology's default state, though the scratch node's own
    # registry kept the saved one from the search above; the study is the one without a digest.
    alone = optimize(path, "--storage", url)
    assert alone.returncode == 0, alone.stderr
    assert f"study '{name}' in" in alone.stderr and f'"solver": "{PLAIN}"' in alone.stdout, alone.stdout
    assert "not applied" not in alone.stdout, alone.stdout


def test_the_fixed_values_are_the_running_nodes_else_the_defaults_and_name_another_study():
    topo = parse_topology(TOPOLOGY.format(name="fixed").replace("{{", "{").replace("}}", "}"), check_imports=True)
    spaces = spaces_of(topo)
    live = {"global": {"solver": PLAIN}, "pool": {"state": SAVED}, "elsewhere": {"x": 1}}
    assert fixed_values(spaces, None) == {"pool": {"state": {}}}
    assert fixed_values(spaces, live) == {"pool": {"state": SAVED}}  # never a searched value
    assert Optimizer(spaces, progress=False).validate({"global.solver": PLAIN}, fixed_values(spaces, live)) == \
        {"global": {"solver": PLAIN}, "pool": {"state": SAVED}}
    assert study_name(topo) == study_name(topo, {"pool": {"state": {}}}) == "fixed"
    assert study_name(topo, live).startswith("fixed@") and study_name(topo, live) == study_name(topo, live)
    with pytest.raises(otpy.OptimizeError, match="pool.state: got a document holding nan"):
        fixed_values(spaces, {"pool": {"state": float("nan")}})


def test_the_watch_loops_searches_keep_the_live_nodes_document_too():
    name = unique_name("watchdocs")
    topo = parse_topology(TOPOLOGY.format(name=name).replace("{{", "{").replace("}}", "}"), check_imports=True)
    with otpy.Node(topo.node), otpy.connect(name) as client:
        assert client.set_variables("pool", {"state": SAVED}).ok
        with watch_topology(topo, WatchPolicy(interval=1.0, every=1, trials=3), seed=0) as loop:
            [report] = loop.run(rounds=1)
    assert report.live.score == 0.0 and report.result is not None, report
    assert report.result.config["global"]["solver"] == STATED and report.result.val_score == 0.0, report.result
    assert report.result.apply_failed > 0  # Plain, tried with the live state: not applied
