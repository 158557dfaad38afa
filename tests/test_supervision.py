"""OTP supervision with real OS processes: strategies, order, shutdown, intensity, escalation."""

from __future__ import annotations

import os
import signal
import time

import pytest

import otpy
from otpy.wire.protocol import ChildInfo
from tests.helpers import Events, exits_with, pids, python, sleeper, unique_name, wait_dead, IGNORES_TERM

pytestmark = pytest.mark.timeout(30)


def start(children, strategy="one_for_one", **flags) -> tuple[otpy.Node, Events]:
    root = otpy.SupervisorSpec(id="root", strategy=strategy, children=tuple(children), **flags)
    node = otpy.Node.from_spec(root, name=unique_name("sup")).start()
    return node, Events(node)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


class TestStrategies:
    def test_one_for_one_restarts_only_the_dead_child(self):
        node, events = start([sleeper("a"), sleeper("b"), sleeper("c")])
        try:
            before = pids(node)
            kill(before["b"])
            events.wait("started", "b")
            after = pids(node)
            assert after["a"] == before["a"] and after["c"] == before["c"]
            assert after["b"] not in (None, before["b"])
        finally:
            node.stop()

    def test_one_for_all_restarts_every_child_stopping_others_in_reverse(self):
        node, events = start([sleeper("a"), sleeper("b"), sleeper("c")], strategy="one_for_all")
        try:
            before = pids(node)
            kill(before["b"])
            events.wait("started", "c")
            after = pids(node)
            assert all(after[i] != before[i] for i in "abc")
            order = [(e["kind"], e["child"]) for e in events.drain()
                     if e["kind"] in ("stopped", "started")]
            assert order == [("stopped", "c"), ("stopped", "a"),
                             ("started", "a"), ("started", "b"), ("started", "c")]
        finally:
            node.stop()

    def test_rest_for_one_restarts_the_dead_child_and_those_after_it(self):
        node, events = start([sleeper("a"), sleeper("b"), sleeper("c"), sleeper("d")],
                             strategy="rest_for_one")
        try:
            before = pids(node)
            kill(before["b"])
            events.wait("started", "d")
            after = pids(node)
            assert after["a"] == before["a"]
            assert all(after[i] != before[i] for i in "bcd")
            order = [(e["kind"], e["child"]) for e in events.drain() if e["kind"] in ("stopped", "started")]
            assert order == [("stopped", "d"), ("stopped", "c"),
                             ("started", "b"), ("started", "c"), ("started", "d")]
        finally:
            node.stop()


class TestRestartTypes:
    def test_transient_child_exiting_normally_is_not_restarted_and_keeps_its_spec(self):
        node, events = start([sleeper("a"), exits_with("t", 0, restart="transient")])
        try:
            events.wait("exited", "t")
            assert node.which_children("root")[1] == ChildInfo(id="t", kind="worker", state="stopped", pid=None,
                                                                 restarts=0, restart="transient")
        finally:
            node.stop()

    def test_transient_child_crashing_is_restarted(self):
        code = "import os, sys\np = os.environ['MARK']\nfirst = not os.path.exists(p)\nopen(p, 'a').close()\nsys.exit(3 if first else 0)"
        import tempfile

        mark = os.path.join(tempfile.mkdtemp(), "mark")
        spec = otpy.ChildSpec(id="t", command=python(code), restart="transient", env={"MARK": mark})
        node, events = start([spec])
        try:
            assert "exit status 3" in events.wait("exited", "t")["detail"]
            events.wait("restarting", "t")
            assert events.wait("exited", "t")["detail"] == "normal"
        finally:
            node.stop()

    def test_temporary_child_is_removed_when_it_exits(self):
        node, events = start([sleeper("a"), exits_with("tmp", 1, restart="temporary")])
        try:
            events.wait("exited", "tmp")
            assert [c.id for c in node.which_children()] == ["a"]
        finally:
            node.stop()


class TestShutdown:
    def test_children_stop_in_reverse_start_order(self, tmp_path):
        log = tmp_path / "stops"
        node, _ = start([sleeper(i, env={"LOG": str(log)}) for i in "abc"])
        node.stop()
        assert log.read_text().split() == ["c", "b", "a"]

    def test_a_child_ignoring_sigterm_is_killed_after_its_timeout(self):
        spec = otpy.ChildSpec(id="stubborn", command=python(IGNORES_TERM), ready="notify", shutdown=0.5)
        node, events = start([spec])
        pid = pids(node)["stubborn"]
        t0 = time.monotonic()
        node.stop()
        assert time.monotonic() - t0 >= 0.5
        assert "killed" in events.wait("stopped", "stubborn")["detail"]
        assert wait_dead([pid], 1) == []

    def test_brutal_kill_does_not_wait(self):
        spec = otpy.ChildSpec(id="stubborn", command=python(IGNORES_TERM), ready="notify", shutdown="brutal_kill")
        node, events = start([spec])
        t0 = time.monotonic()
        node.stop()
        assert time.monotonic() - t0 < 2
        assert "killed" in events.wait("stopped", "stubborn")["detail"]


class TestStartup:
    def test_a_failed_start_stops_the_started_children_and_never_starts_later_ones(self, tmp_path):
        log = tmp_path / "stops"
        bad = otpy.ChildSpec(id="bad", command=("/nonexistent/otpy-binary",))
        root = otpy.SupervisorSpec(id="root", children=(
            sleeper("a", env={"LOG": str(log)}), sleeper("b", env={"LOG": str(log)}), bad, sleeper("never")))
        with pytest.raises(otpy.NodeStartError, match="'bad'"):
            otpy.Node.from_spec(root, name=unique_name("fail")).start()
        assert log.read_text().split() == ["b", "a"]


class TestIntensity:
    def test_root_gives_up_after_max_restarts_and_stops_the_rest(self, tmp_path):
        log = tmp_path / "stops"
        node, events = start([sleeper("a", env={"LOG": str(log)}), exits_with("crasher", 1)],
                             max_restarts=2, max_seconds=60)
        try:
            event = events.wait("gave_up")
            assert "crasher" in event["detail"]
            events.wait("stopped", "a")
            assert len([e for e in events.drain() if e["kind"] == "restarting"]) == 2
            assert log.read_text().split() == ["a"]
        finally:
            node.stop()

    def test_a_permanent_child_supervisor_that_gives_up_is_restarted_by_its_parent(self):
        team = otpy.SupervisorSpec(id="team", max_restarts=0, children=(sleeper("w"),))
        node, events = start([sleeper("a"), team], max_restarts=5, max_seconds=60)
        try:
            first = pids(node, "team")["w"]
            kill(first)
            events.wait("gave_up", supervisor="team")
            events.wait("started", "team")
            assert pids(node, "team")["w"] not in (None, first)
        finally:
            node.stop()

    def test_a_transient_child_supervisor_that_gives_up_is_not_restarted(self):
        team = otpy.SupervisorSpec(id="team", max_restarts=0, restart="transient", children=(sleeper("w"),))
        node, events = start([sleeper("a"), team])
        try:
            kill(pids(node, "team")["w"])
            events.wait("gave_up", supervisor="team")
            events.wait("exited", "team")
            assert {c.id: c.state for c in node.which_children()} == {"a": "running", "team": "stopped"}
        finally:
            node.stop()

    def test_a_failing_restart_is_retried_through_the_inbox_and_counts(self, tmp_path):
        # Starts once; every later start fails (exec of a removed file).
        script = tmp_path / "once.sh"
        script.write_text("#!/bin/sh\nrm -- \"$0\"\necho READY >&3\nexec sleep 3600\n")
        script.chmod(0o755)
        node, events = start([sleeper("a"), otpy.ChildSpec(id="once", command=(str(script),), ready="notify")],
                             max_restarts=3, max_seconds=60)
        try:
            kill(pids(node)["once"])
            events.wait("gave_up")
            assert len([e for e in events.drain() if e["kind"] == "start_failed"]) == 3
        finally:
            node.stop()


class TestNodeDeath:
    def test_node_killed_leaves_no_child_alive(self, tmp_path):
        import subprocess
        import sys

        topo = tmp_path / "t.toml"
        topo.write_text(f"""
[node]
name = "{unique_name('die')}"
[supervisor]
[[supervisor.children]]
id = "a"
command = ["sleep", "3600"]
[[supervisor.children]]
id = "b"
program = "examples.hello.agents:Greeter"
""")
        proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", str(topo)],
                                stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        started = []
        for line in proc.stderr:
            if " started pid " in line:
                started.append(int(line.split(" started pid ")[1].split()[0]))
            if len(started) == 2:
                break
        proc.kill()
        proc.wait()
        assert wait_dead(started, 1.0) == []
