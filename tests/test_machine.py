"""StaticMachine against OTP's supervisor (shared/reference/otp-semantics.md, sections in brackets).

Every test drives the pure machine through ``machine_driver.Driver``: no processes, no clock.
Log lines read "start a", "start a failed", "stop a", "post retry a", "exit shutdown".
"""

from __future__ import annotations

import pytest

from machine_driver import (
    Driver, delete_child, reconfigure, restart_child, start_child, start_from_template, terminate_child,
)
from otpy.supervision.effects import ChildExited, Exit, Retry, Stop
from otpy.supervision.exit import ExitReason
from otpy.supervision.machine import StaticMachine
from otpy.specs.model import ChildSpec, SupervisorSpec
from otpy.specs.rules import significance_problem

NORMAL = ExitReason(kind="normal", code=0)
SHUTDOWN = ExitReason(kind="shutdown", signal=15)
KILLED = ExitReason(kind="killed", signal=9)
CRASHED_CODE = ExitReason(kind="crashed", code=3)
CRASHED_SIGNAL = ExitReason(kind="crashed", signal=11)
REASONS = {
    "normal": NORMAL, "shutdown": SHUTDOWN, "killed": KILLED,
    "crashed_code": CRASHED_CODE, "crashed_signal": CRASHED_SIGNAL,
}


def worker(id: str, **fields) -> ChildSpec:
    return ChildSpec(id=id, command=("true",), **fields)


def children(ids: str) -> tuple[ChildSpec, ...]:
    return tuple(worker(i) for i in ids.split())


def supervisor(*kids, id: str = "sup", **flags) -> SupervisorSpec:
    return SupervisorSpec(id=id, children=tuple(kids), **flags)


def started(*kids, fail=None, **flags) -> Driver:
    """A supervisor that has run ``init``, with an empty log; ``fail`` applies after init."""
    d = Driver(StaticMachine(supervisor(*kids, **flags)))
    d.init()
    assert d.exit is None, d.log
    d.take_log()
    d.fail = dict(fail or {})
    return d


def stop_effects(d: Driver) -> list[Stop]:
    return [e for e in d.effects if isinstance(e, Stop)]


# --- [5] what happens when a child exits by itself ---------------------------------------------


OUTCOMES = {
    "permanent": dict.fromkeys(REASONS, "restarted"),
    "transient": {"normal": "kept", "shutdown": "kept", "killed": "restarted",
                  "crashed_code": "restarted", "crashed_signal": "restarted"},
    "temporary": dict.fromkeys(REASONS, "deleted"),
}
TABLE = [(r, why, OUTCOMES[r][why]) for r in OUTCOMES for why in REASONS]


class TestRestartDecisionTable:
    @pytest.mark.parametrize(("restart", "why", "outcome"), TABLE)
    def test_exit_by_itself_follows_do_restart(self, restart, why, outcome):
        d = started(worker("a"), worker("b", restart=restart), worker("c"))
        old_incarnation = d.incarnations["b"]
        lines = d.crash("b", REASONS[why])
        if outcome == "restarted":
            assert lines == ["start b"]
            assert d.state("b") == "running" and d.incarnations["b"] != old_incarnation
            assert len(d.machine.window) == 1
        elif outcome == "kept":
            assert lines == []
            assert d.state("b") == "stopped"  # OTP: spec kept, pid undefined
            assert d.machine.order == ["a", "b", "c"]
            assert len(d.machine.window) == 0
        else:
            assert lines == []
            assert "b" not in d.machine.children and d.machine.order == ["a", "c"]
            assert len(d.machine.window) == 0

    def test_temporary_child_spec_is_deleted_so_its_id_can_be_started_again(self):
        d = started(worker("a"), worker("t", restart="temporary"))
        d.crash("t", CRASHED_CODE)
        assert d.call(start_child(worker("t", restart="temporary"))).outcome == "ok"
        assert d.machine.order == ["a", "t"]

    def test_transient_child_that_exited_cleanly_keeps_its_spec_and_can_be_restarted(self):
        d = started(worker("a"), worker("b", restart="transient"))
        d.crash("b", NORMAL)
        assert d.call(start_child(worker("b"))).outcome == "already_present"
        assert d.call(restart_child("b")).outcome == "ok"

    def test_exit_of_an_incarnation_that_is_not_current_is_ignored(self):
        d = started(worker("a"))
        stale = d.incarnations["a"]
        d.crash("a")
        assert d.send(ChildExited("a", stale, CRASHED_CODE)) == []
        assert d.state("a") == "running" and len(d.machine.window) == 1

    def test_exit_of_an_unknown_id_is_ignored(self):
        d = started(worker("a"))
        assert d.send(ChildExited("nobody", 999, CRASHED_CODE)) == []


