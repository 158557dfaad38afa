"""The zygote's death is otpy's fault: it never fails a start within the zygote-death bound.

A zygote killed as it boots is replaced and the spawn waits for the next one; a spawn in
flight when the zygote dies is tried once more on the next zygote. Past the bound (more than
``ZYGOTE_DEATHS_MAX`` deaths in ``ZYGOTE_DEATHS_WINDOW`` s) starts fail, ``the zygote keeps
dying``. ProcessManager level, real processes; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from otpy.processes.zygote_link import ZygoteLink
from otpy.processes.manager import ZYGOTE_DEATHS_MAX, StartFailed
from otpy.specs.model import ChildSpec

from tests.helpers import alive
from tests.test_process_faults import manager, sleeper

KILLER = "tests.zygote_killing_agents:KillsItsImporter"


def kill_next_launches(monkeypatch, count: int) -> list[int]:
    """SIGKILL each of the next ``count`` zygotes right after its launch (before its Hello);
    returns the list their pids are added to."""
    original, killed = ZygoteLink._launch, []

    def launch(self, env):
        original(self, env)
        if len(killed) < count:
            killed.append(self.pid)
            os.kill(self.pid, signal.SIGKILL)

    monkeypatch.setattr(ZygoteLink, "_launch", launch)
    return killed


async def kill_zygote(processes) -> None:
    """SIGKILL the running zygote and wait until its death is handled."""
    link = processes._zygote
    os.kill(link.pid, signal.SIGKILL)
    await asyncio.wait_for(asyncio.shield(link._death), 10)  # resolved as it is reaped, then on_death ran


@pytest.mark.timeout(60)
def test_zygotes_killed_as_they_boot_are_replaced_within_the_bound_and_the_spawn_goes_on(monkeypatch):
    """One death, then every new zygote killed at launch up to the bound (5 deaths in all):
    the spawn waits through them and succeeds on the 6th zygote."""

    async def main():
        async with manager() as processes:
            await processes.spawn(sleeper("first"))
            await kill_zygote(processes)
            killed = kill_next_launches(monkeypatch, ZYGOTE_DEATHS_MAX - 1)
            child = await asyncio.wait_for(processes.spawn(sleeper("again")), 40)
            assert len(killed) == ZYGOTE_DEATHS_MAX - 1 and alive(child.pid)
            assert len(processes._zygote_deaths) == ZYGOTE_DEATHS_MAX

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_past_the_bound_a_zygote_killed_as_it_boots_fails_the_spawn_as_keeps_dying(monkeypatch):
    async def main():
        async with manager() as processes:
            await kill_zygote(processes)
            kill_next_launches(monkeypatch, 100)
            with pytest.raises(StartFailed, match="the zygote keeps dying: 6 deaths in 10 s"):
                await asyncio.wait_for(processes.spawn(sleeper()), 40)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_spawn_whose_child_is_not_ready_when_the_zygote_dies_goes_on_on_the_next_zygote(tmp_path):
    """The child exists (Spawned) but has not said READY when the zygote is SIGKILLed: it is
    lost, and the spawn starts it again from the next zygote instead of failing."""
    gate = tmp_path / "gate"
    spec = ChildSpec(id="late", command=("sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.01; done;"
                                          " echo READY >&3; exec sleep 1000"), ready="notify")

    async def main():
        async with manager() as processes:
            spawning = asyncio.ensure_future(processes.spawn(spec))
            while not processes._children:
                await asyncio.sleep(0.005)
            first = next(iter(processes._children))
            await kill_zygote(processes)
            gate.touch()
            child = await asyncio.wait_for(spawning, 20)
            assert child.pid != first and alive(child.pid) and len(processes._zygote_deaths) == 1

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_spawn_request_in_flight_when_the_zygote_dies_goes_on_on_the_next_zygote(monkeypatch, tmp_path):
    """The zygote dies importing the program (once): the spawn is tried on the next zygote."""
    left = tmp_path / "left"
    left.write_text("1")
    monkeypatch.setenv("OTPY_TEST_KILL_ZYGOTE", str(left))

    async def main():
        async with manager() as processes:
            child = await asyncio.wait_for(processes.spawn(ChildSpec(id="k", program=KILLER)), 30)
            assert alive(child.pid) and len(processes._zygote_deaths) == 1

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_a_module_whose_import_kills_every_zygote_is_bounded_by_the_zygote_death_bound(monkeypatch, tmp_path):
    """Each spawn costs at most 2 zygote deaths (one retry); past the bound spawns fail at once."""
    left = tmp_path / "left"
    left.write_text("1000")
    monkeypatch.setenv("OTPY_TEST_KILL_ZYGOTE", str(left))

    async def main():
        async with manager() as processes:
            failures = []
            for _ in range(10):
                with pytest.raises(StartFailed) as failed:
                    await asyncio.wait_for(processes.spawn(ChildSpec(id="k", program=KILLER)), 30)
                failures.append(str(failed.value))
                if "keeps dying" in failures[-1]:
                    break
            assert "keeps dying" in failures[-1] and len(failures) <= 4, failures
            assert all("lost: the zygote died" in f for f in failures[:-1]), failures
            assert 1000 - int(left.read_text()) == ZYGOTE_DEATHS_MAX + 1

    asyncio.run(main())
