"""The supervision machines with variables (#13): declared specs resolved at each start,
``enabled``, template ``replicas``, ``Reconfigure`` in static supervisors, ``Reconcile`` and its
``plan``, and terminate_child as an operator's override. Pure: ``machine_driver.Driver``, no
processes, no clock; the values are a ``BoundValues`` the test changes.
"""

from __future__ import annotations

import msgspec
from machine_driver import (
    Driver, reconfigure, restart_child, start_child, start_from_template, terminate_child,
)
from otpy.specs.bindings import BoundValues
from otpy.specs.model import Bound, ChildSpec, DynamicSupervisorSpec, SupervisorSpec
from otpy.supervision.children import Child
from otpy.supervision.dynamic import DynamicMachine
from otpy.supervision.effects import Answer, Launch, Outcome, Reconcile, Replace
from otpy.supervision.exit import ExitReason
from otpy.supervision.machine import StaticMachine
from otpy.supervision.reconcile import decide
from otpy.wire.protocol import Change

NORMAL = ExitReason(kind="normal", code=0)
PROGRAM = Bound("global.program")
ON = Bound("pool.on")
WORKERS = Bound("pool.workers")


def bound(id: str, **fields) -> ChildSpec:
    """A program child whose program is the variable ``global.program``."""
    return ChildSpec(id=id, program=fields.pop("program", PROGRAM), **fields)


def plain(id: str, **fields) -> ChildSpec:
    return ChildSpec(id=id, command=("true",), **fields)


def static(*kids, values: BoundValues, **flags) -> Driver:
    """A static supervisor that ran its init with ``values``, with an empty log."""
    d = Driver(StaticMachine(SupervisorSpec(id="sup", children=kids, **flags), resolve=values.resolve))
    d.init()
    d.take_log()
    return d


def dynamic(values: BoundValues, max_children: int | None = None, **templates: ChildSpec) -> Driver:
    spec = DynamicSupervisorSpec(id="pool", templates=templates, max_children=max_children)
    d = Driver(DynamicMachine(spec, resolve=values.resolve))
    d.init()
    return d


def values(**named) -> BoundValues:
    """``BoundValues`` from keyword names: ``global_program`` is ``global.program``."""
    return BoundValues({name.replace("_", ".", 1): value for name, value in named.items()})


def reconcile(d: Driver, phase: str = "all"):
    reply_to = object()
    d.send(Reconcile(reply_to, phase=phase))
    [result] = [e.result for e in d.effects if isinstance(e, Answer) and e.reply_to is reply_to]
    return result


def launched(d: Driver) -> list[ChildSpec]:
    return [e.spec for e in d.effects if isinstance(e, Launch)]


def without_pids(changes: list[Change]) -> list[Change]:
    return [msgspec.structs.replace(c, pid=None) for c in changes]


# --- 1. every start launches the spec resolved now; the table keeps the declared one ---------


class TestResolvedStarts:
    def test_init_launches_the_resolved_spec_and_keeps_the_declared_one(self):
        live = values(global_program="m:A")
        d = static(bound("a"), values=live)
        assert launched(d)[-1].program == "m:A"
        child = d.machine.children["a"]
        assert child.spec.program == PROGRAM and child.running.program == "m:A"

    def test_a_restart_resolves_again(self):
        live = values(global_program="m:A")
        d = static(bound("a"), values=live)
        live.update({"global.program": "m:B"})
        assert d.crash("a") == ["start a"]
        assert launched(d)[-1].program == "m:B" and d.machine.children["a"].running.program == "m:B"

    def test_running_is_cleared_when_the_child_stops(self):
        d = static(bound("a"), values=values(global_program="m:A"))
        d.call(terminate_child("a"))
        assert d.machine.children["a"].running is None

    def test_an_unbound_value_fails_init_as_a_failed_start_naming_the_variable(self):
        d = Driver(StaticMachine(SupervisorSpec(id="sup", children=(plain("x"), bound("a"))),
                                 resolve=BoundValues().resolve))
        assert d.init() == ["start x", "stop x", "exit failed"]
        assert "global.program" in d.exit.error and "'a'" in d.exit.error

    def test_an_unbound_value_on_restart_is_retried_through_the_inbox(self):
        live = values(global_program="m:A")
        d = static(bound("a"), values=live)
        del live.values["global.program"]
        assert d.crash("a") == ["post retry a"]
        assert d.state("a") == "restarting"
        assert "global.program" in d.reports("start_failed")[-1].detail


