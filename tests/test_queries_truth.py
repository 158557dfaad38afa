"""Hardening of supervision with real OS processes: what queries show between a supervisor's
events, children lost with the zygote, and the parallel stop of a dynamic supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import msgspec
import psutil
import pytest

import otpy
from tests.helpers import IGNORES_TERM, alive, is_zygote, python, sleeper, unique_name, wait_until

pytestmark = pytest.mark.timeout(60)


def bash(id: str, script: str, **kw) -> otpy.ChildSpec:
    """A command child run by bash (``$OTPY_NOTIFY_FD`` may have two digits: dash cannot)."""
    return otpy.ChildSpec(id=id, command=("bash", "-c", script), **kw)


def held_start(id: str, release: str) -> otpy.ChildSpec:
    """Says READY only once the file ``release`` exists: its supervisor is busy until then."""
    return bash(id, f'while [ ! -e {release} ]; do sleep 0.05; done; echo READY >&"$OTPY_NOTIFY_FD"; '
                'exec sleep 3600', ready="notify", start_timeout=60)


def start(children, node_prefix="hard", **flags) -> otpy.Node:
    root = otpy.SupervisorSpec(id="root", children=tuple(children), **flags)
    return otpy.Node.from_spec(root, name=unique_name(node_prefix)).start()


def info(node: otpy.Node, sup_id: str = "root") -> dict[str, dict]:
    """The supervisor's ``children_info()``, read on the node's loop, by id."""
    return {c.id: msgspec.structs.asdict(c) for c in node.which_children(sup_id)}


def status(node: otpy.Node) -> dict[str, dict]:
    return {c.id: msgspec.structs.asdict(c) for c in node.status().tree.children}


# --- queries answer the truth between events ---------------------------------------------------


class TestQueriesBetweenEvents:
    def test_a_child_killed_while_its_supervisor_is_busy_is_restarting_without_a_pid(self, tmp_path):
        node = start([sleeper("a"), sleeper("b")])
        release = tmp_path / "release"
        try:
            dead = info(node)["a"]["pid"]
            # The supervisor is busy starting "slow" until the test releases it; "a" dies meanwhile.
            pending = asyncio.run_coroutine_threadsafe(
                node.aio.start_child("root", held_start("slow", str(release))), node._loop)
            wait_until(lambda: "slow" in info(node), what="the slow start under way")
            os.kill(dead, signal.SIGKILL)
            wait_until(lambda: not alive(dead), what="a reaped")
            shown = wait_until(lambda: (c := info(node)["a"])["state"] != "running" and c, timeout=3.0,
                               what="a no longer shown running")
            assert shown["state"] == "restarting" and shown["pid"] is None
            assert info(node)["slow"]["state"] == "starting", "the supervisor was still busy"
            entry = status(node)["a"]
            assert (entry["state"], entry["pid"]) == ("restarting", None)
            assert status(node)["b"]["state"] == "running"
            assert not pending.done()
            release.touch()
            assert pending.result(timeout=30).ok
            new = wait_until(lambda: (c := info(node)["a"])["state"] == "running" and c,
                             what="a restarted")
            assert new["pid"] not in (None, dead) and new["restarts"] == 1
        finally:
            release.touch()
            node.stop()

    def test_a_crash_storm_never_shows_a_dead_pid_running(self):
        # 12 children, each takes 0.2 s to start and crashes as soon as it is up: the
        # supervisor is always busy and every exit waits seconds in its inbox.
        crasher = 'sleep 0.2; echo READY >&"$OTPY_NOTIFY_FD"; exit 1'
        node = start([bash(f"c{i}", crasher, ready="notify") for i in range(12)],
                     max_restarts=100_000, max_seconds=1)
        grace = 0.5  # time for an exit to travel from the zygote to the node
        seen_dead: dict[int, float] = {}  # pid -> when this test first saw it dead
        stale: list[tuple[str, int, float]] = []
        try:
            deadline = time.monotonic() + 4.0
            samples = 0
            while time.monotonic() < deadline:
                for entries in (info(node), status(node)):
                    taken = time.monotonic()
                    samples += 1
                    for c in entries.values():
                        if c["state"] != "running":
                            assert c["pid"] is None or c["state"] == "stopping", c
                            continue
                        pid = c["pid"]
                        if pid in seen_dead and seen_dead[pid] < taken - grace:
                            stale.append((c["id"], pid, taken - seen_dead[pid]))
                        elif pid not in seen_dead and not alive(pid):
                            seen_dead[pid] = time.monotonic()
                time.sleep(0.02)  # a sampling pace (not a wait for anything): spare the 2 cores
            assert stale == [], f"shown running after death: {stale[:5]} ({len(stale)} in all)"
            assert samples > 20
            assert sum(c["restarts"] for c in info(node).values()) > 10, "not a storm"
        finally:
            node.stop()


# --- children lost with the zygote are not charged to the supervisor ---------------------------


def zygote_pids() -> list[int]:
    return [p.pid for p in psutil.Process().children() if is_zygote(p)]


class TestZygoteDeath:
    def test_sigkilling_the_zygote_under_default_intensity_restarts_every_child(self):
        kids = [sleeper(f"w{i}") for i in range(5)]  # more children than max_restarts (3)
        node = start(kids)
        try:
            before = {i: c["pid"] for i, c in info(node).items()}
            [zygote] = zygote_pids()
            os.kill(zygote, signal.SIGKILL)

            def all_back():
                assert not node.aio.root.exited.done(), f"the root gave up: {node.aio.root.error}"
                now = info(node)
                return all(c["state"] == "running" and c["pid"] != before[i] for i, c in now.items()) and now

            after = wait_until(all_back, timeout=20, what="every child restarted")
            assert set(after) == set(before)
            assert all(c["restarts"] == 1 for c in after.values())
            root = node.aio.root
            assert not root.exited.done(), root.error
            assert len(root.machine.window) == 0  # nothing charged
            assert not any(alive(pid) for pid in before.values())
        finally:
            node.stop()


# --- a dynamic supervisor stops its children in parallel ---------------------------------------


class TestDynamicShutdown:
    def test_twenty_children_ignoring_sigterm_stop_within_one_shutdown_not_twenty(self):
        pool = otpy.DynamicSupervisorSpec(id="pool")
        node = start([pool], node_prefix="pool")
        try:
            for i in range(20):
                spec = otpy.ChildSpec(id=f"w{i}", command=python(IGNORES_TERM), ready="notify", shutdown=1)
                assert node.start_child("pool", spec).ok
            pids_ = [c["pid"] for c in info(node, "pool").values()]
            began = time.monotonic()
            assert node.terminate_child("pool", "root").ok
            took = time.monotonic() - began
            # Each child takes its full 1 s shutdown, then SIGKILL: one after another is 20 s.
            assert 0.9 < took < 6.0, took
            assert not any(alive(pid) for pid in pids_)
        finally:
            node.stop()
