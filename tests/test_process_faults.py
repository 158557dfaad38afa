"""Hardening of the process layer: the run tag, fd exhaustion, zygote death, a stopped zygote.

At the ProcessManager level, with real processes and signals; every wait has a deadline.
The node-level checks (a tree restarted, the node up) are in ``test_zygote_loss``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from otpy.host.node_run import RUN_VAR, processes_of_run
from otpy.processes.fd_reserve import RESERVE_SIZE
from otpy.processes.manager import ProcessManager, StartFailed
from otpy.specs.model import ChildSpec

from tests.helpers import SLEEPER, alive, python, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_names = itertools.count()

# A command that starts a grandchild in a session of its own (as a daemon does), writes the
# grandchild's pid to $PID_FILE, says READY and sleeps.
SETSID_PARENT = (
    "setsid sh -c 'echo $$ > \"$PID_FILE.tmp\"; mv \"$PID_FILE.tmp\" \"$PID_FILE\"; exec sleep 1000' &"
    " echo READY >&3; exec sleep 1000"
)


def node_name() -> str:
    return f"test-hardening-{os.getpid()}-{next(_names)}"


@contextlib.asynccontextmanager
async def manager(**kwargs):
    processes = ProcessManager(node_name=node_name(), on_output=lambda *_: None, **kwargs)
    await processes.open()
    try:
        yield processes
    finally:
        await processes.close()


def sleeper(id: str = "cmd", **fields) -> ChildSpec:
    return ChildSpec(id=id, command=python(SLEEPER), ready="notify", **fields)


def setsid_parent(pid_file: str, id: str = "daemonizer") -> ChildSpec:
    return ChildSpec(id=id, command=("sh", "-c", SETSID_PARENT), ready="notify", env={"PID_FILE": pid_file})


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        entries = f.read().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)


async def wait_dead_async(pids: list[int], timeout: float) -> list[int]:
    """Pids still alive after ``timeout`` s (zombies count as dead)."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return left


def read_pid(path: str, timeout: float = 10.0) -> int:
    wait_until(lambda: os.path.exists(path), timeout, f"{path} written")
    with open(path) as f:
        return int(f.read())


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --- the run tag ---------------------------------------------------------------------------


def test_the_run_id_given_is_carried_by_the_zygote_and_every_child():
    async def main():
        async with manager(run_id="run-given-1") as processes:
            child = await processes.spawn(sleeper())
            assert environ_of(child.pid)[RUN_VAR] == "run-given-1"
            assert set(processes_of_run("run-given-1")) >= {child.pid, processes._zygote.pid}

    asyncio.run(main())


def test_without_a_run_id_one_is_made():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(sleeper())
            assert processes.run_id and environ_of(child.pid)[RUN_VAR] == processes.run_id

    asyncio.run(main())


# --- out of fds ----------------------------------------------------------------------------

# In a process of its own: its fd limit is lowered, then every fd is taken (a flood of client
# connections would do that), then children are spawned until one fails.
OUT_OF_FDS_NODE = """
import asyncio, json, os, resource, sys
from otpy.processes.manager import ProcessManager, StartFailed
from otpy.specs.model import ChildSpec
from tests.helpers import SLEEPER, python

def fds():  # counted without opening one (there may be none left)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return sum(1 for fd in range(min(limit, 4096)) if _open(fd))

def _open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False

async def main():
    processes = ProcessManager(node_name=sys.argv[1], on_output=lambda *_: None)
    await processes.open()
    resource.setrlimit(resource.RLIMIT_NOFILE, (fds() + 40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    flood = []
    while True:
        try:
            flood.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    spawned, failure, leaked = [], None, None
    for i in range(20):
        before, run_before = fds(), len(processes._children)
        try:
            spawned.append(await processes.spawn(ChildSpec(id=f"c{i}", command=python(SLEEPER), ready="notify")))
        except StartFailed as exc:
            failure = str(exc)
            leaked = {"fds": fds() - before, "children": len(processes._children) - run_before}
            break
        except BaseException as exc:
            failure = f"not StartFailed: {type(exc).__name__}: {exc}"
            break
    for fd in flood:
        os.close(fd)
    after = await processes.spawn(ChildSpec(id="after", command=python(SLEEPER), ready="notify"))
    print(json.dumps({"spawned": len(spawned), "failure": failure, "leaked": leaked,
                      "after": after.pid > 0, "reserve": len(processes._reserve)}), flush=True)
    await processes.close()

asyncio.run(main())
"""