# --- [6] strategies ------------------------------------------------------------------------


class TestOneForOne:
    def test_only_the_dead_child_is_restarted(self):
        d = started(*children("a b c"))
        before = dict(d.incarnations)
        assert d.crash("b") == ["start b"]
        assert d.incarnations["a"] == before["a"] and d.incarnations["c"] == before["c"]
        assert stop_effects(d) == []

    def test_the_dead_child_is_restarted_with_the_same_spec(self):
        spec = worker("b", args={"k": 1}, env={"E": "1"})
        d = started(worker("a"), spec)
        d.crash("b")
        assert d.effects[-1].spec is spec


class TestOneForAll:
    def test_others_stop_in_reverse_start_order_then_all_start_in_start_order(self):
        d = started(*children("a b c d"), strategy="one_for_all")
        assert d.crash("b") == [
            "stop d", "stop c", "stop a",
            "start a", "start b", "start c", "start d",
        ]
        assert stop_effects(d) == [Stop(("d", "c", "a"), parallel=False)]

    def test_a_group_restart_counts_one_restart(self):
        d = started(*children("a b c d"), strategy="one_for_all", max_restarts=1)
        d.crash("c")
        assert len(d.machine.window) == 1
        assert d.exit is None

    def test_a_stopped_but_kept_sibling_is_started_by_the_group_restart(self):
        d = started(worker("a"), worker("b", restart="transient"), worker("c"),
                    strategy="one_for_all")
        d.crash("b", NORMAL)  # transient, clean: kept with pid undefined
        assert d.crash("a") == ["stop c", "start a", "start b", "start c"]
        assert d.state("b") == "running"

    def test_a_sibling_stopped_with_terminate_child_is_started_by_the_group_restart(self):
        d = started(*children("a b c"), strategy="one_for_all")
        assert d.call(terminate_child("c")).ok
        d.take_log()
        assert d.crash("a") == ["stop b", "start a", "start b", "start c"]

    def test_temporary_bystanders_are_stopped_and_dropped_not_restarted(self):
        d = started(worker("a"), worker("t", restart="temporary"), worker("c"),
                    strategy="one_for_all")
        assert d.crash("a") == ["stop c", "stop t", "start a", "start c"]
        assert "t" not in d.machine.children and d.machine.order == ["a", "c"]

    def test_exits_of_the_bounced_siblings_are_stale(self):
        d = started(*children("a b c"), strategy="one_for_all")
        old = dict(d.incarnations)
        d.crash("a")
        d.take_log()
        for id in ("b", "c"):
            assert d.send(ChildExited(id, old[id], SHUTDOWN)) == []
        assert len(d.machine.window) == 1


class TestRestForOne:
    def test_killing_the_third_of_five_stops_five_then_four_and_starts_three_four_five(self):
        d = started(*children("c1 c2 c3 c4 c5"), strategy="rest_for_one")
        before = dict(d.incarnations)
        assert d.crash("c3") == ["stop c5", "stop c4", "start c3", "start c4", "start c5"]
        assert d.incarnations["c1"] == before["c1"] and d.incarnations["c2"] == before["c2"]
        assert len(d.machine.window) == 1

    def test_the_last_child_dying_restarts_only_itself(self):
        d = started(*children("a b c"), strategy="rest_for_one")
        assert d.crash("c") == ["start c"]

    def test_the_first_child_dying_restarts_everyone(self):
        d = started(*children("a b c"), strategy="rest_for_one")
        assert d.crash("a") == ["stop c", "stop b", "start a", "start b", "start c"]

    def test_later_stopped_but_kept_siblings_start_and_temporary_ones_are_dropped(self):
        d = started(worker("a"), worker("b"), worker("k", restart="transient"),
                    worker("t", restart="temporary"), strategy="rest_for_one")
        d.crash("k", NORMAL)
        assert d.crash("b") == ["stop t", "start b", "start k"]
        assert d.machine.order == ["a", "b", "k"]


# --- [7] intensity ----------------------------------------------------------------------------


