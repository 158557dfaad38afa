"""The CLI conventions of supervisorctl and systemctl (#14): `otpy restart`, `otpy signal`,
`otpy status [ID]` and its exit 3, `--json` as one document on every command that reports,
numeric options checked by their type, `otpy bench` as a click command, `otpy events` ending
with its node, and shell completion of node names and child ids."""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading

import click
import pytest

import otpy
from otpy.cli.options import SignalParam
from otpy.cli.status_view import not_running, render_status, status_json
from otpy.wire.client import socket_path, zmq_ms
from otpy.wire.protocol import BoundInfo, Status, TreeEntry
from tests.helpers import alive, unique_name, wait_dead, wait_until
from tests.test_cli import ROOT, otpy_cli, reap

LONG_ID = "a-rather-long-child-identifier-of-forty-chars"
TOPOLOGY = """
[node]
name = "{name}"

[supervisor]

[[supervisor.children]]
id = "s1"
command = ["sleep", "3600"]

[[supervisor.children]]
id = "%s"
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

  [supervisor.children.templates.w]
  command = ["sleep", "3600"]
  replicas = 1
  [supervisor.children.templates.sleepy]
  command = ["sleep", "3600"]
""" % LONG_ID


@pytest.fixture
def node(tmp_path):
    """A node started with `otpy start --detach`; stopped (or cleaned) at the end."""
    name = unique_name("conv")
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY.format(name=name))
    done = otpy_cli("start", str(path), "--detach")
    assert done.returncode == 0, done.stderr
    with otpy.connect(name) as client:
        pid = client.status().pid
    yield name
    if socket_path(name).exists():
        otpy_cli("stop", "--node", name)
    reap(pid)


def pids(name: str) -> dict[str, int | None]:
    with otpy.connect(name) as client:
        report = status_json(client.status())

    def walk(entry):
        yield entry
        for child in entry.get("children", []):
            yield from walk(child)
    return {entry["id"]: entry["pid"] for entry in walk(report["tree"])}


def as_json(done: subprocess.CompletedProcess):
    """The one JSON document a `--json` command printed on stdout."""
    return json.loads(done.stdout)


# --- restart and signal ------------------------------------------------------------------------

@pytest.mark.timeout(180)  # many CLI runs, ~2 s each on a loaded machine
def test_restart_stops_and_starts_in_one_command_and_refuses_a_dynamic_child(node):
    before = pids(node)
    done = otpy_cli("restart", "s1", "--node", node, "--json")
    assert done.returncode == 0, done.stderr
    reply = as_json(done)
    assert (reply["command"], reply["id"], reply["ok"], reply["outcome"]) == ("restart", "s1", True, "ok")
    assert reply["pid"] == pids(node)["s1"] != before["s1"] and wait_dead([before["s1"]], 5) == []

    team = otpy_cli("restart", "team", "--node", node)  # a supervisor: its workers start again
    assert team.returncode == 0 and "restart: ok" in team.stdout, team.stderr
    assert pids(node)["s2"] != before["s2"]

    assert otpy_cli("terminate-child", "s1", "--node", node).returncode == 0
    stopped = otpy_cli("restart", "s1", "--node", node)  # a stopped child is started
    assert stopped.returncode == 0 and pids(node)["s1"], stopped.stderr

    assert otpy_cli("start-child", "pool", "--template", "sleepy", "--id", "x1", "--node", node).returncode == 0
    x1 = pids(node)["x1"]
    refused = otpy_cli("restart", "x1", "--node", node)
    assert refused.returncode == 1 and "(not_supported)" in refused.stderr and "start-child" in refused.stderr
    assert pids(node)["x1"] == x1 and alive(x1)  # untouched
    replica = otpy_cli("restart", "w-1", "--node", node)  # a template's replica keeps its spec
    assert replica.returncode == 0 and pids(node)["w-1"] != before["w-1"], replica.stderr

    missing = otpy_cli("restart", "nope", "--node", node, "--json")
    assert missing.returncode == 1 and as_json(missing)["outcome"] == "not_found" and "nope" in missing.stderr


