"""The control commands of the `otpy` CLI, run as real subprocesses against real nodes."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import otpy
from otpy.wire.client import socket_path
from tests.helpers import alive, sleeper, unique_name, wait_dead

ROOT = Path(__file__).resolve().parent.parent

TOPOLOGY = """
[node]
name = "{name}"

[supervisor]
strategy = "one_for_one"

[[supervisor.children]]
id = "s1"
command = ["sleep", "3600"]

[[supervisor.children]]
id = "team"
type = "supervisor"

  [[supervisor.children.children]]
  id = "s2"
  command = ["sleep", "3600"]

[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
max_children = 2

  [supervisor.children.templates.sleepy]
  command = ["sleep", "3600"]
"""


def otpy_cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def write_topology(tmp_path: Path, name: str, text: str = TOPOLOGY) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(text.format(name=name))
    return path


@pytest.fixture
def detached(tmp_path):
    """A node started with `otpy start --detach`; stopped (or killed) at the end."""
    name = unique_name("cli")
    done = otpy_cli("start", str(write_topology(tmp_path, name)), "--detach")
    assert done.returncode == 0, done.stderr
    with otpy.connect(name) as client:
        pid = client.status().pid
    yield name
    if socket_path(name).exists():
        otpy_cli("stop", "--node", name)
    reap(pid)


def reap(pid: int) -> None:
    """A process that ran an embedded Node is a subreaper: the detached node, orphaned, is our child."""
    assert wait_dead([pid], 10) == []
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@pytest.mark.timeout(60)
def test_detach_status_child_commands_and_stop(detached):
    name = detached
    assert name in otpy_cli("nodes").stdout

    status = otpy_cli("status", "--node", name, "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    tree = report["tree"]
    assert (tree["id"], tree["kind"], tree["state"]) == ("root", "supervisor", "running")
    assert [c["id"] for c in tree["children"]] == ["s1", "team", "pool"]
    s1 = tree["children"][0]
    assert s1["pid"] and alive(s1["pid"]) and s1["restarts"] == 0 and "rss_bytes" in s1
    assert tree["children"][1]["children"][0]["id"] == "s2"

    human = otpy_cli("status", "--node", name)
    assert human.returncode == 0 and "s2" in human.stdout and "RESTARTS" in human.stdout

    ok = otpy_cli("start-child", "pool", "--template", "sleepy", "--id", "w1", "--node", name)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr
    assert otpy_cli("start-child", "pool", "--command", "sleep 3600", "--id", "w2", "--node", name).returncode == 0
    full = otpy_cli("start-child", "pool", "--template", "sleepy", "--id", "w3", "--node", name)
    assert full.returncode == 1 and "max_children" in full.stderr

    missing = otpy_cli("terminate-child", "x", "--node", name)
    assert missing.returncode == 1 and "terminate-child: no child 'x'" in missing.stderr
    assert otpy_cli("terminate-child", "s1", "--node", name).returncode == 0
    assert otpy_cli("restart-child", "s1", "--node", name).returncode == 0
    running = otpy_cli("delete-child", "s1", "--node", name)
    assert running.returncode == 1 and "running" in running.stderr
    assert otpy_cli("terminate-child", "w1", "--sup", "pool", "--node", name).returncode == 0

    node_pid = report["pid"]
    workers = [s1["pid"], tree["children"][1]["children"][0]["pid"]]
    stopped = otpy_cli("stop", "--node", name)
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(node_pid) and wait_dead(workers, 2) == []
    assert not socket_path(name).exists()


@pytest.mark.timeout(30)
def test_usage_errors_exit_2(detached):
    bad_json = otpy_cli("start-child", "pool", "--template", "sleepy", "--id", "w", "--args", "{", "--node", detached)
    assert bad_json.returncode == 2 and "--args" in bad_json.stderr
    two_kinds = otpy_cli("start-child", "pool", "--template", "sleepy", "--program", "m:a", "--id", "w",
                         "--node", detached)
    assert two_kinds.returncode == 2
    unknown = otpy_cli("terminate-child", "x", "--node", "no-such-node")
    assert unknown.returncode == 2 and "no node 'no-such-node'" in unknown.stderr
    assert otpy_cli("status", "--node", "no-such-node").returncode == 3  # status: not running, as systemctl
    no_sup = otpy_cli("start-child", "nope", "--template", "sleepy", "--id", "w", "--node", detached)
    assert no_sup.returncode == 1 and "not_found" in no_sup.stderr


@pytest.mark.timeout(30)
def test_events_are_printed_live_as_json(detached):
    watcher = subprocess.Popen([sys.executable, "-m", "otpy", "events", "--node", detached, "--json"],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout], daemon=True).start()
    try:
        with otpy.connect(detached) as client:
            deadline = time.monotonic() + 15
            event = None
            while event is None:  # the subscription is established asynchronously
                assert time.monotonic() < deadline, "no event printed"
                client.terminate_child("s1")
                client.restart_child("s1")
                try:
                    event = json.loads(lines.get(timeout=0.5))
                except queue.Empty:
                    pass
        assert event["node"] == detached and event["child"] == "s1" and event["kind"] in ("stopped", "started")
    finally:
        watcher.terminate()
        watcher.wait(5)


@pytest.mark.timeout(30)
def test_detach_reports_a_failed_start_with_the_log(tmp_path):
    name = unique_name("clibad")
    # a command that validates (it exists) and fails at start: it exits before READY
    text = TOPOLOGY.replace('command = ["sleep", "3600"]', 'command = ["false"]\nready = "notify"', 1)
    failed = otpy_cli("start", str(write_topology(tmp_path, name, text)), "--detach")
    assert failed.returncode == 1
    assert "did not start" in failed.stderr and "s1" in failed.stderr


@pytest.mark.timeout(30)
def test_foreground_start_exits_0_on_otpy_stop(tmp_path):
    name = unique_name("clifg")
    foreground = subprocess.Popen([sys.executable, "-m", "otpy", "start", str(write_topology(tmp_path, name))],
                                  cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        with otpy.Client(name) as client:
            client.wait_ready(20, give_up=lambda: foreground.poll() is not None)
        stopped = otpy_cli("stop", "--node", name)
        assert stopped.returncode == 0, stopped.stderr
        assert foreground.wait(5) == 0
    finally:
        if foreground.poll() is None:
            foreground.kill()
        foreground.communicate()


@pytest.mark.timeout(30)
def test_node_may_be_left_out_only_when_one_runs_and_stale_nodes_are_named():
    with tempfile.TemporaryDirectory(prefix="otpy-cli-") as runtime:
        env = {"OTPY_RUNTIME_DIR": runtime}
        old = os.environ["OTPY_RUNTIME_DIR"]
        os.environ["OTPY_RUNTIME_DIR"] = runtime
        try:
            assert otpy_cli("status", env=env).returncode == 3  # none: not running (status's rule)
            assert otpy_cli("terminate-child", "a", env=env).returncode == 2  # none: the other commands
            stale = Path(runtime) / "ghost"
            stale.mkdir(mode=0o700)
            (stale / "control.sock").touch()
            first = otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=(sleeper("a"),)), name="one").start()
            second = None
            try:
                status = otpy_cli("status", "--json", env=env)
                assert status.returncode == 0 and json.loads(status.stdout)["node"] == "one"
                listed = otpy_cli("nodes", env=env).stdout
                assert "ghost" in listed and "stale" in listed and "one" in listed
                second = otpy.Node.from_spec(otpy.SupervisorSpec(id="root"), name="two").start()
                several = otpy_cli("terminate-child", "a", env=env)
                assert several.returncode == 2 and "one" in several.stderr and "two" in several.stderr
                assert otpy_cli("terminate-child", "a", "--node", "one", env=env).returncode == 0
            finally:
                first.stop()
                if second is not None:
                    second.stop()
        finally:
            os.environ["OTPY_RUNTIME_DIR"] = old


@pytest.mark.parametrize("args, said", [
    (("--command", 'sleep "100'), "--command cannot be split like a shell line: No closing quotation"),
    (("--program", "x:y", "--args", '{"a": 99999999999999999999999}'), "args.a: got 99999999999999999999999"),
    (("--template", "t", "--args", '{"a": 99999999999999999999999}'), "args.a: got 99999999999999999999999"),
])
def test_start_child_refuses_what_it_cannot_send_as_a_usage_error(args, said):
    """Before: a traceback (ValueError, OverflowError) and exit 1; nothing reaches any node."""
    done = otpy_cli("start-child", "pool", "--id", "a", *args, "--node", unique_name("nobody"))
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr
