"""DynamicMachine against Elixir's DynamicSupervisor (shared/reference/otp-semantics.md, section 12).

Children are started at run time from full specs or from named templates, all one_for_one,
stopped in parallel. Driven by ``machine_driver.Driver``: no processes, no clock.
"""

from __future__ import annotations

import pytest

from machine_driver import (
    Driver, delete_child, reconfigure, restart_child, start_child, start_from_template, terminate_child,
)
from otpy.supervision.dynamic import DynamicMachine
from otpy.supervision.effects import (
    Answer, Boot, ChildExited, Command, Launch, LaunchFailed, Launched, Replace, Outcome, Retry, Stop,
)
from otpy.supervision.exit import ExitReason
from otpy.supervision.machine import StaticMachine
from otpy.specs.model import ChildSpec, DynamicSupervisorSpec, SupervisorSpec
from otpy.specs.rules import reconfigure_problems, significance_problem

NORMAL = ExitReason(kind="normal", code=0)
SHUTDOWN = ExitReason(kind="shutdown", signal=15)
KILLED = ExitReason(kind="killed", signal=9)
CRASHED_CODE = ExitReason(kind="crashed", code=3)
CRASHED_SIGNAL = ExitReason(kind="crashed", signal=11)
REASONS = {
    "normal": NORMAL, "shutdown": SHUTDOWN, "killed": KILLED,
    "crashed_code": CRASHED_CODE, "crashed_signal": CRASHED_SIGNAL,
}
TEMPLATE = ChildSpec(id="template", command=("agent",), args={"model": "small", "temperature": 0.0})


def worker(id: str, **fields) -> ChildSpec:
    return ChildSpec(id=id, command=("true",), **fields)


def dynamic(*ids: str, **flags) -> Driver:
    """A running dynamic supervisor with children ``ids`` started, and an empty log."""
    d = Driver(DynamicMachine(DynamicSupervisorSpec(id="dyn", templates={"agent": TEMPLATE}, **flags)))
    d.init()
    for id in ids:
        assert d.call(start_child(worker(id))).ok
    d.take_log()
    return d


def stop_effects(d: Driver) -> list[Stop]:
    return [e for e in d.effects if isinstance(e, Stop)]


def last_launched(d: Driver) -> ChildSpec:
    return [e for e in d.effects if isinstance(e, Launch)][-1].spec


class TestStartChild:
    def test_it_starts_nothing_at_init(self):
        d = Driver(DynamicMachine(DynamicSupervisorSpec(id="dyn")))
        assert d.init() == []

    def test_start_child_from_a_full_spec_replies_ok_with_the_pid(self):
        d = dynamic()
        result = d.call(start_child(worker("x")))
        assert result.outcome == "ok" and result.pid == d.pids["x"]
        assert d.log == ["start x"] and d.state("x") == "running"

    def test_start_child_from_a_template_merges_the_args_over_the_templates(self):
        d = dynamic()
        result = d.call(start_from_template("agent", "a1", {"temperature": 0.7, "seed": 1}))
        assert result.ok and d.log == ["start a1"]
        spec = last_launched(d)
        assert spec.id == "a1" and spec.command == ("agent",)
        assert spec.args == {"model": "small", "temperature": 0.7, "seed": 1}
        assert TEMPLATE.args == {"model": "small", "temperature": 0.0}  # the template is untouched

    def test_a_restart_uses_the_same_merged_args(self):
        d = dynamic()
        d.call(start_from_template("agent", "a1", {"seed": 7}))
        first = last_launched(d)
        d.crash("a1")
        assert last_launched(d) == first

    def test_an_unknown_template_is_not_found(self):
        d = dynamic()
        assert d.call(start_from_template("nope", "a1")).outcome == "not_found"
        assert d.log == []

    def test_a_start_that_fails_keeps_nothing_and_uses_no_intensity(self):
        d = dynamic(max_restarts=0)
        d.fail["x"] = 1
        assert d.call(start_child(worker("x"))).outcome == "start_failed"
        assert "x" not in d.machine.children and not d.inbox
        assert len(d.machine.window) == 0 and d.exit is None
        assert d.call(start_child(worker("x"))).ok

    def test_a_significant_child_is_refused(self):
        d = dynamic()
        spec = worker("x", restart="transient", significant=True)
        result = d.call(start_child(spec))
        assert (result.outcome, result.detail) == ("invalid", significance_problem(spec, d.machine.spec))
        assert d.log == [] and "x" not in d.machine.children

    def test_a_running_id_is_already_started(self):
        d = dynamic("x")
        result = d.call(start_child(worker("x")))
        assert result.outcome == "already_started" and result.pid == d.pids["x"]


class TestMaxChildren:
    def test_start_child_beyond_max_children_is_refused(self):
        d = dynamic("a", "b", max_children=2)
        assert d.call(start_child(worker("c"))).outcome == "max_children"
        assert d.log == []

    def test_restarting_children_count_toward_max_children(self):
        d = dynamic("a", "b", max_children=2)
        d.fail_always.add("b")
        d.crash("b")
        assert d.state("b") == "restarting"
        assert d.call(start_child(worker("c"))).outcome == "max_children"

    def test_a_terminated_child_frees_its_place(self):
        d = dynamic("a", "b", max_children=2)
        d.call(terminate_child("a"))
        assert d.call(start_child(worker("c"))).ok


class TestTerminateChild:
    def test_terminate_child_stops_and_removes_it(self):
        d = dynamic("a", "b")
        assert d.call(terminate_child("a")).outcome == "ok"
        assert d.log == ["stop a"]
        assert "a" not in d.machine.children and d.state("b") == "running"

    def test_a_second_terminate_child_is_not_found(self):
        d = dynamic("a")
        d.call(terminate_child("a"))
        assert d.call(terminate_child("a")).outcome == "not_found"

    def test_terminate_child_is_not_a_restart_and_its_exit_is_stale(self):
        d = dynamic("a", max_restarts=0)
        old = d.incarnations["a"]
        d.call(terminate_child("a"))
        d.take_log()
        assert d.send(ChildExited("a", old, SHUTDOWN)) == []
        assert len(d.machine.window) == 0 and d.exit is None

    def test_terminate_child_on_a_restarting_child_removes_it_and_stops_the_retries(self):
        d = dynamic("a", "b")
        d.fail_always.add("b")
        d.crash("b")
        d.take_log()
        assert d.call(terminate_child("b")).outcome == "ok"
        assert d.log == []  # nothing was running
        assert "b" not in d.machine.children
        assert d.run_inbox() == []


OUTCOMES = {
    "permanent": dict.fromkeys(REASONS, "restarted"),
    "transient": {"normal": "removed", "shutdown": "removed", "killed": "restarted",
                  "crashed_code": "restarted", "crashed_signal": "restarted"},
    "temporary": dict.fromkeys(REASONS, "removed"),
}
TABLE = [(r, why, OUTCOMES[r][why]) for r in OUTCOMES for why in REASONS]


class TestExits:
    @pytest.mark.parametrize(("restart", "why", "outcome"), TABLE)
    def test_a_child_that_is_not_restarted_is_removed(self, restart, why, outcome):
        d = dynamic("a")
        d.call(start_child(worker("x", restart=restart)))
        d.take_log()
        lines = d.crash("x", REASONS[why])
        if outcome == "restarted":
            assert lines == ["start x"] and d.state("x") == "running"
            assert len(d.machine.window) == 1
        else:
            assert lines == [] and "x" not in d.machine.children
            assert len(d.machine.window) == 0
        assert d.state("a") == "running"  # one_for_one: the others are never touched

    def test_the_id_of_a_removed_child_can_be_used_again(self):
        d = dynamic()
        d.call(start_child(worker("x", restart="temporary")))
        d.crash("x", CRASHED_CODE)
        assert d.call(start_child(worker("x"))).ok

    def test_an_exit_of_an_old_incarnation_is_ignored(self):
        d = dynamic("a")
        old = d.incarnations["a"]
        d.crash("a")
        assert d.send(ChildExited("a", old, CRASHED_CODE)) == []


