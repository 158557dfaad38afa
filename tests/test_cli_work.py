"""`otpy call` and `otpy run-pipeline` against a node started with `otpy start --detach`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import unique_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(90)

TOPOLOGY = """
[node]
name = "{name}"
[supervisor]
[[supervisor.children]]
id = "first"
program = "tests.call_agents:Append"
[[supervisor.children]]
id = "second"
program = "tests.call_agents:Append"
[[supervisor.children]]
id = "oops"
program = "tests.call_agents:Raises"
[[supervisor.children]]
id = "awkward"
program = "tests.call_agents:Awkward"
[pipelines.both]
strategy = "sequential"
stages = ["first", "second"]
[pipelines.broken]
strategy = "sequential"
stages = ["first", "oops", "second"]
"""


def otpy(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, **kw)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    name = unique_name("work")
    path = tmp_path_factory.mktemp("work") / "t.toml"
    path.write_text(TOPOLOGY.format(name=name))
    started = otpy("start", str(path), "--detach")
    assert started.returncode == 0, started.stderr
    yield name
    otpy("stop", "--node", name)


def test_call_prints_the_outputs_as_json(node):
    done = otpy("call", "first", "--input", '{"path": ["x"]}', "--node", node)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"path": ["x", "first"]}


def test_outputs_json_has_no_word_for_still_print_as_valid_json(node):
    """Before: NaN printed as is (invalid JSON: jq fails) and a nested tuple key was a traceback."""
    done = otpy("call", "awkward", "--input", "{}", "--node", node)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout) == {"x": "nan", "y": {"z": {"(1, 2)": "b"}}, "w": "-inf"}


def test_a_remote_error_exits_1_naming_its_type(node):
    done = otpy("call", "oops", "--input", '{"x": 3}', "--node", node)
    assert done.returncode == 1 and "RemoteError" in done.stderr and "ValueError" in done.stderr


def test_bad_input_json_is_a_usage_error(node):
    assert otpy("call", "first", "--input", "{nope", "--node", node).returncode == 2


@pytest.mark.parametrize("option, field", [(("--timeout", "-1"), "timeout"), (("--timeout", "0"), "timeout"),
                                           (("--retries", "-3"), "retries")])
def test_a_timeout_or_retries_no_call_can_have_is_a_usage_error(node, option, field):
    """Before: --retries -3 crashed with AssertionError; --timeout 0 could wait and succeed."""
    done = otpy("call", "first", "--input", "{}", *option, "--node", node)
    assert done.returncode == 2 and f"{field}: got" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_run_pipeline_runs_the_topology_pipeline_in_order(node):
    done = otpy("run-pipeline", "both", "--input", '{"path": []}', "--node", node)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["outputs"] == {"path": ["first", "second"]}
    assert [t["stage"] for t in report["trace"]] == ["first", "second"]


def test_a_failing_pipeline_exits_1_and_names_the_stage(node):
    done = otpy("run-pipeline", "broken", "--input", '{"path": []}', "--node", node)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and not report["ok"] and list(report["errors"]) == ["oops"]


def test_an_unknown_pipeline_is_a_usage_error_listing_the_known_ones(node):
    done = otpy("run-pipeline", "nope", "--node", node)
    assert done.returncode == 2 and "both" in done.stderr


OPTIMIZED = '''
[node]
name = "NAME"

[[supervisor.children]]
id = "scorer"
program = "scorer_next_to_topology:Scorer"

[variables.global]
x = { type = "float", low = 0.0, high = 1.0, default = 0.5 }

[optimizer]
program = "scorer"
dataset = "scorer_next_to_topology:examples"
metric = "scorer_next_to_topology:metric"
trials = 2
seed = 0
'''

SCORER = '''
import otpy

class Scorer(otpy.Program):
    def forward(self, **inputs):
        return {"y": inputs["x"]}

def examples():
    return [otpy.Example(inputs={"x": 1.0}, label=1.0)]

def metric(example, prediction):
    return 1.0
'''


def test_optimize_imports_the_dataset_and_metric_next_to_the_topology(tmp_path):
    """The console script's sys.path has neither the current folder nor the file's: the
    [optimizer]'s dataset and metric are found where the node finds its programs."""
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "scorer_next_to_topology.py").write_text(SCORER)
    name = unique_name("optfolders")
    (folder / "topology.toml").write_text(OPTIMIZED.replace("NAME", name))
    script = Path(sys.executable).parent / "otpy"
    done = subprocess.run([str(script), "optimize", str(folder / "topology.toml"), "--trials", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("best score 1.0000"), done.stdout
