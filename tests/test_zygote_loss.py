"""Hardening of the process layer, seen from a whole node: its zygote killed or stopped.

A zygote's death is otpy's loss, not the children's: they end ``lost`` and are restarted
without being charged to the restart intensity, so a node of 4 children under the default
intensity (3 restarts in 5 s) survives it. A stopped zygote is noticed by the heartbeat and
replaced. No descendant (a ``setsid`` grandchild either) survives its zygote or its node.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time

import pytest

import otpy
from tests.helpers import SLEEPER, alive, python, unique_name, wait_dead, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A command that starts a grandchild in a session of its own (as a daemon does) and writes
# the grandchild's pid to $PID_FILE (a new name each incarnation: $PID_FILE.<its pid>).
SETSID_PARENT = (
    "setsid sh -c 'echo $$ > \"$PID_FILE.$PPID.tmp\"; mv \"$PID_FILE.$PPID.tmp\" \"$PID_FILE\"; "
    "exec sleep 1000' & echo READY >&3; exec sleep 1000"
)


def sleeper(id: str) -> otpy.ChildSpec:
    return otpy.ChildSpec(id=id, command=python(SLEEPER), ready="notify")


def tree(*children: otpy.ChildSpec) -> otpy.SupervisorSpec:
    return otpy.SupervisorSpec(id="root", children=children)  # default intensity: 3 in 5 s


def zygote_of(node: otpy.Node) -> int:
    return node.aio.processes._zygote.pid


def running(node: otpy.Node) -> dict[str, int]:
    """The children running with a live pid (None: some child is not)."""
    children = node.which_children("root")
    if all(c.state == "running" and c.pid and alive(c.pid) for c in children):
        return {c.id: c.pid for c in children}
    return {}


def whole_again(node: otpy.Node, old: dict[str, int], timeout: float) -> dict[str, int]:
    """Wait until every child runs again, each with a pid other than ``old``'s."""
    return wait_until(lambda: (now := running(node)) and all(now[i] != old[i] for i in old) and now,
                      timeout, "every child running again from a new zygote")


def read_pid(path: str, timeout: float = 10.0) -> int:
    wait_until(lambda: os.path.exists(path), timeout, f"{path} written")
    with open(path) as f:
        return int(f.read())


def kill_quietly(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(40)
def test_a_sigkilled_zygote_costs_no_restart_intensity_and_its_children_come_back():
    node = otpy.Node.from_spec(tree(*(sleeper(f"c{i}") for i in range(4))), name=unique_name("zkill"),
                               on_output=lambda *_: None).start()
    try:
        for round_ in range(2):  # twice: 8 restarts in a few seconds, still within intensity
            before = running(node)
            assert len(before) == 4
            zygote = zygote_of(node)
            t0 = time.monotonic()
            os.kill(zygote, signal.SIGKILL)
            whole_again(node, before, 10)
            took = time.monotonic() - t0
            assert zygote_of(node) != zygote
            assert node.status().tree.state == "running"
            print(f"\nzygote SIGKILL #{round_ + 1}: 4 children back from a new zygote in {took:.2f} s")
        assert wait_dead(list(before.values()), 2.0) == []
    finally:
        node.stop()


def _with_deadline(fn, timeout: float, *args):
    """``fn(*args)`` in a thread; its result, or TimeoutError if it takes longer than ``timeout``."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn, *args).result(timeout=timeout)
    finally:
        pool.shutdown(wait=False)


@pytest.mark.timeout(40)
def test_a_stopped_zygote_is_replaced_and_a_child_killed_meanwhile_comes_back():
    node = otpy.Node.from_spec(tree(*(sleeper(f"c{i}") for i in range(3))), name=unique_name("zstop"),
                               on_output=lambda *_: None).start()
    zygote = 0
    try:
        before = running(node)
        zygote = zygote_of(node)
        os.kill(zygote, signal.SIGSTOP)
        t0 = time.monotonic()
        os.kill(before["c1"], signal.SIGKILL)
        whole_again(node, before, 8)
        took = time.monotonic() - t0
        assert not alive(zygote) and _with_deadline(node.status, 2).tree.state == "running"
        print(f"\nstopped zygote: tree whole again {took:.2f} s after the SIGSTOP and a child's SIGKILL")
    finally:
        kill_quietly(zygote)
        node.stop()


@pytest.mark.timeout(40)
def test_terminate_child_under_a_stopped_zygote_returns_within_its_bound():
    node = otpy.Node.from_spec(tree(*(sleeper(f"c{i}") for i in range(3))), name=unique_name("zterm"),
                               on_output=lambda *_: None).start()
    zygote = 0
    try:
        before = running(node)
        zygote = zygote_of(node)
        os.kill(zygote, signal.SIGSTOP)
        t0 = time.monotonic()
        result = _with_deadline(node.terminate_child, 6, "c2")
        took = time.monotonic() - t0
        assert result.outcome == "ok", result
        assert _with_deadline(node.status, 2).tree.state == "running"
        rest = wait_until(lambda: (now := {c.id: c for c in node.which_children("root")})
                          and all(now[i].state == "running" and now[i].pid not in (None, before[i])
                                  and alive(now[i].pid) for i in ("c0", "c1")) and now,
                          8, "c0 and c1 running again")
        assert rest["c2"].state == "stopped" and not alive(before["c2"])
        print(f"\nterminate_child under a stopped zygote returned in {took:.2f} s")
    finally:
        kill_quietly(zygote)
        node.stop()


# A node in a process of its own (it is SIGKILLed): a daemonizing command child and a sleeper.
NODE = """
import os, sys, time
import otpy
from tests.helpers import SLEEPER, python
setsid = otpy.ChildSpec(id="daemonizer", command=("sh", "-c", sys.argv[3]), ready="notify",
                        env={"PID_FILE": sys.argv[2]})
sleeper = otpy.ChildSpec(id="sleeper", command=python(SLEEPER), ready="notify")
node = otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=(setsid, sleeper)), name=sys.argv[1],
                           on_output=lambda *_: None).start()