class TestIntensity:
    def test_a_restart_on_crash_is_counted(self):
        d = dynamic("a", "b", max_restarts=2)
        d.crash("a")
        d.crash("b")
        assert len(d.machine.window) == 2 and d.exit is None

    def test_one_crash_more_than_max_restarts_gives_up_stopping_everyone_in_parallel(self):
        d = dynamic("a", "b", "c", max_restarts=2)
        d.crash("a")
        d.crash("a")
        d.take_log()
        lines = d.crash("a")
        assert lines[-1] == "exit shutdown" and sorted(lines[:-1]) == ["stop b", "stop c"]
        assert stop_effects(d)[-1].parallel
        assert d.exit.reason.kind == "shutdown"

    def test_restarts_spread_beyond_max_seconds_never_give_up(self):
        d = dynamic("a", max_restarts=1, max_seconds=5)
        for _ in range(10):
            assert d.crash("a") == ["start a"]
            d.advance(6)


class TestFailedRestart:
    def test_a_failed_restart_marks_the_child_restarting_and_posts_a_retry(self):
        d = dynamic("a")
        d.fail["a"] = 1
        assert d.crash("a") == ["start a failed", "post retry a"]
        assert d.state("a") == "restarting" and [e.id for e in d.inbox if isinstance(e, Retry)] == ["a"]
        assert d.run_inbox() == ["start a"]
        assert d.state("a") == "running"

    def test_a_retry_left_from_before_a_terminate_and_start_child_is_ignored(self):
        d = dynamic("a", max_restarts=10)
        d.fail["a"] = 1
        d.crash("a")
        assert d.call(terminate_child("a")).outcome == "ok"
        assert d.call(start_child(worker("a"))).outcome == "ok"
        d.fail_always.add("a")
        d.crash("a")
        stale, due = d.inbox
        d.inbox.clear()
        assert d.send(stale) == []
        assert d.send(due) == ["start a failed", "post retry a"]
        assert len(d.inbox) == 1  # one chain of retries, not two

    def test_each_retry_is_counted(self):
        d = dynamic("a", max_restarts=10)
        d.fail["a"] = 2
        d.crash("a")
        d.run_inbox()
        assert len(d.machine.window) == 3

    def test_a_child_that_never_starts_gives_up_after_exactly_max_restarts_attempts(self):
        d = dynamic("a", "b", max_restarts=3)
        d.fail_always.add("a")
        d.crash("a")
        d.run_inbox()
        assert d.log.count("start a failed") == 3
        assert d.log[-2:] == ["stop b", "exit shutdown"]

    def test_stopping_while_a_retry_is_pending_is_served_and_the_retry_ignored(self):
        d = dynamic("a", "b")
        d.fail_always.add("a")
        d.crash("a")
        d.take_log()
        assert d.stop() == ["stop b", "exit shutdown"]
        assert d.run_inbox() == []


class TestShutdown:
    def test_shutdown_is_one_parallel_stop_of_every_running_child(self):
        d = dynamic("a", "b", "c")
        lines = d.stop()
        [stop] = stop_effects(d)
        assert stop.parallel and sorted(stop.ids) == ["a", "b", "c"]
        assert lines[-1] == "exit shutdown"
        assert d.exit.reason.kind == "shutdown"

    def test_shutdown_without_children_just_exits(self):
        d = dynamic()
        assert d.stop() == ["exit shutdown"]

    @pytest.mark.parametrize("why", list(REASONS))
    def test_exits_after_shutdown_never_restart(self, why):
        d = dynamic("a", "b")
        old = dict(d.incarnations)
        d.stop()
        d.take_log()
        for id, incarnation in old.items():
            assert d.send(ChildExited(id, incarnation, REASONS[why])) == []

    def test_calls_after_shutdown_are_refused(self):
        d = dynamic("a")
        d.stop()
        assert d.call(start_child(worker("z"))).outcome == "not_found"


