"""Restart delay and backoff in the pure machines (docs/supervision.md, "Restart delay and backoff").

A fake clock (``Driver.now``/``elapse``): a delayed restart is charged at the exit, waits on an
``After`` timer, and its ``RestartDue`` starts the strategy's group. Log lines as in
``machine_driver``: "wait 0.4 b" is a timer asked for b's delayed restart.
"""

from __future__ import annotations

import pytest

from machine_driver import (
    Driver, delete_child, reconfigure, restart_child, start_child, start_from_template, terminate_child,
)
from otpy.specs.bindings import BoundValues
from otpy.specs.model import Bound, ChildSpec, DynamicSupervisorSpec, SupervisorSpec
from otpy.supervision.dynamic import DynamicMachine
from otpy.supervision.effects import After, Answer, Reconcile
from otpy.supervision.exit import ExitReason
from otpy.supervision.machine import StaticMachine

LOST = ExitReason(kind="lost", detail="the zygote died")


def worker(id: str, **fields) -> ChildSpec:
    return ChildSpec(id=id, command=("true",), **fields)


def started(*kids, values: BoundValues | None = None, **flags) -> Driver:
    flags.setdefault("max_restarts", 1000)
    resolve = (values or BoundValues()).resolve
    d = Driver(StaticMachine(SupervisorSpec(id="sup", children=tuple(kids), **flags), resolve=resolve))
    d.init()
    assert d.exit is None, d.log
    d.take_log()
    return d


def waits(d: Driver) -> list[float]:
    return [e.delay for e in d.effects if isinstance(e, After)]


def crash_and_wait(d: Driver, id: str) -> float:
    """Crash ``id``, let its delayed restart happen; the delay it waited."""
    d.crash(id)
    delay = d.next_timer()
    assert delay is not None, d.log
    d.elapse(delay)
    assert d.state(id) == "running", d.log
    return delay


class TestDelays:
    def test_the_delay_doubles_for_each_restart_in_a_row_up_to_the_cap(self):
        d = started(worker("a", restart_delay=1.0, restart_delay_max=10.0))
        assert [crash_and_wait(d, "a") for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]

    def test_nothing_starts_before_the_delay_and_the_child_is_restarting_meanwhile(self):
        d = started(worker("a", restart_delay=0.5))
        assert d.crash("a") == ["wait 0.5 a"]
        assert d.state("a") == "restarting"
        assert d.machine.restart_due("a") == pytest.approx(0.5)
        assert d.elapse(0.49) == []
        assert d.state("a") == "restarting"
        assert d.elapse(0.01) == ["start a"]
        assert d.machine.restart_due("a") is None

    def test_the_delay_is_reported_with_the_exit(self):
        d = started(worker("a", restart_delay=0.25))
        d.crash("a")
        [report] = d.reports("restart_delayed")
        assert report.child == "a" and report.detail.startswith("restart in 0.25 s")
        assert d.reports("restarting") == []  # reported when the restart happens
        d.elapse(0.25)
        assert len(d.reports("restarting")) == 1

    def test_no_delay_by_default_restarts_at_once_as_otp(self):
        d = started(worker("a"))
        assert d.crash("a") == ["start a"]
        assert waits(d) == [] and d.reports("restart_delayed") == []

    def test_a_child_without_a_delay_restarts_at_once_beside_one_with(self):
        d = started(worker("a", restart_delay=1.0), worker("b"))
        assert d.crash("b") == ["start b"]
        assert d.crash("a") == ["wait 1 a"]


class TestIntensity:
    def test_a_delayed_restart_is_charged_at_the_exit(self):
        d = started(worker("a", restart_delay=1.0))
        assert d.crash("a") == ["wait 1 a"]
        assert len(d.machine.window) == 1 and d.machine.children["a"].restarts == 1
        assert d.elapse(1.0) == ["start a"]
        assert len(d.machine.window) == 1  # the start itself is not charged again

    def test_over_the_intensity_the_supervisor_gives_up_at_once_without_waiting(self):
        d = started(worker("a", restart_delay=0.1), worker("b"), max_restarts=1, max_seconds=60)
        d.crash("a")
        d.elapse(0.1)
        d.take_log()
        assert d.crash("a") == ["stop b", "exit shutdown"]
        assert d.reports("gave_up") and d.exit is not None
        assert waits(d) == [0.1]  # the second restart never waited: no timer was asked for

    def test_giving_up_while_a_restart_waits_leaves_its_timer_stale(self):
        d = started(worker("a", restart_delay=0.1), worker("b"), max_restarts=1, max_seconds=60)
        assert d.crash("a") == ["wait 0.1 a"]
        [(_, pending)] = d.timers
        assert d.crash("b") == ["exit shutdown"]  # the second restart in 60 s: gives up at once
        assert d.send(pending) == []


