"""Restart delay and backoff on a real node: a child that exits at once, restarted later each time.

Timing assertions are loose lower bounds (a restart never comes before its delay) and upper
bounds only to catch hangs.
"""

from __future__ import annotations

import json
import os
import subprocess
import signal
import sys
import time
from pathlib import Path

import pytest

import otpy
from tests.helpers import Events, pids, python, sleeper, unique_name, wait_until

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
SLACK = 0.05  # event times are stamped after the fact: a lower bound keeps this much room


def start(*children, **flags) -> tuple[otpy.Node, Events]:
    flags.setdefault("max_restarts", 100)
    root = otpy.SupervisorSpec(id="root", children=tuple(children), **flags)
    node = otpy.Node.from_spec(root, name=unique_name("backoff")).start()
    return node, Events(node)


def exits_once(id: str, trigger: Path, **kw) -> otpy.ChildSpec:
    """A child that exits with status 1 as soon as ``trigger`` exists (at once, once it does)."""
    code = (f"import os, sys, time\nwhile not os.path.exists({str(trigger)!r}): time.sleep(0.01)\n"
            "sys.exit(1)\n")
    return otpy.ChildSpec(id=id, command=python(code), **kw)


def crash(node: otpy.Node, id: str) -> None:
    os.kill(pids(node)[id], signal.SIGKILL)


def shown(node: otpy.Node, id: str):
    [info] = [c for c in node.which_children("root") if c.id == id]
    return info


def test_restarts_are_spaced_by_the_doubling_delay_up_to_the_cap(tmp_path):
    trigger = tmp_path / "crash-now"
    node, events = start(exits_once("flaky", trigger, restart_delay=0.2, restart_delay_max=0.8))
    try:
        trigger.touch()
        expected = [0.2, 0.4, 0.8, 0.8]
        for delay in expected:
            exited = events.wait("exited", "flaky")
            delayed = events.wait("restart_delayed", "flaky")
            assert delayed["detail"].startswith(f"restart in {delay:g} s"), delayed
            started = events.wait("started", "flaky", timeout=delay + 10)  # upper bound: a hang
            assert started["time"] - exited["time"] >= delay - SLACK, (delay, started, exited)
    finally:
        node.stop()


def test_which_children_and_status_json_show_restarting_with_the_time_left():
    node, events = start(sleeper("flaky", restart_delay=20.0), sleeper("steady"))
    try:
        crash(node, "flaky")
        events.wait("restart_delayed", "flaky")
        info = shown(node, "flaky")
        assert info.state == "restarting" and info.pid is None
        assert 0 < info.restart_in <= 20.0
        assert shown(node, "steady").restart_in is None
        status = subprocess.run([sys.executable, "-m", "otpy", "status", "--node", node.name, "--json"],
                                cwd=ROOT, capture_output=True, text=True, timeout=30, env=dict(os.environ))
        assert status.returncode in (0, 3), status.stderr  # 3: like systemctl, a child is not running
        [entry] = [c for c in json.loads(status.stdout)["tree"]["children"] if c["id"] == "flaky"]
        assert entry["state"] == "restarting" and 0 < entry["restart_in"] <= info.restart_in
        later = wait_until(lambda: (i := shown(node, "flaky")).restart_in < info.restart_in and i, what="countdown")
        assert later.state == "restarting"
    finally:
        node.stop()


def test_terminate_child_cancels_a_pending_restart_and_restart_child_starts_it_now():
    node, events = start(sleeper("flaky", restart_delay=20.0))
    try:
        crash(node, "flaky")
        events.wait("restart_delayed", "flaky")
        assert node.terminate_child("flaky", "root").ok
        info = shown(node, "flaky")
        assert info.state == "stopped" and info.restart_in is None
        began = time.monotonic()
        assert node.restart_child("flaky", "root").ok
        events.wait("started", "flaky", timeout=10)
        assert time.monotonic() - began < 10  # at once, not after the 20 s delay
    finally:
        node.stop()


def test_stopping_the_node_during_a_pending_delay_is_prompt_and_starts_nothing_after():
    node, events = start(sleeper("flaky", restart_delay=30.0), sleeper("steady"))
    crash(node, "flaky")
    events.wait("restart_delayed", "flaky")
    began = time.monotonic()
    node.stop()
    assert time.monotonic() - began < 15  # the stop does not wait for the 30 s delay
    seen = events.drain()
    delayed = max(i for i, e in enumerate(seen) if e["kind"] == "restart_delayed")
    assert not [e for e in seen[delayed:] if e["kind"] == "started"]
    assert any(e["kind"] == "stopped" and e["child"] == "steady" for e in seen[delayed:])


def test_over_the_intensity_the_supervisor_gives_up_at_once_without_waiting_the_delay():
    node, events = start(sleeper("flaky", restart_delay=30.0), sleeper("steady"), max_restarts=0)
    try:
        began = time.monotonic()
        crash(node, "flaky")
        events.wait("gave_up", timeout=10)
        assert time.monotonic() - began < 10  # not after the 30 s delay
        assert not [e for e in events.drain() if e["kind"] == "restart_delayed"]
    finally:
        node.stop()


@pytest.mark.parametrize("text,problem", [
    ("restart_delay = 0\nrestart_delay_max = 0", None),  # the default written out: no delay, as OTP
    ("restart_delay = 0.5", None),
    ("restart_delay = -1", "supervisor.children[0].restart_delay"),
    ("restart_delay = 5\nrestart_delay_max = 1", "supervisor.children[0].restart_delay_max"),
])
def test_a_topology_takes_restart_delays_from_zero_and_names_a_bad_one(tmp_path, text, problem):
    """Before: ``restart_delay = 0`` (the default) was refused: 'expected a number > 0'."""
    from otpy.topology.load import TopologyError, load_topology

    file = tmp_path / "topology.toml"
    file.write_text(f'[[supervisor.children]]\nid = "a"\ncommand = ["true"]\n{text}\n')
    if problem is None:
        assert load_topology(file).node.root.children[0].restart_delay >= 0
    else:
        with pytest.raises(TopologyError, match=problem.replace("[", r"\[").replace("]", r"\]")):
            load_topology(file)