class TestIntensity:
    def test_max_restarts_zero_makes_the_first_crash_fatal(self):
        d = started(*children("a b"), max_restarts=0)
        assert d.crash("a") == ["stop b", "exit shutdown"]

    @pytest.mark.parametrize("max_restarts", [1, 3, 5])
    def test_max_restarts_restarts_are_allowed_in_the_window_and_the_next_gives_up(self, max_restarts):
        d = started(*children("a b"), max_restarts=max_restarts, max_seconds=5)
        for _ in range(max_restarts):
            assert d.crash("a") == ["start a"]
            d.advance(0.5)
        assert d.crash("a") == ["stop b", "exit shutdown"]

    def test_the_budget_is_shared_by_all_children(self):
        d = started(*children("a b c"), max_restarts=2)
        d.crash("a")
        d.crash("b")
        assert d.crash("c") == ["stop b", "stop a", "exit shutdown"]

    def test_restarts_spread_beyond_max_seconds_never_give_up(self):
        d = started(worker("a"), max_restarts=1, max_seconds=5)
        for _ in range(20):
            assert d.crash("a") == ["start a"]
            d.advance(6)
        assert d.exit is None

    def test_an_entry_exactly_max_seconds_old_still_counts(self):
        d = started(worker("a"), max_restarts=1, max_seconds=5)
        d.crash("a")
        d.advance(5)
        assert d.crash("a") == ["exit shutdown"]

    def test_an_entry_one_second_older_than_max_seconds_no_longer_counts(self):
        d = started(worker("a"), max_restarts=1, max_seconds=5)
        d.crash("a")
        d.advance(6)
        assert d.crash("a") == ["start a"]

    def test_the_window_uses_whole_seconds(self):
        # OTP's monotonic_time(second): 0.1 -> 0 and 5.9 -> 5, exactly max_seconds apart.
        d = started(worker("a"), max_restarts=1, max_seconds=5)
        d.advance(0.1)
        d.crash("a")
        d.advance(5.8)
        assert d.crash("a") == ["exit shutdown"]

    def test_giving_up_stops_all_children_in_reverse_order_and_exits_shutdown(self):
        d = started(*children("a b c d"), max_restarts=0)
        assert d.crash("b") == ["stop d", "stop c", "stop a", "exit shutdown"]
        assert stop_effects(d) == [Stop(("d", "c", "a"), parallel=False)]
        assert d.exit.reason.kind == "shutdown" and d.exit.reason.clean
        assert d.exit.error is None
        assert [r.child for r in d.reports("gave_up")] == ["b"]

    def test_giving_up_under_one_for_all_does_not_start_anything(self):
        d = started(*children("a b c"), strategy="one_for_all", max_restarts=0)
        assert d.crash("a") == ["stop c", "stop b", "exit shutdown"]

    def test_after_giving_up_exits_are_ignored_and_calls_refused(self):
        d = started(*children("a b"), max_restarts=0)
        old_b = d.incarnations["b"]
        d.crash("a")
        d.take_log()
        assert d.send(ChildExited("b", old_b, CRASHED_CODE)) == []
        assert d.call(start_child(worker("z"))).outcome == "not_found"
        assert d.log == []


# --- [8] failed restarts ---------------------------------------------------------------------