# --- 2. enabled: kept, never started ------------------------------------------------------------


class TestEnabled:
    def test_init_skips_a_disabled_child_and_keeps_it_stopped_and_disabled(self):
        d = Driver(StaticMachine(SupervisorSpec(id="sup", children=(plain("a"), plain("b", enabled=ON), plain("c"))),
                                 resolve=values(pool_on=False).resolve))
        assert d.init() == ["start a", "start c"]
        assert d.machine.phase == "running"
        child = d.machine.children["b"]
        assert child.state == "stopped" and child.disabled and not child.override

    def test_a_plain_enabled_false_is_never_started_either(self):
        d = static(plain("a", enabled=False), plain("b"), values=BoundValues())
        assert d.state("a") == "stopped" and d.machine.children["a"].disabled and d.state("b") == "running"

    def test_a_group_restart_skips_a_disabled_child(self):
        live = values(pool_on=True)
        d = static(plain("a"), plain("b", enabled=ON), plain("c"), values=live, strategy="one_for_all")
        live.update({"pool.on": False})
        assert d.crash("a") == ["stop c", "stop b", "start a", "start c"]
        assert d.state("b") == "stopped" and d.machine.children["b"].disabled

    def test_a_retry_of_a_child_disabled_meanwhile_stops_and_is_not_charged(self):
        live = values(pool_on=True)
        d = static(plain("a", enabled=ON), values=live, max_restarts=1)
        d.fail = {"a": 1}
        assert d.crash("a") == ["start a failed", "post retry a"]
        live.update({"pool.on": False})
        assert d.run_inbox() == []
        assert d.state("a") == "stopped" and d.machine.children["a"].disabled
        assert len(d.machine.window._stamps) == 1  # only the crash was charged

    def test_restart_child_of_a_disabled_child_is_invalid_naming_the_variable(self):
        d = static(plain("b", enabled=ON), values=values(pool_on=False))
        result = d.call(restart_child("b"))
        assert result.outcome == "invalid"
        assert "pool.on" in result.detail and "set pool.on to true" in result.detail
        assert d.log == []

    def test_restart_child_of_a_plain_disabled_child_says_enabled_false(self):
        d = static(plain("b", enabled=False), values=BoundValues())
        assert "enabled = false" in d.call(restart_child("b")).detail

    def test_static_start_child_of_a_disabled_spec_keeps_it_and_answers_ok_without_pid(self):
        d = static(values=values(pool_on=False))
        assert d.call(start_child(plain("x", enabled=ON))) == Outcome("ok")
        assert d.log == [] and d.state("x") == "stopped" and d.machine.children["x"].disabled

    def test_dynamic_start_child_of_a_disabled_spec_is_invalid_and_keeps_nothing(self):
        d = dynamic(values(pool_on=False))
        result = d.call(start_child(plain("x", enabled=ON)))
        assert result.outcome == "invalid" and "pool.on" in result.detail
        assert "x" not in d.machine.children and d.log == []


# --- 3. replicas: a dynamic supervisor keeps TEMPLATE-1..N -------------------------------------


