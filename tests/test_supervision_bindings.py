"""Supervisors following variables with real OS processes (#13): a shared ``BoundValues`` the
test changes, then ``reconcile()``; the process set and ``children_info`` must follow. A tree
of supervisors is reconciled by the node (``set_variables``), the path a write takes.
"""

from __future__ import annotations

import asyncio

import pytest

import otpy
from otpy.node.supervisor import Supervisor
from otpy.specs.bindings import BoundValues
from otpy.specs.model import Bound, ChildSpec, DynamicSupervisorSpec, NodeSpec, SupervisorSpec
from otpy.variables.placement import with_registry
from otpy.wire.protocol import BoundInfo, TerminateChild

from tests.helpers import alive, unique_name, wait_dead
from tests.test_process_faults import manager

pytestmark = pytest.mark.timeout(60)

SLEEPER = "tests.agents:Sleeper"
ECHO = "tests.agents:Echo"
FAILING = "tests.agents:FailingSetup"


def run(tree, values: BoundValues, check) -> None:
    """Start ``tree`` with ``values`` under a real process manager, run ``check(sup)``, stop."""

    async def main():
        async with manager() as processes:
            sup = Supervisor(tree, processes=processes, report=lambda *_: None, values=values)
            await sup.start()
            try:
                await check(sup)
            finally:
                await sup.stop()

    asyncio.run(main())


def info(sup: Supervisor, id: str):
    [child] = [c for c in sup.children_info() if c.id == id]
    return child


def test_a_bound_program_follows_its_variable_make_before_break():
    live = BoundValues({"global.program": SLEEPER}, {"global.program": 1})
    tree = SupervisorSpec(id="root", children=(ChildSpec(id="a", program=Bound("global.program")),))

    async def check(sup):
        before = info(sup, "a")
        assert (before.program, before.bound) == (SLEEPER, BoundInfo("global.program", 1))
        assert sup.plan() == []
        live.update({"global.program": ECHO})  # the node commits (and learns the version) after
        assert info(sup, "a").bound == BoundInfo("global.program", 1)  # still runs version 1's value
        [planned] = sup.plan()
        result = await sup.reconcile()
        assert result.ok, result
        [change] = result.changes
        assert (change.action, change.before, change.after) == ("reconfigure", SLEEPER, ECHO)
        assert change.pid == info(sup, "a").pid != before.pid and planned.pid is None
        live.versions["global.program"] = 2  # committed
        after = info(sup, "a")
        assert (after.program, after.bound, after.state) == (ECHO, BoundInfo("global.program", 2), "running")
        assert wait_dead([before.pid], 10) == []
        assert (await sup.reconcile()).changes == []

    run(tree, live, check)


def test_a_target_that_fails_keeps_the_old_program_serving():
    live = BoundValues({"global.program": SLEEPER})
    tree = SupervisorSpec(id="root", children=(ChildSpec(id="a", program=Bound("global.program")),))

    async def check(sup):
        before = info(sup, "a").pid
        undo = live.update({"global.program": FAILING})
        result = await sup.reconcile()
        assert result.outcome == "start_failed" and result.detail.startswith("child 'a' (under 'root'): ")
        assert "boom" in result.detail and result.changes == []
        assert info(sup, "a").pid == before and alive(before) and info(sup, "a").program == SLEEPER
        live.restore(undo)
        assert (await sup.reconcile()).changes == []

    run(tree, live, check)


def test_enabled_stops_and_starts_the_process_and_an_override_stays():
    live = BoundValues({"pool.on": True})
    tree = SupervisorSpec(id="root", children=(
        ChildSpec(id="a", program=SLEEPER, enabled=Bound("pool.on")),
        ChildSpec(id="b", program=SLEEPER, enabled=Bound("pool.on"))))

    async def check(sup):
        pid = info(sup, "a").pid
        live.update({"pool.on": False})
        result = await sup.reconcile()
        assert [(c.action, c.child) for c in result.changes] == [("stop", "b"), ("stop", "a")]
        assert info(sup, "a").state == "stopped" and wait_dead([pid], 10) == []
        assert info(sup, "a").bound == BoundInfo("pool.on", 0)
        assert (await sup.call(TerminateChild(request_id=0, id="b"))).ok  # the operator's word
        assert info(sup, "b").override
        entry = {e.id: e for e in sup.snapshot().children}["b"]  # otpy status shows the same
        assert (entry.program, entry.bound, entry.override) == (SLEEPER, BoundInfo("pool.on", 0), True)
        live.update({"pool.on": True})
        result = await sup.reconcile()
        assert [(c.action, c.child) for c in result.changes] == [("start", "a")]
        assert info(sup, "a").state == "running" and alive(info(sup, "a").pid)
        assert info(sup, "b").state == "stopped"

    run(tree, live, check)


def test_make_starts_and_replaces_and_only_break_stops():
    live = BoundValues({"global.program": SLEEPER, "pool.on": True})
    tree = SupervisorSpec(id="root", children=(
        ChildSpec(id="a", program=Bound("global.program")),
        ChildSpec(id="b", program=SLEEPER, enabled=Bound("pool.on"))))

    async def check(sup):
        b = info(sup, "b").pid
        live.update({"global.program": ECHO, "pool.on": False})
        plan = sup.plan()
        made = await sup.reconcile("make")
        assert made.ok and [(c.action, c.child) for c in made.changes] == [("reconfigure", "a")]
        assert info(sup, "a").program == ECHO and info(sup, "b").pid == b and alive(b)  # nothing stopped
        broken = await sup.reconcile("break")
        assert [(c.action, c.child) for c in broken.changes] == [("stop", "b")]
        assert [(c.action, c.child) for c in plan] == [("reconfigure", "a"), ("stop", "b")]
        assert wait_dead([b], 10) == []

    run(tree, live, check)


def test_replicas_follow_a_write_through_the_node_in_a_nested_supervisor():
    variables = {"pool": {"workers": {"type": "integer", "low": 0, "high": 4, "default": 2}}}
    pool = DynamicSupervisorSpec(id="pool", templates={
        "w": ChildSpec(id="w", program=SLEEPER, replicas=Bound("pool.workers"))})
    root = with_registry(SupervisorSpec(id="root", children=(pool,)), variables)
    with otpy.Node(NodeSpec(name=unique_name("replicas"), root=root)) as node:
        assert [c.id for c in node.which_children("pool")] == ["w-1", "w-2"]
        planned = node.set_variables("pool", {"workers": 3}, dry_run=True)
        assert [(c.action, c.child) for c in planned.changes if c.action != "set"] == [("start", "w-3")]
        result = node.set_variables("pool", {"workers": 3})
        assert result.ok and [c.child for c in result.changes if c.action == "start"] == ["w-3"]
        pids = {c.id: c.pid for c in node.which_children("pool")}
        assert all(alive(p) for p in pids.values()) and len(pids) == 3
        result = node.set_variables("pool", {"workers": 1})
        assert [(c.action, c.child) for c in result.changes if c.action == "stop"] == [("stop", "w-3"), ("stop", "w-2")]
        assert [c.id for c in node.which_children("pool")] == ["w-1"]
        assert wait_dead([pids["w-2"], pids["w-3"]], 10) == []