class TestFailedRestart:
    def test_the_child_is_marked_restarting_and_a_retry_is_posted_not_looped(self):
        d = started(*children("a b"), fail={"b": 5})
        assert d.crash("b") == ["start b failed", "post retry b"]
        assert d.state("b") == "restarting"
        assert [e.id for e in d.inbox if isinstance(e, Retry)] == ["b"]

    def test_the_retry_from_the_inbox_starts_the_child(self):
        d = started(*children("a b"), fail={"b": 1})
        d.crash("b")
        assert d.run_inbox() == ["start b"]
        assert d.state("b") == "running"

    def test_each_retry_counts_as_a_restart(self):
        d = started(*children("a b"), max_restarts=10)
        d.fail["b"] = 2
        d.crash("b")
        assert len(d.machine.window) == 1
        d.run_inbox()
        assert d.state("b") == "running"
        assert len(d.machine.window) == 3  # the crash and two retries

    @pytest.mark.parametrize("max_restarts", [1, 3, 4])
    def test_a_child_that_never_starts_gives_up_after_exactly_max_restarts_attempts(self, max_restarts):
        d = started(*children("a b c"), max_restarts=max_restarts)
        d.fail_always.add("b")
        d.crash("b")
        d.run_inbox()
        assert d.log.count("start b failed") == max_restarts
        assert d.log[-3:] == ["stop c", "stop a", "exit shutdown"]
        assert "start b" not in d.log

    def test_stop_supervisor_while_a_retry_is_pending_is_served_and_the_retry_is_ignored(self):
        d = started(*children("a b c"))
        d.fail_always.add("b")
        d.crash("b")
        d.take_log()
        assert d.stop() == ["stop c", "stop a", "exit shutdown"]
        assert d.inbox  # the stale Retry is still queued...
        assert d.run_inbox() == []  # ...and does nothing

    def test_terminate_child_on_a_restarting_child_is_ok_and_stops_the_retries(self):
        d = started(*children("a b"))
        d.fail_always.add("b")
        d.crash("b")
        d.take_log()
        assert d.call(terminate_child("b")).outcome == "ok"
        assert d.state("b") == "stopped"
        assert d.run_inbox() == []
        assert len(d.machine.window) == 1

    def test_a_retry_left_from_an_earlier_run_of_restarts_is_ignored(self):
        # b's restart fails (Retry 1 queued); terminate + restart_child b; b crashes and its
        # restart fails again (Retry 2). Only Retry 2 may act: one chain of retries, not two.
        d = started(*children("a b"), max_restarts=10)
        d.fail["b"] = 1
        d.crash("b")
        assert d.call(terminate_child("b")).outcome == "ok"
        assert d.call(restart_child("b")).outcome == "ok"
        d.fail_always.add("b")
        d.crash("b")
        stale, due = d.inbox
        d.inbox.clear()
        assert d.send(stale) == []
        assert d.send(due) == ["start b failed", "post retry b"]
        assert len(d.inbox) == 1  # one chain of retries, not two

    def test_start_child_with_the_id_of_a_restarting_child_is_already_present(self):
        d = started(*children("a b"), fail={"b": 1})
        d.crash("b")
        assert d.call(start_child(worker("b"))).outcome == "already_present"

    def test_one_for_all_retry_stops_the_restarted_ones_again_and_restarts_the_whole_group(self):
        d = started(*children("a b c"), strategy="one_for_all", max_restarts=5)
        d.fail["b"] = 1
        assert d.crash("a") == ["stop c", "stop b", "start a", "start b failed", "post retry b"]
        assert d.state("c") == "stopped"
        first_a = d.incarnations["a"]
        assert d.run_inbox() == ["stop a", "start a", "start b", "start c"]
        assert d.incarnations["a"] != first_a  # a got a new incarnation
        assert len(d.machine.window) == 2

    def test_rest_for_one_retry_restarts_from_the_failed_child(self):
        d = started(*children("c1 c2 c3 c4"), strategy="rest_for_one", max_restarts=5)
        d.fail["c3"] = 1
        assert d.crash("c2") == ["stop c4", "stop c3", "start c2", "start c3 failed", "post retry c3"]
        c2 = d.incarnations["c2"]
        assert d.run_inbox() == ["start c3", "start c4"]
        assert d.incarnations["c2"] == c2  # the earlier sibling that already restarted is left alone

    def test_rest_for_one_children_after_a_looping_child_stay_stopped(self):
        d = started(*children("c1 c2 c3"), strategy="rest_for_one", max_restarts=5)
        d.fail_always.add("c2")
        d.crash("c2")
        assert [d.state(i) for i in ("c1", "c2", "c3")] == ["running", "restarting", "stopped"]


# --- [4] start-up -------------------------------------------------------------------------------


class TestStartup:
    def test_children_start_one_by_one_in_spec_order(self):
        d = Driver(StaticMachine(supervisor(*children("a b c d"))))
        assert d.init() == ["start a", "start b", "start c", "start d"]
        assert all(d.state(i) == "running" for i in "abcd")
        assert d.machine.phase == "running"

    def test_a_supervisor_without_children_starts(self):
        d = Driver(StaticMachine(supervisor()))
        assert d.init() == []
        assert d.machine.phase == "running" and d.exit is None

    def test_a_failed_start_stops_the_started_ones_in_reverse_and_never_starts_later_ones(self):
        d = Driver(StaticMachine(supervisor(*children("a b c d"))), fail={"c": 1})
        lines = d.init()
        assert lines[:-1] == ["start a", "start b", "start c failed", "stop b", "stop a"]
        assert lines[-1].startswith("exit ")
        assert "start d" not in lines
        assert stop_effects(d) == [Stop(("b", "a"), parallel=False)]

    def test_the_exit_of_a_failed_start_carries_an_error_naming_the_child(self):
        d = Driver(StaticMachine(supervisor(*children("a b c"))), fail={"b": 1})
        d.init()
        assert d.exit is not None and d.exit.error is not None
        assert "'b'" in d.exit.error

    def test_a_failing_first_child_stops_nothing(self):
        d = Driver(StaticMachine(supervisor(*children("a b"))), fail={"a": 1})
        lines = d.init()
        assert len(lines) == 2
        assert lines[0] == "start a failed" and lines[-1].startswith("exit ")
        assert all(stop.ids == () for stop in stop_effects(d))

    def test_a_failed_start_uses_no_restart_intensity_and_is_not_retried(self):
        d = Driver(StaticMachine(supervisor(*children("a b"))), fail={"b": 1})
        d.init()
        assert len(d.machine.window) == 0
        assert not d.inbox


