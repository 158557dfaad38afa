"""A reload's difference for one supervisor (``supervision.spec_diff``) and the machines'
in-place ``Adopt`` (OTP's ``code_change``): pure, no processes."""

from __future__ import annotations

import msgspec

from machine_driver import CRASHED, Driver, reconfigure, restart_child, start_child, terminate_child
from otpy.specs.model import ChildSpec, DynamicSupervisorSpec, SupervisorSpec
from otpy.supervision.dynamic import DynamicMachine
from otpy.supervision.effects import Command
from otpy.supervision.machine import StaticMachine
from otpy.supervision.spec_diff import Adopt, adopted, diff, settings_change


def worker(id: str, *argv: str, **fields) -> ChildSpec:
    return ChildSpec(id=id, command=argv or ("true",), **fields)


def sup(*kids, id: str = "sup", **flags) -> SupervisorSpec:
    return SupervisorSpec(id=id, children=tuple(kids), **flags)


def running(spec: SupervisorSpec) -> Driver:
    driver = Driver(StaticMachine(spec))
    driver.init()
    return driver


def the_diff(old, new, driver=None):
    driver = driver or running(old)
    return diff(old, new, driver.machine.children.values(), lambda s: s)


def adopt(driver: Driver, request: Adopt):
    return driver.send(Command(request, None))


# --- the difference ------------------------------------------------------------------------

def test_the_same_file_is_no_change():
    old = sup(worker("a"), worker("b"))
    assert the_diff(old, old).empty


def test_an_added_child_is_started_a_removed_one_stopped_a_changed_one_replaced():
    old = sup(worker("a"), worker("b"), worker("c"))
    new = sup(worker("a"), worker("c", "sleep", "1"), worker("d"))
    result = the_diff(old, new)
    assert [s.id for s in result.starts] == ["d"]
    assert result.stops == ["b"]
    assert result.replaces == [("c", worker("c", "sleep", "1"))]
    assert result.adopt == {} and result.update is None


def test_a_reorder_alone_changes_nothing():
    old = sup(worker("a"), worker("b"))
    assert the_diff(old, sup(worker("b"), worker("a"))).empty


def test_removed_children_stop_in_reverse_start_order():
    old = sup(worker("a"), worker("b"), worker("c"))
    assert the_diff(old, sup()).stops == ["c", "b", "a"]


def test_a_child_added_at_run_time_is_not_the_files_and_is_kept():
    old = sup(worker("a"))
    driver = running(old)
    driver.call(start_child(worker("extra")))
    assert the_diff(old, sup(worker("a"), worker("b")), driver).stops == []


def test_a_stopped_child_gets_its_new_spec_in_place():
    old = sup(worker("a"), worker("b"))
    driver = running(old)
    driver.call(terminate_child("b"))
    new = sup(worker("a"), worker("b", "sleep", "9"))
    result = the_diff(old, new, driver)
    assert result.replaces == [] and result.adopt == {"b": worker("b", "sleep", "9")}


def test_a_running_child_switched_off_is_adopted_for_the_reconcile_to_stop():
    old = sup(worker("a"))
    result = the_diff(old, sup(worker("a", enabled=False)))
    assert result.replaces == [] and result.adopt == {"a": worker("a", enabled=False)}


def test_a_child_that_changes_kind_is_replaced_whole():
    old = sup(worker("a"))
    new = sup(SupervisorSpec(id="a", children=(worker("w"),)))
    assert [id for id, _ in the_diff(old, new).replaces] == ["a"]


def test_a_sub_supervisor_of_the_same_kind_is_updated_in_place_and_diffed_in_turn():
    inner_old = sup(worker("w"), id="inner")
    inner_new = sup(worker("w"), worker("x"), id="inner", strategy="one_for_all")
    result = the_diff(sup(inner_old), sup(inner_new))
    assert result.replaces == [] and result.adopt == {"inner": inner_new}
    assert result.nested == [(inner_old, inner_new)]
    inner = the_diff(inner_old, inner_new)
    assert [s.id for s in inner.starts] == ["x"]
    assert inner.update.before == {"strategy": "one_for_one"} and inner.update.after == {"strategy": "one_for_all"}


def test_a_reload_applied_twice_does_nothing_the_second_time():
    old = sup(worker("a"), worker("b"))
    new = sup(worker("a", "sleep", "1"), worker("b"))
    driver = running(old)
    driver.call(reconfigure("a", worker("a", "sleep", "1")))
    assert the_diff(old, new, driver).empty