class TestUnsupported:
    def test_restart_child_is_not_supported(self):
        d = dynamic("a")
        assert d.call(restart_child("a")).outcome == "not_supported"

    def test_delete_child_is_not_supported(self):
        d = dynamic("a")
        assert d.call(delete_child("a")).outcome == "not_supported"


class TestReconfigure:
    """Make-before-break: the replacement starts beside the child, then the incarnation it replaced is stopped."""

    def _running(self):
        m = DynamicMachine(DynamicSupervisorSpec(id="pool"))
        m.handle(Boot(), 0)
        m.handle(Command(start_child(ChildSpec(id="c", program="pkg:A")), "r0"), 0)
        m.handle(Launched("c", 1, 100), 0)
        return m

    def test_the_replacement_starts_before_the_child_is_replaced(self):
        m = self._running()
        target = ChildSpec(id="c", program="pkg:B")
        effects = m.handle(Command(reconfigure("c", target), "r1"), 0)
        assert effects[-1] == Launch(target, replacement=True)
        assert m.children["c"].pid == 100  # the replaced incarnation is still the child
        assert m.handle(Launched("c", 2, 200), 0) == [Answer("r1", Outcome("ok", pid=200)), Replace("c")]
        assert (m.children["c"].spec.program, m.children["c"].pid) == ("pkg:B", 200)

    def test_a_replacement_that_fails_to_start_leaves_the_child_running(self):
        m = self._running()
        m.handle(Command(reconfigure("c", ChildSpec(id="c", program="pkg:B")), "r1"), 0)
        [reply] = m.handle(LaunchFailed("c", "boom"), 0)
        assert reply.result.outcome == "start_failed" and "boom" in reply.result.detail
        assert (m.children["c"].spec.program, m.children["c"].pid, m.children["c"].state) == ("pkg:A", 100, "running")

    def test_the_replaced_incarnation_exit_is_stale(self):
        m = self._running()
        m.handle(Command(reconfigure("c", ChildSpec(id="c", program="pkg:B")), "r1"), 0)
        m.handle(Launched("c", 2, 200), 0)
        assert m.handle(ChildExited("c", 1, SHUTDOWN), 1) == []
        assert m.children["c"].state == "running"

    def test_a_significant_replacement_is_refused_by_the_spec_rule(self):
        m = self._running()
        target = ChildSpec(id="c", program="pkg:B", restart="transient", significant=True)
        [answer] = m.handle(Command(reconfigure("c", target), "r"), 0)
        assert answer == Answer("r", Outcome("invalid", detail=significance_problem(target, m.spec)))
        assert (m.children["c"].spec.program, m.children["c"].state) == ("pkg:A", "running")

    def test_unknown_and_mismatched_targets_are_refused(self):
        m = self._running()
        assert m.handle(Command(reconfigure("x", ChildSpec(id="x", program="pkg:B")), "r"), 0)[0].result.outcome == "not_found"
        mismatched = ChildSpec(id="d", program="pkg:B")
        [answer] = m.handle(Command(reconfigure("c", mismatched), "r"), 0)
        assert answer.result == Outcome("invalid", detail="; ".join(reconfigure_problems("c", mismatched, m.spec)))
        assert "expected 'c', the id of the child it replaces" in answer.result.detail


class TestShutdownTable:
    """After a shutdown every child of either machine is stopped with no incarnation and no pid:
    a dynamic supervisor's table once kept them (its own ``_terminate`` left them set)."""

    @pytest.mark.parametrize("kind", ["static", "dynamic"])
    def test_a_stopped_supervisor_keeps_no_incarnation_or_pid(self, kind):
        if kind == "dynamic":
            d = dynamic("a", "b")
        else:
            d = Driver(StaticMachine(SupervisorSpec(id="s", children=(worker("a"), worker("b")))))
            d.init()
        d.stop()
        assert [(c.state, c.incarnation, c.pid) for c in d.machine.children.values()] == [("stopped", None, None)] * 2