# --- [9] shutdown ------------------------------------------------------------------------------


class TestShutdown:
    def test_children_stop_one_at_a_time_in_reverse_start_order(self):
        d = started(*children("a b c"))
        assert d.stop() == ["stop c", "stop b", "stop a", "exit shutdown"]
        assert stop_effects(d) == [Stop(("c", "b", "a"), parallel=False)]
        assert d.exit.reason.kind == "shutdown"

    def test_stopped_children_are_skipped(self):
        d = started(*children("a b c"))
        d.call(terminate_child("b"))
        d.take_log()
        assert d.stop() == ["stop c", "stop a", "exit shutdown"]

    def test_a_child_added_with_start_child_is_stopped_first(self):
        d = started(*children("a b"))
        d.call(start_child(worker("z")))
        d.take_log()
        assert d.stop() == ["stop z", "stop b", "stop a", "exit shutdown"]

    @pytest.mark.parametrize("why", list(REASONS))
    def test_exits_after_shutdown_never_restart(self, why):
        d = started(worker("a"), worker("b", restart="transient"), worker("c", restart="temporary"))
        old = dict(d.incarnations)
        d.stop()
        d.take_log()
        for id, incarnation in old.items():
            assert d.send(ChildExited(id, incarnation, REASONS[why])) == []
        assert len(d.machine.window) == 0

    def test_calls_after_shutdown_are_refused(self):
        d = started(worker("a"))
        d.stop()
        assert d.call(terminate_child("a")).outcome == "not_found"
        assert d.call(restart_child("a")).outcome == "not_found"


# --- [10] significant children and auto_shutdown -----------------------------------------------


def significant(id: str, restart: str = "transient") -> ChildSpec:
    return worker(id, restart=restart, significant=True)


class TestAutoShutdown:
    def test_any_significant_shuts_down_when_a_significant_transient_exits_cleanly(self):
        d = started(worker("a"), significant("s"), worker("b"), auto_shutdown="any_significant")
        assert d.crash("s", NORMAL) == ["stop b", "stop a", "exit shutdown"]
        assert d.exit.reason.kind == "shutdown"
        assert [r.child for r in d.reports("auto_shutdown")] == ["s"]

    @pytest.mark.parametrize("why", list(REASONS))
    def test_any_significant_shuts_down_when_a_significant_temporary_exits_for_any_reason(self, why):
        d = started(worker("a"), significant("t", "temporary"), auto_shutdown="any_significant")
        assert d.crash("t", REASONS[why]) == ["stop a", "exit shutdown"]

    @pytest.mark.parametrize("why", ["killed", "crashed_code", "crashed_signal"])
    def test_a_significant_transient_that_crashes_is_restarted_and_triggers_nothing(self, why):
        d = started(worker("a"), significant("s"), auto_shutdown="any_significant")
        assert d.crash("s", REASONS[why]) == ["start s"]
        assert d.exit is None

    def test_all_significant_waits_for_the_last_significant_child(self):
        d = started(significant("s1"), significant("s2"), worker("a"), auto_shutdown="all_significant")
        assert d.crash("s1", NORMAL) == []
        assert d.crash("s2", SHUTDOWN) == ["stop a", "exit shutdown"]

    def test_all_significant_does_not_count_a_significant_child_already_stopped(self):
        d = started(significant("s1"), significant("s2"), worker("a"), auto_shutdown="all_significant")
        assert d.call(terminate_child("s1")).ok
        d.take_log()
        assert d.crash("s2", NORMAL) == ["stop a", "exit shutdown"]

    def test_terminate_child_of_a_significant_child_never_triggers_it(self):
        d = started(worker("a"), significant("s"), auto_shutdown="any_significant")
        assert d.call(terminate_child("s")).ok
        assert d.log == ["stop s"] and d.exit is None

    def test_terminating_the_last_significant_child_does_not_trigger_all_significant(self):
        d = started(significant("s"), worker("a"), auto_shutdown="all_significant")
        assert d.call(terminate_child("s")).ok
        assert d.exit is None

    def test_a_significant_bystander_of_a_group_restart_never_triggers_it(self):
        d = started(worker("a"), significant("t", "temporary"), worker("b"),
                    strategy="one_for_all", auto_shutdown="any_significant")
        assert d.crash("a") == ["stop b", "stop t", "start a", "start b"]
        assert d.exit is None

    def test_a_non_significant_child_never_triggers_it(self):
        d = started(worker("a", restart="transient"), significant("s"), auto_shutdown="any_significant")
        assert d.crash("a", NORMAL) == []
        assert d.exit is None

    def test_auto_shutdown_never_ignores_exits(self):
        d = started(worker("a", restart="temporary"), worker("b"))
        d.crash("a", NORMAL)
        assert d.exit is None