@pytest.mark.timeout(60)
def test_a_spawn_out_of_fds_uses_the_reserve_then_fails_as_a_start_failure_leaking_nothing():
    """Every fd taken: the reserve makes room for restarts; once it is spent, a spawn is a
    StartFailed with the errno text (not an OSError that would crash the supervisor), and it
    leaves no fd and no process; with fds free again, spawns work and the reserve is back."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", OUT_OF_FDS_NODE, node_name()], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["spawned"] >= 2, result  # with every fd taken, the reserve made room
    assert result["failure"] is not None and "Too many open files" in result["failure"], result
    assert result["failure"].startswith("cannot make the child's pipes"), result
    assert result["leaked"] == {"fds": 0, "children": 0}, result
    assert result["after"] and result["reserve"] == RESERVE_SIZE, result


# --- the zygote dies -----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_children_of_a_dead_zygote_exit_lost_and_the_next_spawn_starts_a_new_one():
    async def main():
        async with manager() as processes:
            children = [await processes.spawn(sleeper(f"c{i}")) for i in range(3)]
            old = processes._zygote.pid
            os.kill(old, signal.SIGKILL)
            for child in children:
                reason = await asyncio.wait_for(asyncio.shield(child.exited), 10)
                assert (reason.kind, reason.detail) == ("lost", "the zygote died")
            again = await processes.spawn(sleeper("again"))
            assert processes._zygote.pid != old and not again.exited.done()

    asyncio.run(main())


@pytest.mark.timeout(40)
def test_a_zygote_that_keeps_dying_makes_spawns_fail_until_the_window_has_room():
    """More than 5 zygote deaths within 10 s: the next spawn is a StartFailed saying so."""

    async def main():
        async with manager() as processes:
            for _ in range(6):
                await processes.spawn(sleeper())
                os.kill(processes._zygote.pid, signal.SIGKILL)
                await asyncio.wait_for(_zygote_gone(processes), 10)
            with pytest.raises(StartFailed, match="the zygote keeps dying: 6 deaths in 10 s"):
                await processes.spawn(sleeper())
            processes._zygote_deaths.popleft()  # as if the window had moved on
            assert not (await processes.spawn(sleeper())).exited.done()

    asyncio.run(main())


async def _zygote_gone(processes: ProcessManager) -> None:
    while processes._zygote is not None or processes._reaping:
        await asyncio.sleep(0.01)


@pytest.mark.timeout(30)
def test_a_setsid_grandchild_is_swept_when_the_zygote_dies_and_the_new_zygote_s_children_are_not(tmp_path):
    """The grandchild left its group and session; when the zygote is SIGKILLed it is reparented
    to init. The sweep by run tag kills it; the children of the next zygote (same run) live."""

    async def main():
        grandchild = 0
        async with manager() as processes:
            try:
                await processes.spawn(setsid_parent(str(tmp_path / "first")))
                grandchild = read_pid(str(tmp_path / "first"))
                os.kill(processes._zygote.pid, signal.SIGKILL)
                assert await wait_dead_async([grandchild], 3.0) == [], "setsid grandchild outlived its zygote"
                await asyncio.wait_for(_zygote_gone(processes), 10)
                # the next zygote and its children (and their grandchildren) carry the same run id
                child = await processes.spawn(setsid_parent(str(tmp_path / "second")))
                second = read_pid(str(tmp_path / "second"))
                sibling = await processes.spawn(sleeper())
                assert all(alive(p) for p in (child.pid, second, sibling.pid, processes._zygote.pid))
            finally:
                kill_quietly(grandchild)

    asyncio.run(main())


# The node for the next test: a manager with a given run id; it prints its zygote's pid.
RUN_NODE = """
import asyncio, sys
from otpy.processes.manager import ProcessManager
from otpy.specs.model import ChildSpec
from tests.helpers import SLEEPER, python