@pytest.mark.timeout(180)  # many CLI runs, ~2 s each on a loaded machine
def test_restart_of_a_dynamic_supervisor_refuses_to_lose_its_run_time_children(node):
    """Before: `otpy restart pool` answered ok and d1, started with start-child, was gone."""
    assert otpy_cli("start-child", "pool", "--template", "sleepy", "--id", "d1", "--node", node).returncode == 0
    before = pids(node)
    refused = otpy_cli("restart", "pool", "--node", node, "--json")
    assert refused.returncode == 1 and as_json(refused)["outcome"] == "not_supported", refused.stderr
    assert "1 child started at run time (d1)" in refused.stderr and "otpy terminate-child d1" in refused.stderr
    assert pids(node) == before and alive(before["d1"])  # nothing was stopped

    assert otpy_cli("terminate-child", "d1", "--node", node).returncode == 0
    done = otpy_cli("restart", "pool", "--node", node)  # its replicas alone: they come back
    assert done.returncode == 0, done.stderr
    assert wait_until(lambda: pids(node).get("w-1") not in (None, before["w-1"]), 10, "w-1 started again")


def test_restart_and_signal_of_the_root_or_a_supervisor_above_run_time_children_say_why_not():
    """Before: "no child 'root'" for the root in `otpy status`'s tree, and a static supervisor
    holding a dynamic one dropped its run-time children on `otpy restart`."""
    from otpy.cli.children import restart_outcome, signal_outcome
    from tests.helpers import sleeper

    pool = otpy.DynamicSupervisorSpec(id="pool", templates={"w": sleeper("w", replicas=2), "x": sleeper("x")})
    spec = otpy.SupervisorSpec(id="root", children=(otpy.SupervisorSpec(id="team", children=(sleeper("s"), pool)),))
    with otpy.Node.from_spec(spec, name=unique_name("dyn")) as node, otpy.connect(node.name) as client:
        root = restart_outcome(client, "root", None)
        assert root.outcome == "not_supported" and "root supervisor" in root.detail and "otpy stop" in root.detail
        signalled = signal_outcome(client, "root", 15, None)
        assert signalled.outcome == "invalid" and "a supervisor is not signalled" in signalled.detail

        assert client.start_from_template("pool", "x", "r1").ok and client.start_from_template("pool", "x", "r2").ok
        before = {c.id: c.pid for c in client.which_children("pool")}
        refused = restart_outcome(client, "team", None)
        assert refused.outcome == "not_supported" and "2 children started at run time (r1, r2)" in refused.detail
        assert {c.id: c.pid for c in client.which_children("pool")} == before
        assert client.terminate_child("w-2").ok  # a stopped replica is not started by the check
        assert restart_outcome(client, "pool", None).outcome == "not_supported"
        assert [c.state for c in client.which_children("pool") if c.id == "w-2"] == ["stopped"]
        assert client.terminate_child("r1").ok and client.terminate_child("r2").ok
        assert restart_outcome(client, "team", None).ok
        assert wait_until(lambda: {c.id for c in client.which_children("pool") if c.state == "running"} == {"w-1", "w-2"},
                          10, "the replicas back")


@pytest.mark.timeout(180)  # many CLI runs, ~2 s each on a loaded machine
def test_signal_by_name_or_number_reaches_the_worker_and_says_why_it_cannot(node):
    first = pids(node)["s1"]
    done = otpy_cli("signal", "TERM", "s1", "--node", node, "--json")
    assert done.returncode == 0, done.stderr
    assert as_json(done) == {"command": "signal", "id": "s1", "signal": 15, "ok": True, "outcome": "ok",
                             "pid": first, "detail": ""}
    assert wait_dead([first], 5) == []
    second = wait_until(lambda: (pid := pids(node)["s1"]) not in (None, first) and pid, 10, "s1 restarted")
    assert otpy_cli("signal", "9", "s1", "--node", node).returncode == 0
    assert wait_dead([second], 5) == []

    sup = otpy_cli("signal", "sighup", "team", "--node", node, "--json")
    assert sup.returncode == 1 and as_json(sup)["outcome"] == "invalid" and "supervisor" in sup.stderr
    assert alive(pids(node)["s2"])
    assert otpy_cli("terminate-child", "s2", "--node", node).returncode == 0
    stopped = otpy_cli("signal", "USR1", "s2", "--node", node)
    assert stopped.returncode == 1 and "(not_running)" in stopped.stderr
    unknown = otpy_cli("signal", "FOO", "s1", "--node", node)
    assert unknown.returncode == 2 and "'FOO' is not a signal" in unknown.stderr


@pytest.mark.parametrize("text, number", [("TERM", 15), ("SIGTERM", 15), ("hup", 1), ("usr1", 10), ("9", 9)])
def test_a_signal_is_a_name_or_a_number(text, number):
    assert SignalParam().convert(text, None, None) == number


@pytest.mark.parametrize("text", ["FOO", "0", "99999", "SIG_DFL"])
def test_what_is_not_a_signal_is_refused(text):
    with pytest.raises(click.BadParameter):
        SignalParam().convert(text, None, None)


# --- status -------------------------------------------------------------------------------------

@pytest.mark.timeout(180)  # many CLI runs, ~2 s each on a loaded machine
def test_status_filters_to_a_child_or_a_subtree_and_exits_3_when_the_child_shown_is_not_running(node):
    whole = otpy_cli("status", "--node", node)
    assert whole.returncode == 0, whole.stderr
    lines = whole.stdout.splitlines()
    header = lines[1]
    row = next(line for line in lines if LONG_ID in line)
    assert row[header.index("KIND"):].startswith("worker")  # the long id widened its column

    one = otpy_cli("status", "s1", "--node", node, "--json")
    assert one.returncode == 0 and as_json(one)["tree"]["id"] == "s1" and "children" not in as_json(one)["tree"]
    team = otpy_cli("status", "team", "--node", node)
    assert team.returncode == 0 and "s2" in team.stdout and "s1" not in team.stdout

    assert otpy_cli("terminate-child", "s2", "--node", node).returncode == 0
    stopped = otpy_cli("status", "s2", "--node", node)
    assert stopped.returncode == 3 and "stopped (override)" in stopped.stdout and "s2" in stopped.stderr
    assert otpy_cli("status", "team", "--node", node).returncode == 0  # s2 is stopped on purpose
    assert otpy_cli("status", "s1", "--node", node).returncode == 0
    tree = otpy_cli("status", "s2", "--node", node, "--json")
    assert tree.returncode == 3 and as_json(tree)["tree"]["state"] == "stopped"  # the document, and the exit code
    unknown = otpy_cli("status", "nope", "--node", node)
    assert unknown.returncode == 2 and "no child 'nope'" in unknown.stderr


def test_status_of_a_node_not_running_exits_3_with_a_clear_line():
    done = otpy_cli("status", "--node", unique_name("absent"))
    assert done.returncode == 3 and "is running" in done.stderr and not done.stdout


def tree(*children: TreeEntry) -> Status:
    return Status(0, node="n", pid=1, tree=TreeEntry(id="root", kind="supervisor", state="running", pid=1,
                                                     children=list(children)))


def test_status_columns_fit_the_data_and_nothing_is_cut():
    program = "examples.tabular.programs:SomeVeryLongClassifierName"
    lines = render_status(status_json(tree(
        TreeEntry(id="a", kind="worker", state="running", pid=123456, program=program,
                  bound=BoundInfo("global.classifier", 2)),
        TreeEntry(id=LONG_ID, kind="worker", state="stopped")))).splitlines()
    assert f"{program} @global.classifier" in lines[3] and "…" not in "".join(lines)
    header = lines[1]
    for column in ("KIND", "STATE", "PROGRAM"):  # left-aligned columns start at their header
        assert all(line[header.index(column) - 2:header.index(column)] == "  " for line in lines[2:])
    assert all(line[header.index("PID") + 3 - 1] != " " for line in lines[2:])  # numbers end under PID
    assert "STATUS" not in header


def test_status_shows_the_status_line_and_a_delayed_restart():
    lines = render_status(status_json(tree(
        TreeEntry(id="db", kind="worker", state="running", pid=7, status_line="Accepting connections"),
        TreeEntry(id="flaky", kind="worker", state="restarting", restart_in=1.54)))).splitlines()
    assert lines[1].rstrip().endswith("STATUS") and lines[3].endswith("Accepting connections")
    assert "restarting in 1.5s" in lines[4]