# --- [11] administration -----------------------------------------------------------------------


class TestAdministration:
    # start_child
    def test_start_child_starts_it_last_in_start_order_and_replies_ok_with_its_pid(self):
        d = started(*children("a b"))
        result = d.call(start_child(worker("z")))
        assert result.outcome == "ok" and result.pid == d.pids["z"]
        assert d.log == ["start z"]
        assert d.machine.order == ["a", "b", "z"]

    def test_start_child_of_a_running_id_is_already_started_with_its_pid(self):
        d = started(*children("a b"))
        result = d.call(start_child(worker("a")))
        assert result.outcome == "already_started" and result.pid == d.pids["a"]
        assert d.log == []

    def test_start_child_of_a_stopped_id_is_already_present(self):
        d = started(*children("a b"))
        d.call(terminate_child("a"))
        assert d.call(start_child(worker("a"))).outcome == "already_present"

    def test_a_start_child_that_fails_discards_the_spec_and_uses_no_intensity(self):
        d = started(*children("a b"), max_restarts=0)
        d.fail["z"] = 1
        assert d.call(start_child(worker("z"))).outcome == "start_failed"
        assert "z" not in d.machine.children and d.machine.order == ["a", "b"]
        assert len(d.machine.window) == 0 and not d.inbox and d.exit is None
        assert d.call(start_child(worker("z"))).outcome == "ok"

    def test_start_child_refuses_a_significant_permanent_child(self):
        # [3] significant=true with restart=permanent is a bad_combination: nothing starts.
        d = started(worker("a"), auto_shutdown="any_significant")
        assert d.call(start_child(significant("z", "permanent"))).outcome == "invalid"
        assert d.log == [] and "z" not in d.machine.children

    def test_start_child_refuses_a_significant_child_when_auto_shutdown_is_never(self):
        # [3] significant=true with auto_shutdown=never is a bad_combination: nothing starts.
        d = started(worker("a"))
        assert d.call(start_child(significant("z", "transient"))).outcome == "invalid"
        assert d.log == [] and "z" not in d.machine.children

    @pytest.mark.parametrize(("restart", "auto_shutdown"), [("permanent", "any_significant"), ("transient", "never")])
    def test_the_refusal_is_the_spec_rule_itself(self, restart, auto_shutdown):
        # One significance rule (specs.rules.significance_problem), for files, the wire and the machine.
        d = started(worker("a"), auto_shutdown=auto_shutdown)
        spec = significant("z", restart)
        assert d.call(start_child(spec)).detail == significance_problem(spec, d.machine.spec)

    # terminate_child
    def test_terminate_child_stops_only_that_child_and_keeps_its_spec(self):
        d = started(*children("a b c"))
        assert d.call(terminate_child("b")).outcome == "ok"
        assert d.log == ["stop b"]
        assert d.state("b") == "stopped" and d.machine.order == ["a", "b", "c"]

    def test_terminate_child_is_idempotent(self):
        d = started(*children("a b"))
        d.call(terminate_child("b"))
        d.take_log()
        assert d.call(terminate_child("b")).outcome == "ok"
        assert d.log == []

    def test_terminate_child_of_an_unknown_id_is_not_found(self):
        d = started(*children("a"))
        assert d.call(terminate_child("nobody")).outcome == "not_found"

    def test_terminate_child_removes_a_temporary_child(self):
        d = started(worker("a"), worker("t", restart="temporary"))
        assert d.call(terminate_child("t")).ok
        assert "t" not in d.machine.children
        assert d.call(terminate_child("t")).outcome == "not_found"

    def test_terminate_child_is_never_counted_and_its_exit_is_stale(self):
        d = started(*children("a b"), max_restarts=0)
        old = d.incarnations["b"]
        d.call(terminate_child("b"))
        d.take_log()
        assert d.send(ChildExited("b", old, SHUTDOWN)) == []
        assert len(d.machine.window) == 0 and d.exit is None

    @pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
    def test_terminate_child_never_bounces_siblings(self, strategy):
        d = started(*children("a b c"), strategy=strategy)
        d.call(terminate_child("a"))
        assert d.log == ["stop a"]
        assert d.state("b") == d.state("c") == "running"

    # restart_child
    def test_restart_child_of_a_running_child_is_running(self):
        d = started(*children("a"))
        assert d.call(restart_child("a")).outcome == "running"

    def test_restart_child_of_a_restarting_child_is_restarting(self):
        d = started(*children("a b"), fail={"b": 1})
        d.crash("b")
        assert d.call(restart_child("b")).outcome == "restarting"

    def test_restart_child_of_an_unknown_id_is_not_found(self):
        d = started(*children("a"))
        assert d.call(restart_child("nobody")).outcome == "not_found"

    def test_restart_child_of_a_temporary_child_is_not_found(self):
        d = started(worker("a"), worker("t", restart="temporary"))
        d.call(terminate_child("t"))
        assert d.call(restart_child("t")).outcome == "not_found"

    def test_restart_child_of_a_stopped_child_starts_it_and_is_not_counted(self):
        d = started(*children("a b c"), strategy="one_for_all", max_restarts=0)
        d.call(terminate_child("b"))
        d.take_log()
        result = d.call(restart_child("b"))
        assert result.outcome == "ok" and result.pid == d.pids["b"]
        assert d.log == ["start b"]  # no sibling bounced even under one_for_all
        assert len(d.machine.window) == 0 and d.exit is None

    def test_a_restart_child_that_fails_leaves_the_child_stopped(self):
        d = started(*children("a b"))
        d.call(terminate_child("b"))
        d.fail["b"] = 1
        assert d.call(restart_child("b")).outcome == "start_failed"
        assert d.state("b") == "stopped" and not d.inbox and len(d.machine.window) == 0

    # delete_child
    def test_delete_child_removes_a_stopped_child(self):
        d = started(*children("a b"))
        d.call(terminate_child("b"))
        assert d.call(delete_child("b")).outcome == "ok"
        assert "b" not in d.machine.children and d.machine.order == ["a"]
        assert d.call(start_child(worker("b"))).outcome == "ok"

    def test_delete_child_of_a_running_child_is_running(self):
        d = started(*children("a"))
        assert d.call(delete_child("a")).outcome == "running"
        assert d.state("a") == "running"

    def test_delete_child_of_a_restarting_child_is_restarting(self):
        d = started(*children("a b"), fail={"b": 1})
        d.crash("b")
        assert d.call(delete_child("b")).outcome == "restarting"

    def test_delete_child_of_an_unknown_id_is_not_found(self):
        d = started(*children("a"))
        assert d.call(delete_child("nobody")).outcome == "not_found"

    def test_templates_belong_to_dynamic_supervisors(self):
        d = started(*children("a"))
        assert d.call(start_from_template("w", "x")).outcome == "not_supported"

    def test_reconfigure_replaces_a_child_make_before_break_bouncing_no_sibling(self):
        d = started(*children("a b c"), strategy="one_for_all", max_restarts=0)
        target = ChildSpec(id="b", command=("other",))
        result = d.call(reconfigure("b", target))
        assert result.ok and result.pid == d.pids["b"]
        assert d.log == ["start b"]  # the replacement; a and c untouched, nothing charged
        assert [type(e).__name__ for e in d.effects[-3:]] == ["Launch", "Answer", "Replace"]
        assert d.machine.children["b"].spec == target and d.state("b") == "running"