class TestReplicasAtBoot:
    def test_boot_starts_each_templates_replicas_in_order_with_the_declared_template(self):
        live = values(pool_workers=2, global_program="m:A")
        d = dynamic(live, w=bound("w", replicas=WORKERS), v=plain("v", replicas=1), other=plain("o"))
        assert d.log == ["start w-1", "start w-2", "start v-1"]
        assert d.machine.phase == "running"
        child = d.machine.children["w-2"]
        assert child.spec.program == PROGRAM and child.spec.replicas == WORKERS  # declared: resolved at each start
        assert child.running.program == "m:A"

    def test_a_replica_that_fails_to_start_fails_the_supervisors_start(self):
        d = Driver(DynamicMachine(DynamicSupervisorSpec(id="pool", templates={"w": plain("w", replicas=3)})),
                   fail_always={"w-2"})
        assert d.init() == ["start w-1", "start w-2 failed", "stop w-1", "exit failed"]
        assert "w-2" in d.exit.error

    def test_a_disabled_template_has_no_replicas(self):
        d = dynamic(values(pool_on=False), w=plain("w", replicas=2, enabled=ON))
        assert d.log == [] and len(d.machine.children) == 0

    def test_an_ended_replica_stays_stopped(self):
        d = dynamic(BoundValues(), w=plain("w", replicas=1, restart="transient"))
        d.crash("w-1", NORMAL)
        assert d.state("w-1") == "stopped"


# --- 4. reconfigure in a static supervisor -----------------------------------------------------


class TestStaticReconfigure:
    def test_a_bound_target_is_resolved_and_becomes_the_declared_spec(self):
        live = values(global_program="m:B")
        d = static(plain("a"), plain("b"), values=live)
        result = d.call(reconfigure("a", bound("a")))
        assert result.ok and d.log == ["start a"]
        assert launched(d)[-1] == ChildSpec(id="a", program="m:B")
        assert d.machine.children["a"].spec == bound("a") and isinstance(d.effects[-1], Replace)

    def test_a_target_that_fails_leaves_the_child(self):
        d = static(plain("a"), values=BoundValues())
        pid = d.pids["a"]
        d.fail = {"a": 1}
        assert d.call(reconfigure("a", ChildSpec(id="a", command=("x",)))).outcome == "start_failed"
        assert d.machine.children["a"].spec == plain("a") and d.machine.children["a"].pid == pid


# --- 5. reconcile ------------------------------------------------------------------------------


def child(state="running", running=None, **flags) -> Child:
    spec = ChildSpec(id="c", program="m:A")
    return Child(spec, state=state, running=running if running is not None or state != "running" else spec, **flags)


class TestDecide:
    A, B = ChildSpec(id="c", program="m:A"), ChildSpec(id="c", program="m:B")

    def test_the_rule(self):
        off = ChildSpec(id="c", program="m:A", enabled=False)
        assert decide(child(), self.A) is None
        assert decide(child(), self.B) == "replace"
        assert decide(child(), off) == "stop"
        assert decide(child("stopped", disabled=True), self.A) == "start"
        assert decide(child("stopped", disabled=True), off) is None
        assert decide(child("stopped", disabled=True, override=True), self.A) is None
        assert decide(child("stopped"), self.A) is None  # ended, or an operator's
        assert decide(child("restarting"), self.B) is None

    def test_any_field_counts_not_only_the_program(self):
        assert decide(child(), msgspec.structs.replace(self.A, args={"k": 1})) == "replace"

    def test_an_unresolvable_spec_is_tried_and_fails_naming_the_variable(self):
        assert decide(child(), None) == "replace"
        assert decide(child("stopped", disabled=True), None) == "start"