def test_status_exits_3_for_the_entry_shown_not_running_or_a_child_in_transition_below_it():
    report = status_json(tree(TreeEntry(id="a", kind="worker", state="running", pid=2),
                              TreeEntry(id="b", kind="worker", state="restarting", restart_in=2.0),
                              TreeEntry(id="c", kind="worker", state="stopped", override=True),
                              TreeEntry(id="d", kind="worker", state="stopped")))
    assert not_running(report["tree"]) == ["b"]  # stopped on purpose: c (terminate-child), d (disabled)
    assert not_running(report["tree"]["children"][2]) == ["c"]  # `otpy status c`: not running
    assert not_running({**report["tree"], "state": "stopping"}) == ["root", "b"]


# --- --json on every command that reports, stop, nodes, events -----------------------------------

@pytest.mark.timeout(180)  # many CLI runs, ~2 s each on a loaded machine
def test_every_child_command_stop_and_validate_print_one_json_document(node, tmp_path):
    for args in (("start-child", "pool", "--template", "sleepy", "--id", "j1"), ("terminate-child", "j1"),
                 ("terminate-child", "s1"), ("restart-child", "s1"), ("terminate-child", "s1"),
                 ("delete-child", "s1")):
        done = otpy_cli(*args, "--node", node, "--json")
        assert done.returncode == 0, (args, done.stderr)
        reply = as_json(done)
        assert reply["ok"] and reply["command"] == args[0] and reply["outcome"] == "ok", args
    failed = otpy_cli("delete-child", "nope", "--node", node, "--json")
    assert failed.returncode == 1 and as_json(failed)["outcome"] == "not_found" and "nope" in failed.stderr

    good = tmp_path / "good.toml"
    good.write_text(TOPOLOGY.format(name="valid"))
    assert as_json(otpy_cli("validate", str(good), "--json")) == {"file": str(good), "ok": True, "node": "valid",
                                                                  "error": None}
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nname = "../x"\n')
    invalid = otpy_cli("validate", str(bad), "--json")
    assert invalid.returncode == 2 and as_json(invalid)["ok"] is False and "node.name" in as_json(invalid)["error"]

    node_pid = pids(node)["root"]
    stopped = otpy_cli("stop", "--node", node, "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert as_json(stopped) == {"command": "stop", "node": node, "ok": True, "pid": node_pid, "stale": False}


@pytest.mark.timeout(180)  # many CLI runs, ~2 s each on a loaded machine
def test_nodes_json_is_one_array_empty_when_none(node):
    listed = as_json(otpy_cli("nodes", "--json"))
    mine = next(entry for entry in listed if entry["node"] == node)
    assert mine["state"] == "running" and mine["stale"] is False and mine["pid"]
    with tempfile.TemporaryDirectory(prefix="otpy-none-") as runtime:
        empty = otpy_cli("nodes", "--json", env={"OTPY_RUNTIME_DIR": runtime})
    assert empty.returncode == 0 and json.loads(empty.stdout) == []


@pytest.mark.timeout(180)  # many CLI runs, ~2 s each on a loaded machine
def test_events_ends_with_exit_0_when_its_node_stops(node):
    watcher = subprocess.Popen([sys.executable, "-m", "otpy", "events", "--node", node, "--json"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout], daemon=True).start()
    try:
        with otpy.connect(node) as client:
            while True:  # the subscription is established asynchronously: an event says it is
                assert watcher.poll() is None, watcher.stderr.read()
                client.terminate_child("s1")
                client.restart_child("s1")
                try:
                    assert json.loads(lines.get(timeout=0.5))["node"] == node  # JSON Lines: one event a line
                    break
                except queue.Empty:
                    pass
        assert otpy_cli("stop", "--node", node).returncode == 0
        assert watcher.wait(5) == 0  # its node's lock is looked at every 0.5 s
        assert f"node {node!r} stopped" in watcher.stderr.read()
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.wait(5)


# --- numeric options, bench ----------------------------------------------------------------------

@pytest.mark.parametrize("args, said", [
    (("call", "x", "--retries", "-3"), "retries: got -3"),
    (("call", "x", "--timeout", "0"), "timeout: got 0"),
    (("stop", "--timeout", "-1"), "timeout: got -1"),
    (("call", "x", "--timeout", "nan"), "timeout: got nan"),  # before: nan passed every comparison
    (("stop", "--timeout", "nan"), "timeout: got nan"),  # before: a ValueError traceback from setsockopt
    (("stop", "--timeout", "inf"), "timeout: got inf"),
    (("stop", "--timeout", "1e400"), "timeout: got 1e400"),
    (("stop", "--timeout", "1e12"), "timeout: got 1e12; expected a number of seconds in the range 0<x<=315360000 (ten years)"),
    (("bench", "scale", "--idle", "nan"), "idle: got nan"),
    (("bench", "scale", "--prefault", "nan"), "prefault: got nan"),
    (("bench", "restart", "--n", "0"), "n: got 0"),
    (("bench", "scale", "--idle", "-1"), "idle: got -1"),
    (("vars", "set", "a.b", "1", "--expected-version", "-1"), "expected_version: got -1"),
])
def test_numeric_options_are_checked_by_their_type(args, said):
    """Each refused with exit 2 naming the option (before: ``--retries -3`` was an AssertionError)."""
    done = otpy_cli(*args, "--node" if args[0] in ("call", "stop", "vars") else "--no-peers",
                    *((unique_name("nobody"),) if args[0] in ("call", "stop", "vars") else ()))
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_start_timeout_is_checked_like_every_duration():
    done = otpy_cli("start", "t.toml", "--detach", "--timeout", "inf")
    assert done.returncode == 2 and "timeout: got inf" in done.stderr, done.stderr


@pytest.mark.parametrize("args, said", [
    (("--interval", "nan"), "interval: got nan"),  # before: click.FloatRange let nan through
    (("--threshold", "nan"), "threshold: got nan; expected a number (finite)"),
    (("--interval", "inf"), "interval: got inf"),
    (("--interval", "1e12"), "interval: got 1e12"),
    (("--margin", "nan"), "margin: got nan"),
    (("--margin", "inf"), "margin: got inf"),
])
def test_optimize_watch_numbers_are_finite(args, said):
    done = otpy_cli("optimize", "t.toml", "--watch", *args)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.timeout(120)
def test_start_detach_with_too_long_a_timeout_starts_nothing(tmp_path):
    """Before: ``--timeout 1e12`` passed the option and overflowed zmq's send timeout after the
    node was spawned: a traceback, and the node left running."""
    name = unique_name("long")
    path = tmp_path / "t.toml"
    path.write_text(TOPOLOGY.format(name=name))
    done = otpy_cli("start", str(path), "--detach", "--timeout", "1e12")
    assert done.returncode == 2 and "timeout: got 1e12" in done.stderr and "Traceback" not in done.stderr
    assert not socket_path(name).exists() and name not in otpy_cli("nodes").stdout


@pytest.mark.timeout(120)
def test_a_timeout_longer_than_zmq_milliseconds_hold_still_works(tmp_path):
    """35 days is a valid duration but 3e9 ms overflow zmq's int SNDTIMEO: before, ``stop`` and
    ``start --detach`` ended in an OverflowError (the start leaving its node running)."""
    name = unique_name("long")
    path = tmp_path / "t.toml"
    path.write_text(TOPOLOGY.format(name=name))
    started = otpy_cli("start", str(path), "--detach", "--timeout", "3e6")
    try:
        assert started.returncode == 0 and "Traceback" not in started.stderr, started.stderr
        with otpy.connect(name, timeout=math.inf) as client:  # the API: inf waits as long as it takes
            pid = client.status().pid
        stopped = otpy_cli("stop", "--node", name, "--timeout", "3e6")
        assert stopped.returncode == 0 and "Traceback" not in stopped.stderr, stopped.stderr
        reap(pid)
    finally:
        if socket_path(name).exists():
            otpy_cli("stop", "--node", name)


@pytest.mark.parametrize("seconds, ms", [(0.5, 500), (0, 0), (3e6, 2**31 - 2), (math.inf, 2**31 - 2),
                                         (math.nan, 2**31 - 2)])
def test_zmq_milliseconds_are_clamped_to_a_c_int(seconds, ms):
    assert zmq_ms(seconds) == ms


def test_otpy_bench_is_a_click_command_and_bench_run_py_shares_its_options():
    for command in ([sys.executable, "-m", "otpy", "bench", "--help"], [sys.executable, "bench/run.py", "--help"]):
        usage = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert usage.returncode == 0 and usage.stdout.startswith("Usage: ")
        assert "{restart|reconfigure|call|scale|all|chart}" in usage.stdout and "--n-defaults" in usage.stdout
    stray = otpy_cli("bench", "restart", "extra.json")
    assert stray.returncode == 2 and "only chart takes reports" in stray.stderr


# --- shell completion ----------------------------------------------------------------------------

def complete(words: str, env: dict | None = None) -> list[str]:
    """What click's bash completion offers for the command line ``words`` (its last word completed)."""
    done = subprocess.run([sys.executable, "-c", "from otpy.cli.main import main; main(prog_name='otpy')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {}), "_OTPY_COMPLETE": "bash_complete", "COMP_WORDS": words,
                               "COMP_CWORD": str(len(words.split(" ")) - 1)})
    assert done.returncode == 0 and not done.stderr, done.stderr
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line]