# --- [7] escalation through two levels -----------------------------------------------------------


class Tree:
    """A parent supervisor whose SupervisorSpec children are run by drivers of their own.

    When a child supervisor exits, the parent is told with ``ChildExited`` (its exit reason).
    """

    def __init__(self, root: SupervisorSpec) -> None:
        self.subs: dict[str, Driver] = {}  # the current incarnation of each child supervisor
        self.incarnations = 0
        self.root = Driver(StaticMachine(root), on_launch=self._launch)
        self.root.init()

    def _launch(self, spec) -> str | None:
        if not isinstance(spec, SupervisorSpec):
            return None
        sub = Driver(StaticMachine(spec))
        sub.init()
        if sub.exit is not None:
            return sub.exit.error
        self.subs[spec.id] = sub
        self.incarnations += 1
        return None

    def crash(self, sup_id: str, worker_id: str, reason: ExitReason = CRASHED_CODE) -> None:
        sub = self.subs[sup_id]
        sub.crash(worker_id, reason)
        if sub.exit is not None:
            self.root.send(ChildExited(sup_id, self.root.incarnations[sup_id], sub.exit.reason))


def team(restart: str = "permanent", max_restarts: int = 0, **flags) -> SupervisorSpec:
    return supervisor(worker("w"), id="team", restart=restart, max_restarts=max_restarts, **flags)