def test_settings_change_names_only_what_changed():
    old = sup(max_restarts=3, max_seconds=5)
    change = settings_change(old, sup(max_restarts=10, max_seconds=5, auto_shutdown="any_significant"))
    assert change.action == "update" and change.supervisor == "sup"
    assert change.before == {"max_restarts": 3, "auto_shutdown": "never"}
    assert change.after == {"max_restarts": 10, "auto_shutdown": "any_significant"}
    assert settings_change(old, old) is None


def test_a_dynamic_supervisors_replicas_follow_their_templates():
    template = worker("w", replicas=2)
    old = DynamicSupervisorSpec(id="pool", templates={"w": template, "v": worker("v", replicas=1)})
    driver = Driver(DynamicMachine(old))
    driver.init()
    new = DynamicSupervisorSpec(id="pool", max_children=5, templates={"w": worker("w", "sleep", "1", replicas=3)})
    result = diff(old, new, driver.machine.children.values(), lambda s: s)
    assert set(result.adopt) == {"w-1", "w-2"} and result.adopt["w-1"].command == ("sleep", "1")
    assert result.stops == ["v-1"]  # its template keeps no replicas any more
    assert result.update.after["max_children"] == 5 and "templates" in result.update.after


# --- the machines adopt it in place ---------------------------------------------------------

def test_adopt_changes_a_static_supervisors_strategy_and_intensity_without_a_restart():
    old = sup(worker("a"), worker("b"), max_restarts=0)
    driver = running(old)
    new = msgspec.structs.replace(old, strategy="one_for_all", max_restarts=5)
    assert adopt(driver, Adopt(new, {})) == []  # nothing starts or stops
    assert driver.machine.spec.strategy == "one_for_all" and driver.machine.window.max_restarts == 5
    # With max_restarts 0 this crash would make it give up; now it bounces the group.
    assert driver.crash("a") == ["stop b", "start a", "start b"]


def test_adopt_gives_a_stopped_child_its_new_spec_for_its_next_start():
    old = sup(worker("a"))
    driver = running(old)
    driver.call(terminate_child("a"))
    adopt(driver, Adopt(old, {"a": worker("a", "sleep", "5")}))
    driver.call(restart_child("a"))
    assert driver.machine.children["a"].running.command == ("sleep", "5")


def test_adopt_of_a_sub_supervisor_updates_its_entry_and_running_spec():
    inner = sup(worker("w"), id="inner")
    driver = running(sup(inner))
    new_inner = sup(worker("w"), worker("x"), id="inner")
    adopt(driver, Adopt(sup(new_inner), {"inner": new_inner}))
    child = driver.machine.children["inner"]
    assert child.spec == new_inner and child.running == new_inner  # no replacement follows
    assert driver.machine.plan() == []
    driver.crash("inner", CRASHED)
    assert driver.machine.children["inner"].running == new_inner  # restarted as the new subtree


def test_adopt_on_a_dynamic_machine_sets_templates_and_the_reconcile_follows():
    old = DynamicSupervisorSpec(id="pool", templates={"w": worker("w", replicas=1)})
    driver = Driver(DynamicMachine(old))
    driver.init()
    new = DynamicSupervisorSpec(id="pool", templates={"w": worker("w", "sleep", "1", replicas=2)})
    result = diff(old, new, driver.machine.children.values(), lambda s: s)
    request = Adopt(new, result.adopt)
    assert driver.machine.plan() == []  # before the adopt: nothing to do
    copies = adopted(driver.machine.children.values(), request)
    assert copies[0].spec.command == ("sleep", "1") and driver.machine.children["w-1"].spec.command == ("true",)
    adopt(driver, request)
    assert [(c.action, c.child) for c in driver.machine.plan()] == [("reconfigure", "w-1"), ("start", "w-2")]


def test_a_stopped_childs_new_spec_is_reported_as_an_update_naming_what_changed():
    old = sup(worker("a", "sleep", "1"), worker("b"))
    driver = running(old)
    driver.call(terminate_child("a"))
    result = the_diff(old, sup(worker("a", "sleep", "2"), worker("b")), driver)
    [update] = result.updates
    assert (update.action, update.supervisor, update.child) == ("update", "sup", "a")
    assert (update.before, update.after) == ({"command": ["sleep", "1"]}, {"command": ["sleep", "2"]})
    assert the_diff(old, old, driver).updates == ()  # nothing changed: nothing reported


def test_a_template_change_shows_the_fields_that_changed_not_identical_programs():
    old = DynamicSupervisorSpec(id="pool", templates={"w": worker("w", replicas=2), "v": worker("v")})
    new = DynamicSupervisorSpec(id="pool", templates={"w": worker("w", replicas=4), "v": worker("v")})
    change = settings_change(old, new)
    assert (change.before, change.after) == ({"templates": {"w": {"replicas": 2}}},
                                             {"templates": {"w": {"replicas": 4}}})