print(node.aio.processes._zygote.pid, flush=True)
for line in sys.stdin:  # one line: print the zygote again (after it was replaced)
    print(node.aio.processes._zygote.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_a_setsid_grandchild_dies_with_its_zygote_and_with_its_node(tmp_path):
    pid_file = str(tmp_path / "grandchild")
    env = {**os.environ, "PYTHONPATH": ROOT}
    node = subprocess.Popen([sys.executable, "-c", NODE, unique_name("zsetsid"), pid_file, SETSID_PARENT],
                            env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = second = 0
    try:
        zygote = int(node.stdout.readline())
        first = read_pid(pid_file)
        os.unlink(pid_file)
        os.kill(zygote, signal.SIGKILL)
        assert wait_dead([first], 3.0) == [], "the setsid grandchild outlived its zygote"
        second = read_pid(pid_file)  # the daemonizer was restarted, by a new zygote
        node.stdin.write("again\n")
        node.stdin.flush()
        assert int(node.stdout.readline()) != zygote and alive(second)
        node.kill()
        node.wait(timeout=10)
        # The zygote's sweep reads every process's environment: 10 s bounds a loaded machine's scan, not a guess
        assert wait_dead([second], 10.0) == [], "the setsid grandchild outlived its node"
    finally:
        node.kill()
        node.wait()
        kill_quietly(*(p for p in (first, second) if p))


# A node in a process of its own whose every fd is taken (as a flood of client connections
# would): its child is SIGKILLed 3 times, and restarted each time (from the fd reserve).
OUT_OF_FDS_NODE = """
import os, resource, signal, sys
import otpy
from tests.helpers import SLEEPER, pids, python, wait_until

def fds():  # counted without opening one
    return sum(1 for fd in range(4096) if _is_open(fd))

def _is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False

root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="a", command=python(SLEEPER), ready="notify"),))
node = otpy.Node.from_spec(root, name=sys.argv[1], on_output=lambda *_: None).start()
resource.setrlimit(resource.RLIMIT_NOFILE, (fds() + 30, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
flood = []
while True:
    try:
        flood.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        break
restarted = 0
for _ in range(3):
    old = pids(node)["a"]
    os.kill(old, signal.SIGKILL)
    try:
        wait_until(lambda: (pid := pids(node).get("a")) and pid != old, 5, "a restarted")
    except AssertionError:
        break
    restarted += 1
state = node.status().tree.state
for fd in flood:
    os.close(fd)
print(restarted, state, flush=True)
node.stop()
"""


@pytest.mark.timeout(60)
def test_a_node_out_of_fds_still_restarts_its_children():
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", OUT_OF_FDS_NODE, unique_name("zfds")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["3", "running"], (out.stdout, out.stderr[-3000:])