class TestEscalation:
    def test_a_child_supervisor_that_gives_up_exits_shutdown(self):
        tree = Tree(supervisor(team(), worker("x")))
        sub = tree.subs["team"]
        tree.crash("team", "w")
        assert sub.exit.reason.kind == "shutdown" and sub.exit.reason.clean

    def test_a_permanent_child_supervisor_that_gives_up_is_restarted(self):
        tree = Tree(supervisor(team("permanent"), worker("x")))
        first = tree.subs["team"]
        tree.root.take_log()
        tree.crash("team", "w")
        assert tree.root.log == ["start team"]
        assert tree.subs["team"] is not first and tree.incarnations == 2
        assert len(tree.root.machine.window) == 1

    def test_a_transient_child_supervisor_that_gives_up_is_not_restarted(self):
        tree = Tree(supervisor(team("transient"), worker("x")))
        tree.root.take_log()
        tree.crash("team", "w")
        assert tree.root.log == []
        assert tree.root.state("team") == "stopped" and tree.incarnations == 1
        assert len(tree.root.machine.window) == 0

    def test_a_temporary_child_supervisor_that_gives_up_is_removed(self):
        tree = Tree(supervisor(team("temporary"), worker("x")))
        tree.root.take_log()
        tree.crash("team", "w")
        assert tree.root.log == []
        assert "team" not in tree.root.machine.children

    def test_children_added_to_a_child_supervisor_are_lost_when_it_is_restarted(self):
        tree = Tree(supervisor(team("permanent")))
        tree.subs["team"].call(start_child(worker("extra")))
        tree.crash("team", "w")
        assert list(tree.subs["team"].machine.children) == ["w"]

    @pytest.mark.parametrize(("parent_i", "child_i"), [(0, 0), (1, 2), (2, 3)])
    def test_the_worker_starts_the_product_of_the_intensities_before_the_root_gives_up(self, parent_i, child_i):
        tree = Tree(supervisor(team("permanent", max_restarts=child_i), worker("x"),
                               max_restarts=parent_i))
        crashes = 0
        while tree.root.exit is None:
            tree.crash("team", "w")
            crashes += 1
            assert crashes < 100
        assert crashes == (parent_i + 1) * (child_i + 1)
        assert tree.incarnations == parent_i + 1
        assert tree.root.log[-2:] == ["stop x", "exit shutdown"]

    def test_an_auto_shutdown_of_a_significant_child_supervisor_cascades_to_its_parent(self):
        inner = supervisor(significant("s"), worker("w"), id="team", restart="transient",
                           significant=True, auto_shutdown="any_significant")
        tree = Tree(supervisor(worker("x"), inner, auto_shutdown="any_significant"))
        tree.root.take_log()
        tree.crash("team", "s", NORMAL)
        assert tree.subs["team"].exit.reason.kind == "shutdown"
        assert tree.root.log == ["stop x", "exit shutdown"]

    def test_a_child_supervisor_whose_init_fails_fails_the_parent_start(self):
        inner = supervisor(worker("w"), id="team")
        tree_root = supervisor(worker("x"), inner)
        d = Driver(StaticMachine(tree_root), on_launch=lambda spec: "init failed" if spec.id == "team" else None)
        lines = d.init()
        assert lines[:3] == ["start x", "start team failed", "stop x"]
        assert isinstance(d.effects[-1], Exit) and "'team'" in d.exit.error