class TestResetRule:
    def test_an_incarnation_up_for_restart_delay_max_ends_the_row(self):
        d = started(worker("a", restart_delay=1.0, restart_delay_max=8.0))
        assert [crash_and_wait(d, "a") for _ in range(3)] == [1.0, 2.0, 4.0]
        d.advance(8.0)  # up for the cap: healthy again
        assert crash_and_wait(d, "a") == 1.0

    def test_an_incarnation_up_for_less_keeps_the_row(self):
        d = started(worker("a", restart_delay=1.0, restart_delay_max=8.0))
        assert [crash_and_wait(d, "a") for _ in range(2)] == [1.0, 2.0]
        d.advance(7.9)
        assert crash_and_wait(d, "a") == 4.0

    def test_an_operators_start_ends_the_row(self):
        d = started(worker("a", restart_delay=1.0, restart_delay_max=8.0))
        assert [crash_and_wait(d, "a") for _ in range(3)] == [1.0, 2.0, 4.0]
        assert d.call(terminate_child("a")).ok and d.call(restart_child("a")).ok
        assert crash_and_wait(d, "a") == 1.0

    def test_a_failed_start_is_the_next_restart_in_the_row(self):
        d = started(worker("a", restart_delay=1.0))
        d.fail = {"a": 1}
        d.crash("a")
        assert d.elapse(1.0) == ["start a failed", "post retry a", "wait 2 a"]
        assert d.state("a") == "restarting" and len(d.machine.window) == 2
        assert d.elapse(2.0) == ["start a"]

    def test_a_lost_exit_restarts_at_once_and_does_not_add_to_the_row(self):
        d = started(worker("a", restart_delay=1.0))
        assert crash_and_wait(d, "a") == 1.0
        assert d.crash("a", LOST) == ["start a"]
        assert crash_and_wait(d, "a") == 2.0


class TestOperatorsWhileWaiting:
    def test_terminate_child_cancels_the_pending_restart(self):
        d = started(worker("a", restart_delay=1.0))
        d.crash("a")
        assert d.call(terminate_child("a")).ok
        assert d.state("a") == "stopped" and d.machine.restart_due("a") is None
        assert d.elapse(5.0) == []  # the timer fires, stale: nothing starts
        assert d.state("a") == "stopped"

    def test_restart_and_delete_answer_restarting_as_otps_try_again(self):
        d = started(worker("a", restart_delay=1.0))
        d.crash("a")
        assert d.call(restart_child("a")).outcome == "restarting"
        assert d.call(delete_child("a")).outcome == "restarting"
        assert d.call(start_child(worker("a"))).outcome == "already_present"

    def test_terminate_then_restart_starts_it_now_and_the_old_timer_is_ignored(self):
        d = started(worker("a", restart_delay=1.0))
        assert d.crash("a") == ["wait 1 a"]
        d.call(terminate_child("a"))
        d.take_log()
        assert d.call(restart_child("a")).ok and d.take_log() == ["start a"]
        incarnation = d.incarnations["a"]
        assert d.elapse(1.0) == []
        assert d.incarnations["a"] == incarnation

    def test_stopping_the_supervisor_while_waiting_starts_nothing_after(self):
        d = started(worker("a", restart_delay=1.0), worker("b"))
        d.crash("a")
        assert d.stop() == ["stop b", "exit shutdown"]
        assert d.elapse(5.0) == []