class TestReconcile:
    def test_nothing_to_do_answers_ok_with_no_changes(self):
        d = static(bound("a"), values=values(global_program="m:A"))
        assert reconcile(d) == Outcome("ok") and d.log == []

    def test_a_program_change_replaces_make_before_break(self):
        live = values(global_program="m:A")
        d = static(plain("x"), bound("a"), values=live, strategy="one_for_all", max_restarts=0)
        live.update({"global.program": "m:B"})
        result = reconcile(d)
        assert result.ok and d.log == ["start a"]  # the replacement; no sibling bounced
        assert result.changes == [Change(action="reconfigure", supervisor="sup", child="a", before="m:A",
                                         after="m:B", pid=d.pids["a"])]
        assert [type(e).__name__ for e in d.effects[-4:]] == ["Report", "Launch", "Replace", "Answer"]
        assert d.machine.children["a"].running.program == "m:B" and d.machine.children["a"].spec == bound("a")
        assert reconcile(d).changes == []  # a second reconcile does nothing

    def test_disable_stops_in_reverse_order_and_enable_starts_in_order(self):
        live = values(pool_on=True)
        d = static(plain("a", enabled=ON), plain("b"), plain("c", enabled=ON), values=live)
        live.update({"pool.on": False})
        result = reconcile(d)
        assert d.log == ["stop c", "stop a"]
        assert [(c.action, c.child) for c in result.changes] == [("stop", "c"), ("stop", "a")]
        assert all(d.machine.children[i].disabled for i in "ac")
        d.take_log()
        live.update({"pool.on": True})
        result = reconcile(d)
        assert d.log == ["start a", "start c"] and result.ok
        assert [(c.action, c.child, c.pid) for c in result.changes] == [
            ("start", "a", d.pids["a"]), ("start", "c", d.pids["c"])]
        assert not d.machine.children["a"].disabled

    def test_replacements_and_starts_come_first_then_stops(self):
        live = values(pool_on=True, pool_off=False, global_program="m:A")
        d = static(bound("a", enabled=ON), plain("b", enabled=Bound("pool.off")), bound("c"), values=live)
        live.update({"pool.on": False, "pool.off": True, "global.program": "m:B"})
        result = reconcile(d)
        assert [(c.action, c.child) for c in result.changes] == [("start", "b"), ("reconfigure", "c"), ("stop", "a")]

    def test_an_operators_terminate_and_an_ended_child_are_left_alone(self):
        live = values(global_program="m:A", pool_on=False)
        d = static(bound("a", enabled=ON), bound("t", restart="transient"), values=live)
        d.crash("t", NORMAL)
        d.call(terminate_child("a"))
        live.update({"pool.on": True, "global.program": "m:B"})
        assert d.machine.plan() == [] and reconcile(d).changes == []

    def test_a_restarting_child_is_left_to_its_retries(self):
        live = values(global_program="m:A")
        d = static(bound("a"), values=live)
        d.fail = {"a": 1}
        d.crash("a")
        live.update({"global.program": "m:B"})
        assert d.machine.plan() == []

    def test_a_failed_start_stops_the_reconcile_and_says_what_was_done(self):
        live = values(global_program="m:A", pool_on=False)
        d = static(bound("a"), plain("b", enabled=ON), plain("c", enabled=ON), values=live)
        d.fail = {"b": 1}
        live.update({"global.program": "m:B", "pool.on": True})
        result = reconcile(d)
        assert result.outcome == "start_failed"
        assert result.detail == "child 'b' (under 'sup'): boom"
        assert [(c.action, c.child) for c in result.changes] == [("reconfigure", "a")]
        assert d.state("b") == "stopped" and d.machine.children["b"].disabled and d.state("c") == "stopped"

    def test_a_failed_replacement_leaves_the_old_one_running(self):
        live = values(global_program="m:A")
        d = static(bound("a"), values=live)
        pid = d.pids["a"]
        d.fail = {"a": 1}
        live.update({"global.program": "m:B"})
        result = reconcile(d)
        assert result.outcome == "start_failed" and result.changes == []
        child = d.machine.children["a"]
        assert child.state == "running" and child.pid == pid and child.running.program == "m:A"

    def test_the_plan_is_exactly_what_the_reconcile_does(self):
        live = values(global_program="m:A", pool_on=True, pool_workers=3)
        d = dynamic(live, w=bound("w", replicas=WORKERS), x=plain("x", enabled=ON))
        d.call(start_from_template("x", "x1"))
        live.update({"global.program": "m:B", "pool.workers": 2, "pool.on": False})
        plan = d.machine.plan()
        assert plan and all(c.pid is None for c in plan if c.action != "stop")
        assert without_pids(reconcile(d).changes) == without_pids(plan)
        assert d.machine.plan() == []