@pytest.mark.timeout(180)  # many CLI runs, ~2 s each on a loaded machine
def test_completion_offers_node_names_and_child_ids(node):
    assert node in complete("otpy status --node ")
    offered = complete(f"otpy restart --node {node} ")
    assert {"s1", "team", "s2", "pool", "w-1", LONG_ID} <= set(offered)
    assert complete(f"otpy terminate-child --node {node} t") == ["team"]
    assert "HUP" in complete("otpy signal H")


def test_completion_is_silent_when_no_node_answers():
    with tempfile.TemporaryDirectory(prefix="otpy-none-") as runtime:
        assert complete("otpy status ", env={"OTPY_RUNTIME_DIR": runtime}) == []
        assert complete("otpy status --node ", env={"OTPY_RUNTIME_DIR": runtime}) == []


def test_restart_refuses_a_running_temporary_child_before_stopping_it():
    """Before: `otpy restart` of a running temporary child stopped it, and its spec went with
    terminate_child (OTP's rule): the child was lost. Now it is refused untouched."""
    from otpy.cli.children import restart_outcome
    from tests.helpers import sleeper

    spec = otpy.SupervisorSpec(id="root", children=(sleeper("t", restart="temporary"), sleeper("p")))
    with otpy.Node.from_spec(spec, name=unique_name("tmp")) as node, otpy.connect(node.name) as client:
        before = {c.id: c.pid for c in client.which_children()}
        assert [c.restart for c in client.which_children()] == ["temporary", "permanent"]
        refused = restart_outcome(client, "t", None)
        assert refused.outcome == "not_supported" and "temporary" in refused.detail
        assert {c.id: c.pid for c in client.which_children()} == before and alive(before["t"])
        assert restart_outcome(client, "p", None).ok and client.which_children()[1].pid != before["p"]


def test_signal_child_names_an_unknown_child_before_a_bad_signal_and_never_signals_a_dead_pid():
    from tests.helpers import sleeper

    spec = otpy.SupervisorSpec(id="root", children=(sleeper("a"),))
    with otpy.Node.from_spec(spec, name=unique_name("sig")) as node:
        assert node.signal_child("nope", 999).outcome == "not_found"
        assert node.signal_child("a", 999).outcome == "invalid"
        assert node.signal_child("a", 0).outcome == "invalid"
        pid = node.which_children()[0].pid
        assert node.signal_child("a", 10).outcome in ("ok",)  # SIGUSR1 kills a sleeper: restarted
        assert wait_dead([pid], 5) == []


def test_a_call_longer_than_zmq_poll_milliseconds_hold_still_works():
    """3e6 s (35 days) is a valid --timeout (at most ten years), but 3e9 ms overflow zmq_poll's
    C int: before, `otpy call ID --timeout 3e6` ended in an OverflowError traceback."""
    spec = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="echo", program="tests.call_agents:Echo"),))
    with otpy.Node.from_spec(spec, name=unique_name("longcall")) as node:
        assert node.call("echo", {"x": 1}, timeout=3e6)["x"] == 1