class TestGroups:
    def test_one_for_all_stops_the_others_at_the_exit_and_starts_all_after_the_delay(self):
        d = started(worker("a"), worker("b", restart_delay=1.0), worker("c"), strategy="one_for_all")
        assert d.crash("b") == ["stop c", "stop a", "wait 1 b"]
        assert d.state("a") == d.state("c") == "stopped"
        assert d.machine.restart_due("a") == d.machine.restart_due("c") == pytest.approx(1.0)
        assert d.elapse(1.0) == ["start a", "start b", "start c"]
        assert d.machine.restart_due("a") is None

    def test_rest_for_one_stops_the_later_ones_and_restarts_from_the_dead_one(self):
        d = started(worker("a"), worker("b", restart_delay=1.0), worker("c"), strategy="rest_for_one")
        assert d.crash("b") == ["stop c", "wait 1 b"]
        assert d.state("a") == "running" and d.machine.restart_due("a") is None
        assert d.elapse(1.0) == ["start b", "start c"]

    def test_a_restart_of_an_earlier_child_meanwhile_starts_the_waiting_one_and_its_timer_is_stale(self):
        d = started(worker("a"), worker("b", restart_delay=5.0), worker("c"), strategy="rest_for_one")
        d.crash("b")
        d.take_log()
        assert d.crash("a") == ["start a", "start b", "start c"]
        assert d.elapse(5.0) == []

    @pytest.mark.parametrize("strategy, held", [("one_for_all", ["a", "c"]), ("rest_for_one", ["c"])])
    def test_terminating_the_waiting_child_starts_its_stopped_bystanders_at_once(self, strategy, held):
        # Nothing is left to wait for; without this the group stays stopped for good (a reload
        # that removes the waiting child terminates it this way).
        d = started(worker("a"), worker("b", restart_delay=5.0), worker("c"), strategy=strategy)
        d.crash("b")
        d.take_log()
        assert d.call(terminate_child("b")).ok
        assert d.take_log() == [f"start {i}" for i in held]
        assert [d.state(i) for i in "abc"] == ["running", "stopped", "running"]
        assert d.elapse(5.0) == []  # the old timer is stale

    def test_a_bystander_terminated_meanwhile_is_not_started_by_it(self):
        d = started(worker("a"), worker("b", restart_delay=5.0), worker("c"), strategy="one_for_all")
        d.crash("b")
        d.call(terminate_child("c"))
        d.take_log()
        assert d.call(terminate_child("b")).ok and d.take_log() == ["start a"]


class TestDynamic:
    def test_a_template_child_waits_its_delay(self):
        spec = DynamicSupervisorSpec(id="pool", max_restarts=100,
                                     templates={"w": worker("w", restart_delay=0.5, restart_delay_max=1.0)})
        d = Driver(DynamicMachine(spec))
        d.init()
        assert d.call(start_from_template("w", "w-a")).ok
        d.take_log()
        assert [crash_and_wait(d, "w-a") for _ in range(3)] == [0.5, 1.0, 1.0]

    def test_terminate_child_removes_a_waiting_child_and_its_timer_is_stale(self):
        spec = DynamicSupervisorSpec(id="pool")
        d = Driver(DynamicMachine(spec))
        d.init()
        assert d.call(start_child(worker("x", restart_delay=1.0))).ok
        assert d.crash("x") == ["wait 1 x"]
        assert d.call(terminate_child("x")).ok and d.state("x") is None
        d.take_log()
        assert d.elapse(2.0) == []


class TestVariablesAndReplacement:
    ON = Bound("pool.on")

    def test_a_reconcile_leaves_a_waiting_child_to_its_restart(self):
        live = BoundValues({"pool.on": True})
        d = started(worker("a", restart_delay=1.0, enabled=self.ON), values=live)
        d.crash("a")
        reply_to = object()
        d.send(Reconcile(reply_to))
        [answer] = [e.result for e in d.effects if isinstance(e, Answer) and e.reply_to is reply_to]
        assert answer.ok and answer.changes == [] and d.state("a") == "restarting"
        assert d.elapse(1.0) == ["start a"]

    def test_a_child_disabled_while_it_waits_is_not_started_when_due(self):
        live = BoundValues({"pool.on": True})
        d = started(worker("a", restart_delay=1.0, enabled=self.ON), values=live)
        d.crash("a")
        live.update({"pool.on": False})
        assert d.elapse(1.0) == []
        assert d.state("a") == "stopped" and d.machine.children["a"].disabled
        assert len(d.machine.window) == 1  # the crash only

    def test_a_reconfigure_of_a_waiting_child_answers_restarting(self):
        d = started(worker("a", restart_delay=1.0))
        d.crash("a")
        assert d.call(reconfigure("a", worker("a", restart_delay=2.0))).outcome == "restarting"
        assert d.elapse(1.0) == ["start a"]

    def test_a_replacement_ends_the_row(self):
        d = started(worker("a", restart_delay=1.0))
        assert [crash_and_wait(d, "a") for _ in range(2)] == [1.0, 2.0]
        assert d.call(reconfigure("a", worker("a", restart_delay=1.0, env={"V": "2"}))).ok
        assert crash_and_wait(d, "a") == 1.0