async def main():
    processes = ProcessManager(node_name=sys.argv[1], run_id=sys.argv[2], on_output=lambda *_: None)
    await processes.open()
    child = await processes.spawn(ChildSpec(id="c", command=python(SLEEPER), ready="notify"))
    print(processes._zygote.pid, child.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.timeout(30)
def test_when_the_node_dies_its_zygote_kills_every_process_of_the_run_even_outside_its_tree():
    """A process of the run that is not below the zygote (init adopted it) dies with the node."""
    run_id = f"run-{node_name()}"
    env = {**os.environ, "PYTHONPATH": ROOT}
    node = subprocess.Popen([sys.executable, "-c", RUN_NODE, node_name(), run_id], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    stray = subprocess.Popen(["sleep", "1000"], env={**os.environ, RUN_VAR: run_id})
    try:
        zygote, child = map(int, node.stdout.readline().split())
        node.kill()
        node.wait(timeout=10)
        assert stray.wait(timeout=3) == -signal.SIGKILL
        wait_until(lambda: not alive(zygote) and not alive(child), 3, "zygote and child gone")
    finally:
        stray.kill()
        stray.wait()
        node.kill()
        node.wait()
        node.stdout.close()


# --- a stopped zygote -----------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_a_stopped_zygote_is_noticed_killed_and_replaced():
    """SIGSTOP the zygote, then stop a child: the heartbeat notices the zygote within about
    3 s, SIGKILLs it; the children end ``lost``, the stop returns, the next spawn works."""

    async def main():
        async with manager() as processes:
            stopping, other = await processes.spawn(sleeper("a")), await processes.spawn(sleeper("b"))
            old = processes._zygote.pid
            os.kill(old, signal.SIGSTOP)
            t0 = time.monotonic()
            reason = await asyncio.wait_for(stopping.stop(10.0), 6)
            took = time.monotonic() - t0
            assert reason.kind == "lost", reason
            assert (await asyncio.wait_for(asyncio.shield(other.exited), 2)).kind == "lost"
            assert processes._zygote is None or processes._zygote.pid != old
            assert await wait_dead_async([old, stopping.pid, other.pid], 3) == []
            again = await processes.spawn(sleeper("a"))
            assert processes._zygote.pid != old and alive(again.pid)
            print(f"\nstopped zygote: noticed and replaced, the stop returned after {took:.2f} s")
            assert took < 4.5

    asyncio.run(main())


@pytest.mark.timeout(40)
def test_a_zygote_busy_importing_a_slow_module_is_not_taken_for_stuck(monkeypatch):
    """5 s in a program module's import (more than the 2 s heartbeat timeout, within the
    start timeout): the spawn succeeds from the same zygote."""
    monkeypatch.setenv("OTPY_TEST_SLOW_IMPORT", "5")

    async def main():
        async with manager() as processes:
            zygote = processes._zygote.pid
            child = await processes.spawn(ChildSpec(
                id="slow", program="tests.slow_import_agents:SlowImport", start_timeout=15))
            assert processes._zygote.pid == zygote and alive(child.pid)

    asyncio.run(main())


@pytest.mark.timeout(40)
def test_a_zygote_stopped_while_busy_on_a_spawn_is_still_noticed_within_the_heartbeat_bound(monkeypatch):
    """A pending spawn gives the zygote until the start deadline (30 s here) to answer; a
    zygote seen stopped (SIGSTOP) has no such excuse: it is replaced within about 3 s, and
    the spawn goes on on the next zygote."""
    monkeypatch.setenv("OTPY_TEST_SLOW_IMPORT", "5")

    async def main():
        async with manager() as processes:
            old = processes._zygote.pid
            spawning = asyncio.ensure_future(processes.spawn(ChildSpec(
                id="slow", program="tests.slow_import_agents:SlowImport", start_timeout=30)))
            while not processes._requests:
                await asyncio.sleep(0.01)
            os.kill(old, signal.SIGSTOP)
            assert await wait_dead_async([old], 4.5) == [], "a stopped zygote was not replaced"
            child = await asyncio.wait_for(spawning, 20)  # tried again on the next zygote
            assert processes._zygote.pid != old and alive(child.pid)

    asyncio.run(main())
