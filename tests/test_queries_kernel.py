"""Queries never show a dead pid ``running``: the kernel's word, not only the zygote's report.

A dynamic supervisor with 120 children in a crash storm that the test itself drives (it
SIGKILLs a batch, waits until the kernel shows each one dead, then queries at once, with
no turn of the event loop between): as no process dies but by the test's hand, every pid an
answer shows ``running`` must be alive then. Real processes; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest

from otpy.processes.linux import proc_stat
from otpy.specs.model import ChildSpec, DynamicSupervisorSpec
from otpy.node.supervisor import Supervisor
from otpy.wire.protocol import ChildInfo, StartChild

from tests.test_process_faults import manager

CHILDREN = 120


def dead(pid: int, start_time: int | None) -> bool:
    """The kernel says ``pid`` (started at ``start_time``) is dead: a zombie, gone, or reused."""
    stat = proc_stat(pid)
    return stat is None or stat.state in "ZXx" or stat.start_time != start_time


def wait_dead(pids: dict[int, int | None], timeout: float = 5.0) -> None:
    """Until the kernel shows every pid dead; synchronous, so that the loop handles no report."""
    deadline = time.monotonic() + timeout
    while not all(dead(p, t) for p, t in pids.items()):
        assert time.monotonic() < deadline, "SIGKILLed children still alive"
        time.sleep(0.0002)


async def dynamic_tree(processes) -> Supervisor:
    spec = DynamicSupervisorSpec(id="dyn", max_restarts=1_000_000, max_seconds=1)
    sup = Supervisor(spec, processes=processes, report=lambda *_: None)
    await sup.start()
    for i in range(CHILDREN):
        child = ChildSpec(id=f"c{i}", command=("sleep", "100000"), ready="exec", restart="permanent")
        result = await sup.call(StartChild(request_id=0, supervisor="", spec=child))
        assert result.outcome == "ok", result
    return sup


async def restarted(sup: Supervisor, at_least: int, timeout: float = 10.0) -> None:
    """Until ``at_least`` children are running again (the supervisor restarts them)."""
    deadline = time.monotonic() + timeout
    while sum(i.state == "running" for i in sup.children_info()) < at_least:
        assert time.monotonic() < deadline, "children not restarted"
        await asyncio.sleep(0.005)


@pytest.mark.timeout(90)
def test_a_crash_storm_never_shows_a_dead_pid_running():
    async def main():
        async with manager() as processes:
            sup = await dynamic_tree(processes)
            try:
                answers, killed, shown_dead = await storm(sup, seconds=4.0)
            finally:
                await sup.kill()
            print(f"\n{answers} answers, {killed} children killed, {len(shown_dead)} dead shown running")
            assert answers >= 5 and not shown_dead, shown_dead[:5]

    asyncio.run(main())


async def storm(sup: Supervisor, seconds: float) -> tuple[int, int, list[dict]]:
    """Kill batches of running children, query right after each batch is dead in the kernel:
    (answers, children killed, entries shown running whose pid was dead)."""
    answers, killed, shown_dead, deadline = 0, 0, [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        running = {i.pid: sup._handles[i.id].start_time
                   for i in sup.children_info() if i.state == "running"}
        batch = dict(random.sample(sorted(running.items()), min(20, len(running))))
        for pid in batch:
            os.kill(pid, signal.SIGKILL)
        wait_dead(batch)
        info = sup.children_info()  # no loop turn since the kills: their reports are pending
        start_times = {h.pid: h.start_time for h in sup._handles.values()}
        shown_dead += [i for i in info if i.state == "running" and dead(i.pid, start_times.get(i.pid))]
        assert all(i.state == "restarting" for i in info if i.pid is None), info
        answers, killed = answers + 1, killed + len(batch)
        await restarted(sup, CHILDREN - 10)
    return answers, killed, shown_dead


@pytest.mark.timeout(60)
def test_a_reused_pid_is_not_taken_for_the_child():
    """The pid now names another child of the zygote, or a process with another start time
    than the one recorded at spawn: the child is dead."""

    async def main():
        async with manager() as processes:
            sup = await dynamic_tree(processes)
            try:
                handle = sup._handles["c0"]
                assert sup.children_info()[0].state == "running" and handle.kernel_exit() is None
                # as if c0 had died and its pid were another child's now, started later
                processes._children[handle.pid] = object()
                handle.start_time -= 1
                assert handle.kernel_exit() is not None
                assert sup.children_info()[0] == ChildInfo(id="c0", pid=None, state="restarting",
                                                           kind="worker", restarts=0)
                handle.start_time += 1
            finally:
                processes._children[handle.pid] = handle
                await sup.kill()

    asyncio.run(main())


@pytest.mark.timeout(120)
def test_the_check_costs_little_for_1000_children():
    """children_info over 1,000 running children: well under 50 ms (printed)."""

    async def main():
        async with manager() as processes:
            spec = DynamicSupervisorSpec(id="dyn", max_restarts=1000, max_seconds=1)
            sup = Supervisor(spec, processes=processes, report=lambda *_: None)
            await sup.start()
            for i in range(1000):
                child = ChildSpec(id=f"c{i}", command=("sleep", "100000"), ready="exec")
                assert (await sup.call(StartChild(request_id=0, supervisor="", spec=child))).outcome == "ok"
            timings = []
            for _ in range(20):
                t0 = time.perf_counter()
                info = sup.children_info()
                timings.append(time.perf_counter() - t0)
            assert sum(i.state == "running" for i in info) == 1000
            timings.sort()
            print(f"\nchildren_info, 1,000 children: median {timings[10] * 1e3:.1f} ms, max {timings[-1] * 1e3:.1f} ms")
            await sup.kill()
            assert timings[10] < 0.05

    asyncio.run(main())
