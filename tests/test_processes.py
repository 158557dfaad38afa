"""The process layer with real processes: spawn, READY, exit reasons, shutdown, no orphans.

The programs are in ``tests/agents.py``; commands are ``sys.executable -c`` one-liners.
Every wait has a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from otpy.processes.manager import ChildProcess, ProcessManager, StartFailed
from otpy.specs.model import ChildSpec
from otpy.host.prctl import become_subreaper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_names = itertools.count()


def run(coro):
    return asyncio.run(coro)


def node_name() -> str:
    return f"test-processes-{os.getpid()}-{next(_names)}"


@contextlib.asynccontextmanager
async def manager(**kwargs):
    processes = ProcessManager(node_name=kwargs.pop("node_name", None) or node_name(), **kwargs)
    await processes.open()
    try:
        yield processes
    finally:
        await processes.close()


def program(name: str, **fields) -> ChildSpec:
    return ChildSpec(id=fields.pop("id", name.lower()), program=f"agents:{name}", **fields)


def command(code: str, **fields) -> ChildSpec:
    return ChildSpec(id=fields.pop("id", "cmd"), command=(sys.executable, "-u", "-c", code), **fields)


async def exited(child: ChildProcess, timeout: float = 10.0):
    return await asyncio.wait_for(asyncio.shield(child.exited), timeout)


class Lines:
    """An ``on_output`` that records lines and lets a test wait for one."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, child_id: str, stream: str, line: str) -> None:
        self.lines.append((child_id, line))
        self._changed.set()

    async def wait_for(self, predicate, timeout: float = 10.0) -> tuple[str, str]:
        async def scan():
            while True:
                for entry in self.lines:
                    if predicate(*entry):
                        return entry
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(scan(), timeout)


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` no longer exists (a zombie counts as existing)."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    _, alive = psutil.wait_procs([proc], timeout=timeout)
    return not alive


@pytest.fixture(autouse=True)
def no_zombies_or_fd_leaks():
    fds = set(os.listdir("/proc/self/fd"))
    yield
    zombies = [p for p in psutil.Process().children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
    assert set(os.listdir("/proc/self/fd")) <= fds


# --- program children ---------------------------------------------------------------------


def test_program_child_is_ready_and_alive():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(program("Sleeper"))
            assert psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE
            assert child.started_at is not None and not child.exited.done()
            assert processes.children == [child]
            assert repr(child) == f"<ChildProcess sleeper pid={child.pid} running>"
            assert os.getpgid(child.pid) == child.pid  # its own process group

    run(main())


def test_a_function_is_a_program():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(program("echo"))
            assert not child.exited.done()

    run(main())


def test_setup_that_raises_is_a_failed_start():
    async def main():
        async with manager(on_output=lambda *_: None) as processes:
            with pytest.raises(StartFailed, match="setup raised ValueError: boom"):
                await processes.spawn(program("FailingSetup"))
            assert processes.children == []

    run(main())


def test_a_program_that_cannot_be_imported_is_a_failed_start():
    async def main():
        async with manager() as processes:
            with pytest.raises(StartFailed, match="cannot import 'agents:Missing'"):
                await processes.spawn(program("Missing"))

    run(main())


@pytest.mark.timeout(20)
def test_no_ready_within_start_timeout_kills_the_child():
    async def main():
        lines = Lines()
        async with manager(on_output=lines) as processes:
            started = time.monotonic()
            with pytest.raises(StartFailed, match=r"no READY within 0.5 s"):
                await processes.spawn(program("SlowSetup", start_timeout=0.5))
            assert time.monotonic() - started >= 0.5
            _, pid = await lines.wait_for(lambda child_id, line: child_id == "slowsetup")
            assert not psutil.pid_exists(int(pid))  # dead and reaped before spawn raised

    run(main())


def test_sigkill_is_reason_killed():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(program("Sleeper"))
            child.send_signal(signal.SIGKILL)
            reason = await exited(child)
            assert (reason.kind, reason.signal) == ("killed", signal.SIGKILL)
            assert repr(child) == f"<ChildProcess sleeper pid={child.pid} exited: killed (SIGKILL)>"
            assert processes.children == []

    run(main())


def test_program_asking_for_shutdown_exit_is_reason_shutdown():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(program("ShutdownExit"))
            reason = await exited(child)
            assert (reason.kind, reason.code, reason.detail) == ("shutdown", 0, None)
            child = await processes.spawn(program("ShutdownExitWithTerm"))
            reason = await exited(child)
            assert (reason.kind, reason.detail) == ("shutdown", "done for today") and reason.clean

    run(main())


def test_program_output_reaches_on_output_with_the_child_id():
    async def main():
        lines = Lines()
        async with manager(on_output=lines) as processes:
            await processes.spawn(program("Sleeper", id="greeter", args={"say": "hi there"}))
            assert await lines.wait_for(lambda c, line: line == "hi there") == ("greeter", "hi there")

    run(main())


def test_program_runs_in_its_cwd_with_its_environment(tmp_path):
    async def main():
        lines = Lines()
        async with manager(on_output=lines) as processes:
            spec = program("ShowsItsPlace", cwd=str(tmp_path), env={"A": "from-spec"},
                           args={"names": ["OTPY_CHILD_ID", "OTPY_NOTIFY_FD", "A", "B"]})
            await processes.spawn(spec, env={"B": "from-request"})
            _, line = await lines.wait_for(lambda c, line: c == "showsitsplace")
            assert line == f"{tmp_path} showsitsplace 3 from-spec from-request"

    run(main())


@pytest.mark.parametrize("make", [program, command])
def test_a_cwd_that_does_not_exist_is_a_failed_start(make):
    async def main():
        async with manager(on_output=lambda *_: None) as processes:
            spec = make("Sleeper" if make is program else "pass", cwd="/otpy/no/such/dir")
            with pytest.raises(StartFailed, match="No such file or directory: '/otpy/no/such/dir'"):
                await processes.spawn(spec)

    run(main())


# --- stop: OTP's shutdown -----------------------------------------------------------------


def test_stop_with_a_timeout_sends_sigterm_and_runs_teardown():
    async def main():
        lines = Lines()
        async with manager(on_output=lines) as processes:
            child = await processes.spawn(program("TearsDown"))
            reason = await child.stop(5.0)
            assert reason.kind == "shutdown" and child.exited.done()
            await lines.wait_for(lambda c, line: line == "teardown ran")

    run(main())


@pytest.mark.timeout(20)
def test_stop_kills_a_child_that_ignores_sigterm_after_the_timeout():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(program("IgnoresTerm"))
            started = time.monotonic()
            reason = await child.stop(0.5)
            assert time.monotonic() - started >= 0.5
            assert reason.kind == "killed"

    run(main())


def test_brutal_kill_kills_at_once():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(program("IgnoresTerm"))
            started = time.monotonic()
            reason = await child.stop("brutal_kill")
            assert reason.kind == "killed" and time.monotonic() - started < 2.0

    run(main())


def test_stop_infinity_waits_for_the_sigterm_death():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(program("TearsDown"))
            reason = await asyncio.wait_for(child.stop("infinity"), 10)
            assert reason.kind == "shutdown"

    run(main())


def test_stop_right_after_ready_always_reaches_the_child():
    async def main():
        async with manager() as processes:
            for _ in range(30):  # READY can overtake the zygote's Spawned; stop must still work
                child = await processes.spawn(program("TearsDown"))
                assert (await asyncio.wait_for(child.stop(5.0), 4.0)).kind == "shutdown"

    run(main())


def test_stop_is_idempotent():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(program("Sleeper"))
            first, second = await asyncio.gather(child.stop(5.0), child.stop(5.0))
            assert first == second == await child.stop("brutal_kill")
            assert first.kind == "shutdown"

    run(main())


@pytest.mark.parametrize("end", ["stop", "crash"])
def test_no_grandchild_outlives_its_parent(tmp_path, end):
    async def main():
        pid_file = str(tmp_path / "grandchild.pid")
        async with manager() as processes:
            child = await processes.spawn(program("Forker", args={"pid_file": pid_file}))
            grandchild = int(open(pid_file).read())
            assert psutil.pid_exists(grandchild)
            if end == "stop":
                await child.stop(5.0)
            else:
                child.send_signal(signal.SIGKILL)
                await exited(child)
            assert wait_gone(grandchild)

    run(main())


def test_close_kills_the_children_that_are_left():
    async def main():
        processes = ProcessManager(node_name=node_name())
        await processes.open()
        children = [await processes.spawn(program("IgnoresTerm", id=f"c{i}")) for i in range(3)]
        await asyncio.wait_for(processes.close(), 10)
        assert all(c.exited.result().kind == "killed" for c in children)
        assert not any(psutil.pid_exists(c.pid) for c in children)
        with pytest.raises(StartFailed):
            await processes.spawn(program("Sleeper"))

    run(main())


# --- command children ---------------------------------------------------------------------


def test_command_is_ready_once_exec_succeeded():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(command("import time; time.sleep(60)"))
            assert psutil.Process(child.pid).cmdline()[0] == sys.executable
            assert (await child.stop(5.0)).kind == "shutdown"

    run(main())


def test_command_that_cannot_be_executed_is_a_failed_start():
    async def main():
        async with manager() as processes:
            spec = ChildSpec(id="nope", command=("otpy-no-such-binary", "x"))
            with pytest.raises(StartFailed, match=r"exec failed: \[Errno 2\].*otpy-no-such-binary"):
                await processes.spawn(spec)

    run(main())


NOTIFY = "import os, time; os.write(int(os.environ['OTPY_NOTIFY_FD']), b'READY\\n'); time.sleep(60)"


def test_command_with_ready_notify_is_ready_when_it_says_so():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(command(NOTIFY, ready="notify"))
            assert child.started_at is not None and not child.exited.done()

    run(main())


@pytest.mark.timeout(20)
def test_command_that_never_notifies_times_out():
    async def main():
        async with manager() as processes:
            with pytest.raises(StartFailed, match="no READY within 0.5 s"):
                await processes.spawn(command("import time; time.sleep(60)", ready="notify", start_timeout=0.5))

    run(main())


def test_command_dying_before_ready_is_a_failed_start():
    async def main():
        async with manager() as processes:
            with pytest.raises(StartFailed, match=r"exited before READY: crashed \(exit status 1\)"):
                await processes.spawn(command("raise SystemExit(1)", ready="notify"))

    run(main())


@pytest.mark.parametrize(("code", "kind", "status"), [(0, "normal", 0), (3, "crashed", 3)])
def test_exit_status_gives_the_reason(code, kind, status):
    async def main():
        async with manager() as processes:
            child = await processes.spawn(command(f"raise SystemExit({code})"))
            reason = await exited(child)
            assert (reason.kind, reason.code) == (kind, status)

    run(main())


def test_command_environment_and_output():
    async def main():
        lines = Lines()
        async with manager(on_output=lines, node_name="env-test-node") as processes:
            code = "import os; print(*(os.environ[k] for k in ('OTPY_NODE', 'OTPY_CHILD_ID', 'A', 'B')))"
            spec = command(code, id="envy", env={"A": "from-spec"})
            await processes.spawn(spec, env={"B": "from-request"})
            assert await lines.wait_for(lambda c, line: c == "envy") == (
                "envy", "env-test-node envy from-spec from-request")

    run(main())


# --- the zygote and leftovers -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_zygote_death_kills_every_child_and_the_next_spawn_works(tmp_path):
    async def main():
        pid_file = str(tmp_path / "grandchild.pid")
        async with manager() as processes:
            children = [await processes.spawn(program("Sleeper")),
                        await processes.spawn(program("Forker", args={"pid_file": pid_file})),
                        await processes.spawn(command("import time; time.sleep(60)"))]
            grandchild = int(open(pid_file).read())
            title = f"otpy: {processes.node_name} zygote"
            zygote = [p for p in psutil.Process().children() if " ".join(p.cmdline()).strip() == title]
            assert len(zygote) == 1
            zygote[0].kill()
            for child in children:
                reason = await exited(child)
                assert (reason.kind, reason.detail) == ("lost", "the zygote died")
                assert wait_gone(child.pid)  # reaped by whoever is their parent now
            assert wait_gone(grandchild)
            assert processes.children == []
            again = await processes.spawn(program("Sleeper"))
            assert not again.exited.done()

    run(main())


NODE = """
import asyncio, sys, psutil
from otpy.processes.manager import ProcessManager
from otpy.specs.model import ChildSpec

async def main():
    processes = ProcessManager(node_name=sys.argv[1])
    await processes.open()
    child = await processes.spawn(ChildSpec(id="sleeper", program="agents:Sleeper"))
    [zygote] = psutil.Process().children()
    print(zygote.pid, child.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.timeout(30)
def test_zygote_and_children_die_with_the_node():
    become_subreaper()  # the orphans come to this process, which reaps them in wait_gone
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    node = subprocess.Popen([sys.executable, "-c", NODE, node_name()], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        zygote, child = map(int, node.stdout.readline().split())
    finally:
        node.kill()
        node.wait()
        node.stdout.close()
    assert wait_gone(zygote) and wait_gone(child)


