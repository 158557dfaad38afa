"""`otpy call` and `otpy run-pipeline` against a node started with `otpy start --detach`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def test_a_remote_error_exits_1_naming_its_type(node):
    done = otpy("call", "oops", "--input", '{"x": 3}', "--node", node)
    assert done.returncode == 1 and "RemoteError" in done.stderr and "ValueError" in done.stderr


def test_bad_input_json_is_a_usage_error(node):
    assert otpy("call", "first", "--input", "{nope", "--node", node).returncode == 2


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
