"""Hostile programs are contained, reported and cleaned up (issue #8, item 5).

A program that hangs in setup (``start_timeout``), one that floods stdout while the node keeps
serving, and programs that fork children of their own: the children die with them.
"""

from __future__ import annotations

import os
import re
import threading
import time

import pytest

import otpy
from tests.helpers import alive, pids, unique_name, wait_dead, wait_until

FLOOD_LINES = 200_000


def wait_for(predicate, timeout: float, what: str):
    return wait_until(predicate, timeout, what)


def read_pids(path, timeout: float = 10.0) -> list[int]:
    wait_for(lambda: os.path.exists(path), timeout, f"{path} written")
    with open(path) as file:
        return [int(p) for p in file.read().split()]


def reap_leftovers(pids_: list[int]) -> None:
    """A failed test must not leave its grandchildren running for the rest of the session."""
    for pid in pids_:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(40)
def test_a_program_hanging_in_setup_is_killed_at_start_timeout_and_reported():
    lines: list[tuple[str, str]] = []
    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="echo", program="tests.call_agents:Echo"),))
    node = otpy.Node.from_spec(root, name=unique_name("hang"), on_output=lambda c, stream, l: lines.append((c, l)))
    node.start()
    try:
        hang = otpy.ChildSpec(id="hang", program="tests.agents:SlowSetup", args={"seconds": 600},
                              start_timeout=1.0)
        t0 = time.monotonic()
        result = node.start_child("root", hang)
        took = time.monotonic() - t0
        assert result.outcome == "start_failed", result
        assert "timeout" in result.detail.lower() or "ready" in result.detail.lower(), result.detail
        assert 0.9 <= took < 6.0, f"start_child returned after {took:.2f} s for a 1 s start_timeout"
        # The hung process printed its pid before hanging: it is gone, and not kept in the tree.
        hung_pid = int(wait_for(lambda: next((l for c, l in lines if c == "hang"), None), 5, "pid line"))
        assert wait_dead([hung_pid], 2.0) == []
        assert "hang" not in pids(node)
        # The node kept serving meanwhile and after.
        assert node.call("echo", {"x": 1}, timeout=5)["x"] == 1
    finally:
        node.stop()


@pytest.mark.timeout(60)
def test_a_program_flooding_stdout_does_not_stall_the_node_and_every_line_is_logged():
    counts = {"flood": 0, "other": 0}
    order_ok = [True]
    expected = [0]
    done = threading.Event()
    line_re = re.compile(r"line (\d+)")

    def on_output(child_id: str, stream: str, line: str) -> None:
        if child_id != "flood":
            counts["other"] += 1
            return
        if line == "flood done":
            done.set()
            return
        m = line_re.fullmatch(line)
        if m is None or int(m.group(1)) != expected[0]:
            order_ok[0] = False
        expected[0] += 1
        counts["flood"] += 1

    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="echo", program="tests.call_agents:Echo"),
        otpy.ChildSpec(id="flood", program="tests.reliability_agents:Flooder", args={"lines": FLOOD_LINES}),
    ))
    node = otpy.Node.from_spec(root, name=unique_name("flood"), on_output=on_output).start()
    try:
        calls = statuses = 0
        worst = 0.0
        deadline = time.monotonic() + 45
        # While it floods: calls to another agent and the node's status keep being answered.
        while not done.is_set():
            assert time.monotonic() < deadline, f"flood not finished: {counts}"
            t0 = time.monotonic()
            assert node.call("echo", {"i": calls}, timeout=5)["i"] == calls
            assert node.status().tree.state == "running"
            worst = max(worst, time.monotonic() - t0)
            calls += 1
            statuses += 1
        assert calls >= 1 and worst < 2.0, f"call+status took up to {worst:.2f} s during the flood"
        assert counts["flood"] == FLOOD_LINES, counts
        assert order_ok[0], "lines lost, duplicated or out of order"
        assert node.call("flood", {}, timeout=5)["pid"] == pids(node)["flood"]
        print(f"\nflood: {counts['flood']} lines logged with their child id; "
              f"{calls} calls + {statuses} status during the flood, worst {worst * 1000:.0f} ms")
    finally:
        node.stop()


def _forker_node(program: str, pid_file: str, name: str) -> otpy.Node:
    root = otpy.SupervisorSpec(id="root", max_restarts=10, children=(
        otpy.ChildSpec(id="forker", program=program, args={"pid_file": pid_file}),))
    return otpy.Node.from_spec(root, name=unique_name(name)).start()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["sigkill", "terminate_child"])
def test_children_and_grandchildren_of_a_program_die_with_it(tmp_path, how):
    pid_file = str(tmp_path / "pids")
    node = _forker_node("tests.reliability_agents:DeepForker", pid_file, "deep")
    forked: list[int] = []
    try:
        forked = read_pids(pid_file)
        agent = pids(node)["forker"]
        assert all(alive(p) for p in forked)
        if how == "sigkill":
            os.kill(agent, 9)
        else:
            assert node.terminate_child("forker").outcome == "ok"
        assert wait_dead([agent, *forked], 1.0) == [], "a process forked by the program outlived it"
    finally:
        node.stop()
        reap_leftovers(forked)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["terminate_child", "node_stop"])
def test_a_grandchild_that_left_the_process_group_dies_with_the_program(tmp_path, how):
    """A daemon-style grandchild (``setsid``) escapes the process-group kill. The zygote is its
    subreaper, so otpy still owns it: it must not outlive the program (or the node)."""
    pid_file = str(tmp_path / "pid")
    node = _forker_node("tests.reliability_agents:SessionForker", pid_file, "setsid")
    forked: list[int] = []
    stopped = False
    try:
        forked = read_pids(pid_file)
        agent = pids(node)["forker"]
        if how == "terminate_child":
            assert node.terminate_child("forker").outcome == "ok"
        else:
            node.stop()
            stopped = True
        assert wait_dead([agent], 2.0) == []
        assert wait_dead(forked, 2.0) == [], (
            f"setsid grandchild {forked} outlived its program ({how}); it still carries OTPY_NODE")
    finally:
        if not stopped:
            node.stop()
        reap_leftovers(forked)