class TestReplicas:
    def test_more_replicas_start_ascending_fewer_stop_descending_and_leave(self):
        live = values(pool_workers=1)
        d = dynamic(live, w=plain("w", replicas=WORKERS))
        d.take_log()
        live.update({"pool.workers": 3})
        assert [(c.action, c.child) for c in reconcile(d).changes] == [("start", "w-2"), ("start", "w-3")]
        assert d.take_log() == ["start w-2", "start w-3"]
        live.update({"pool.workers": 1})
        assert [(c.action, c.child) for c in reconcile(d).changes] == [("stop", "w-3"), ("stop", "w-2")]
        assert d.take_log() == ["stop w-3", "stop w-2"]
        assert d.machine.order == ["w-1"]

    def test_running_replicas_whose_spec_changed_are_replaced(self):
        live = values(pool_workers=2, global_program="m:A")
        d = dynamic(live, w=bound("w", replicas=WORKERS))
        live.update({"global.program": "m:B"})
        changes = reconcile(d).changes
        assert [(c.action, c.child, c.after) for c in changes] == [("reconfigure", "w-1", "m:B"),
                                                                   ("reconfigure", "w-2", "m:B")]

    def test_a_terminated_replica_is_kept_stopped_and_not_brought_back(self):
        live = values(pool_workers=2)
        d = dynamic(live, w=plain("w", replicas=WORKERS))
        assert d.call(terminate_child("w-2")).ok
        assert d.state("w-2") == "stopped" and d.machine.children["w-2"].override
        assert reconcile(d).changes == []
        assert d.call(restart_child("w-2")).ok and d.state("w-2") == "running"
        assert not d.machine.children["w-2"].override

    def test_restart_child_of_another_dynamic_child_stays_not_supported(self):
        d = dynamic(BoundValues(), w=plain("w", replicas=1))
        d.call(start_child(plain("x")))
        assert d.call(restart_child("x")).outcome == "not_supported"

    def test_fewer_replicas_remove_a_terminated_one_too(self):
        live = values(pool_workers=2)
        d = dynamic(live, w=plain("w", replicas=WORKERS))
        d.call(terminate_child("w-2"))
        live.update({"pool.workers": 1})
        assert [(c.action, c.child) for c in reconcile(d).changes] == [("stop", "w-2")]
        assert "w-2" not in d.machine.children

    def test_a_replica_that_fails_to_start_is_not_kept(self):
        live = values(pool_workers=1)
        d = dynamic(live, w=plain("w", replicas=WORKERS))
        d.fail = {"w-2": 1}
        live.update({"pool.workers": 2})
        result = reconcile(d)
        assert result.outcome == "start_failed" and "w-2" in result.detail
        assert "w-2" not in d.machine.children


# --- 6. overrides ------------------------------------------------------------------------------


class TestOverrides:
    def test_terminate_child_is_an_override_restart_child_clears_it(self):
        d = static(plain("a"), values=BoundValues())
        d.call(terminate_child("a"))
        assert d.machine.children["a"].override
        assert d.call(restart_child("a")).ok and not d.machine.children["a"].override

    def test_a_group_restart_starts_an_overridden_child_and_clears_it(self):
        d = static(plain("a"), plain("b"), values=BoundValues(), strategy="one_for_all")
        d.call(terminate_child("b"))
        d.crash("a")
        assert d.state("b") == "running" and not d.machine.children["b"].override

    def test_reconcile_never_starts_an_overridden_disabled_child(self):
        live = values(pool_on=False)
        d = static(plain("a", enabled=ON), values=live)
        d.call(terminate_child("a"))
        live.update({"pool.on": True})
        assert reconcile(d).changes == [] and d.state("a") == "stopped"


# --- max_children: replicas are children too ---------------------------------------------------


