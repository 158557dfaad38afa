"""The optimizer on live agents: trials set variables on a scratch node, which reconfigures the
processes they decide; --apply sends the diff to the real node, once; the watch loop on a node."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import otpy
from otpy.optimize.live_system import LiveSystem, OptimizeError, format_plan, optimize_topology, spaces_of
from otpy.optimize.orchestrator import WatchPolicy, watch_topology
from otpy.topology.load import parse_topology
from tests.helpers import Events, unique_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(120)
DOUBLER, TRIPLER = "tests.optimize_agents:Doubler", "tests.optimize_agents:Tripler"

TOPOLOGY = """
[node]
name = "{name}"
[supervisor]
[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
  [supervisor.children.templates.solver]
  program = {{ variable = "global.solver" }}
  replicas = 1
[[supervisor.children]]
id = "manager"
program = "tests.optimize_agents:Manager"
args = {{ steps = ["solver-1"], programs = {{ "solver-1" = "solver" }} }}
[variables.global]
solver = {{ type = "module", modules = ["{doubler}", "{tripler}"], default = "{doubler}" }}
[variables.pool]
bias = {{ type = "float", low = -1.0, high = 1.0, default = 0.5 }}
[optimizer]
program = "manager"
dataset = "tests.optimize_agents:dataset"
valset = "tests.optimize_agents:validation"
metric = "tests.optimize_agents:exact"
trials = 12
seed = 0
"""


def text(name: str) -> str:
    return TOPOLOGY.format(name=name, doubler=DOUBLER, tripler=TRIPLER)


def topology(name):
    return parse_topology(text(name), check_imports=True)


def solver_pid(node) -> int:
    [child] = node.which_children("pool")
    assert child.id == "solver-1"
    return child.pid


def test_a_seeded_optimization_finds_the_program_and_knob_and_applying_it_twice_sends_nothing_the_second_time():
    name = unique_name("live")
    topo = topology(name)
    result = optimize_topology(topo, trials=12, progress=False)
    assert result.config["global"]["solver"] == TRIPLER
    assert abs(result.config["pool"]["bias"]) < 0.5
    assert result.val_score is not None and -1.0 <= result.val_score <= 0.0  # held out, scored apart
    assert result.failures == 0 and result.first_error is None
    [action] = result.actions  # one write of every changed scope
    assert {scope: sorted(values) for scope, values in action.scopes.items()} == {"global": ["solver"], "pool": ["bias"]}

    with otpy.Node(topo.node) as node, otpy.connect(name) as client, otpy.Caller(name) as caller:
        before = solver_pid(node)
        assert node.call("solver-1", {"x": 1.0}) == {"y": 2.0}
        live = LiveSystem(client, caller, spaces_of(topo))
        plan = format_plan(live.preview(live.plan(result.config)))
        assert f'~ global.solver "{DOUBLER}" -> "{TRIPLER}"' in plan
        assert any(line.startswith(f"~ pool/solver-1 reconfigure {DOUBLER} -> {TRIPLER}") for line in plan), plan
        assert solver_pid(node) == before  # a preview changes nothing
        live.apply(result.config)
        after = solver_pid(node)
        assert after != before
        assert node.call("manager", {"x": 2.0})["trace"][0]["program"] == TRIPLER
        assert live.current()["global"]["solver"] == TRIPLER
        assert live.plan(result.config) == [] and live.apply(result.config) == []  # the second time: nothing
        assert solver_pid(node) == after


def test_otpy_optimize_prints_scores_and_the_plan_applies_it_and_then_has_no_changes(tmp_path):
    name = unique_name("cli")
    path = tmp_path / "topology.toml"
    path.write_text(text(name))

    def optimize(*args):
        return subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path), "--trials", "8", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=110)

    alone = optimize()
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.startswith("best score ") and "validation score" in alone.stdout
    assert "is not running: from the topology's defaults" in alone.stdout
    assert f'~ global.solver "{DOUBLER}" -> "{TRIPLER}"' in alone.stdout

    with otpy.Node(topology(name).node) as node:
        before = solver_pid(node)
        dry = optimize("--apply", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"~ pool/solver-1 reconfigure {DOUBLER} -> {TRIPLER}" in dry.stdout and "applied" not in dry.stdout
        assert solver_pid(node) == before
        applied = optimize("--apply")
        assert applied.returncode == 0, applied.stderr
        assert "applied:" in applied.stdout and solver_pid(node) != before
        again = optimize("--apply")
        assert again.returncode == 0, again.stderr
        assert "no changes" in again.stdout and "applied:" not in again.stdout


def test_an_optimizer_table_with_bindings_is_refused_saying_what_replaces_it(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(text(unique_name("old")) + '  [optimizer.bindings.solver]\n  supervisor = "pool"\n'
                    '  program = "global.solver"\n')
    proc = subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert 'optimizer.bindings: no longer read' in proc.stderr
    assert 'program = { variable = "global.solver" }' in proc.stderr


def test_an_optimizer_table_without_a_metric_is_a_usage_error(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(text(unique_name("bad")).replace('metric = "tests.optimize_agents:exact"\n', ""))
    proc = subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "optimizer.metric" in proc.stderr


def test_one_watch_round_on_a_falling_node_searches_applies_the_better_program_and_announces_each_step():
    name = unique_name("watch")
    topo = topology(name)
    with otpy.Node(topo.node) as node:
        events = Events(node)
        before = solver_pid(node)
        policy = WatchPolicy(interval=1.0, sample=2, threshold=-0.5, trials=6, margin=0.1)
        with watch_topology(topo, policy, seed=0) as loop:
            [report] = loop.run(rounds=1)
        assert report.search.act and report.applied.act, report
        scored = events.wait("watch_scored", timeout=10)
        assert "round 1: live score" in scored["detail"] and "on 2 validation examples" in scored["detail"]
        assert "below threshold -0.5" in events.wait("watch_search", timeout=10)["detail"]
        assert f"-> {TRIPLER}" in events.wait("watch_applied", timeout=10)["detail"]
        assert solver_pid(node) != before
        bias = report.result.config["pool"]["bias"]  # a knob: on_config ran before the write returned
        assert node.call("solver-1", {"x": 1.0})["y"] == pytest.approx(3.0 + bias)


def test_otpy_optimize_reports_failed_calls_with_the_agents_traceback(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY.format(name=unique_name("picky"), doubler="tests.optimize_agents:Picky", tripler=TRIPLER))
    proc = subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path), "--trials", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "1 call failed; the first:" in proc.stderr  # the baseline (Picky) on x = 3
    assert "ValueError: Picky does not do threes" in proc.stderr


def test_a_configuration_whose_second_scope_is_refused_changes_nothing_in_the_first():
    """An optimizer's configuration spans scopes: it is one all-or-nothing write, so a program
    that cannot start (scope global) leaves the knob of scope pool, sent with it, unstored."""
    name = unique_name("atomic")
    topo = parse_topology(TOPOLOGY.format(name=name, doubler=DOUBLER, tripler="tests.bound_agents:Broken"),
                          check_imports=True)
    with otpy.Node(topo.node) as node, otpy.connect(name) as client, otpy.Caller(name) as caller:
        before = solver_pid(node)
        live = LiveSystem(client, caller, spaces_of(topo))
        config = {"pool": {"bias": 0.25}, "global": {"solver": "tests.bound_agents:Broken"}}
        with pytest.raises(OptimizeError, match="start_failed.*Broken cannot start"):
            live.apply(config)
        assert live.current() == {"global": {"solver": DOUBLER}, "pool": {"bias": 0.5}}
        assert solver_pid(node) == before and node.call("solver-1", {"x": 1.0}) == {"y": 2.0}


BROKEN = '''
class Broken:
    """A program that cannot start: its setup raises."""

    def setup(self, args, config):
        raise RuntimeError("Broken cannot start")

    def forward(self, x: float = 0.0):
        return {"y": 0.0}
'''


def test_a_trial_whose_program_does_not_start_is_a_failed_trial_and_the_search_goes_on(tmp_path):
    (tmp_path / "broken_agents.py").write_text("import otpy\n" + BROKEN.replace("class Broken:", "class Broken(otpy.Program):"))
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY.format(name=unique_name("broken"), doubler=DOUBLER, tripler="broken_agents:Broken"))
    proc = subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path), "--trials", "6"], cwd=ROOT,
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    assert "after 6 trials" in proc.stdout and "of them not applied" in proc.stdout, proc.stdout
    assert "could not be applied; the first reason:" in proc.stderr and "start_failed" in proc.stderr, proc.stderr
    assert f'"solver": "{DOUBLER}"' in proc.stdout  # the only program that runs is the best


def test_watch_options_that_could_never_search_are_a_usage_error(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(text(unique_name("nowatch")))
    proc = subprocess.run([sys.executable, "-m", "otpy", "optimize", str(path), "--watch"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "threshold or every" in proc.stderr