class TestReplicasAndMaxChildren:
    def test_boot_with_more_replicas_than_max_children_fails_naming_the_template_and_the_limit(self):
        d = Driver(DynamicMachine(DynamicSupervisorSpec(id="pool", max_children=2, templates={
            "w": plain("w", replicas=1), "v": plain("v", replicas=WORKERS)}), resolve=values(pool_workers=2).resolve))
        assert d.init() == ["exit failed"]  # checked before anything starts
        assert "max_children" in d.exit.error and "'v'" in d.exit.error and "2" in d.exit.error
        assert "max_children" in str(d.exit.reason)

    def test_boot_up_to_max_children_starts(self):
        d = dynamic(values(pool_workers=2), max_children=2, w=plain("w", replicas=WORKERS))
        assert d.log == ["start w-1", "start w-2"] and d.machine.phase == "running"

    def test_a_reconcile_above_max_children_is_a_failed_start_naming_child_template_and_limit(self):
        live = values(pool_workers=2)
        d = dynamic(live, max_children=2, w=plain("w", replicas=WORKERS))
        d.take_log()
        live.update({"pool.workers": 5})
        result = reconcile(d)
        assert result.outcome == "start_failed" and result.changes == []
        assert result.detail.startswith("child 'w-3' (under 'pool'): ")
        assert "max_children" in result.detail and "'w'" in result.detail and "2" in result.detail
        assert d.take_log() == [] and d.machine.order == ["w-1", "w-2"]

    def test_a_stopped_replica_counts_as_in_otp(self):
        live = values(pool_workers=2)
        d = dynamic(live, max_children=3, w=plain("w", replicas=WORKERS), v=plain("v", replicas=1))
        d.call(terminate_child("v-1"))  # kept stopped (an override): still one of the children
        live.update({"pool.workers": 3})
        assert reconcile(d).outcome == "start_failed" and "w-3" not in d.machine.children

    def test_replicas_the_same_write_removes_make_room(self):
        live = values(pool_workers=1, pool_more=1)
        d = dynamic(live, max_children=2, w=plain("w", replicas=WORKERS), v=plain("v", replicas=Bound("pool.more")))
        live.update({"pool.workers": 2, "pool.more": 0})
        assert [(c.action, c.child) for c in d.machine.plan()] == [("start", "w-2"), ("stop", "v-1")]
        result = reconcile(d)
        assert result.ok and [(c.action, c.child) for c in result.changes] == [("start", "w-2"), ("stop", "v-1")]


# --- phases: make (replacements and starts) then break (stops) --------------------------------


class TestPhases:
    def setup_method(self):
        self.live = values(global_program="m:A", pool_on=True, pool_off=False)
        self.d = static(bound("a"), plain("b", enabled=ON), plain("c", enabled=ON), plain("d", enabled=Bound("pool.off")),
                        values=self.live)
        self.live.update({"global.program": "m:B", "pool.on": False, "pool.off": True})

    def test_make_only_replaces_and_starts_in_start_order(self):
        d = self.d
        result = reconcile(d, "make")
        assert result.ok and [(c.action, c.child) for c in result.changes] == [("reconfigure", "a"), ("start", "d")]
        assert d.state("b") == d.state("c") == "running"  # nothing stopped yet

    def test_break_only_stops_in_reverse_order(self):
        d = self.d
        result = reconcile(d, "break")
        assert [(c.action, c.child) for c in result.changes] == [("stop", "c"), ("stop", "b")]
        assert d.state("d") == "stopped" and d.machine.children["a"].running.program == "m:A"

    def test_make_then_break_is_the_plan_and_all_is_both(self):
        plan = self.d.machine.plan()
        assert [c.action for c in plan] == ["reconfigure", "start", "stop", "stop"]
        done = reconcile(self.d, "make").changes + reconcile(self.d, "break").changes
        assert without_pids(done) == without_pids(plan)
        assert self.d.machine.plan() == []

    def test_replicas_start_in_make_and_leave_in_break(self):
        live = values(pool_workers=1)
        d = dynamic(live, w=plain("w", replicas=WORKERS))
        live.update({"pool.workers": 2})
        assert reconcile(d, "break").changes == []
        assert [(c.action, c.child) for c in reconcile(d, "make").changes] == [("start", "w-2")]
        live.update({"pool.workers": 1})
        assert reconcile(d, "make").changes == [] and d.machine.order == ["w-1", "w-2"]
        assert [(c.action, c.child) for c in reconcile(d, "break").changes] == [("stop", "w-2")]
        assert d.machine.order == ["w-1"]


# --- a child from a template with replicas is one child ---------------------------------------


def test_start_from_a_template_with_replicas_launches_and_keeps_no_replicas():
    d = dynamic(values(pool_workers=0), w=plain("w", replicas=WORKERS))
    assert d.call(start_from_template("w", "extra")).ok
    [spec] = launched(d)
    assert spec.replicas is None and d.machine.children["extra"].spec.replicas is None
    assert d.machine.plan() == []
