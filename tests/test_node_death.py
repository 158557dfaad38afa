"""The node dies (``kill -9`` of ``otpy start``): nothing it started survives, and the next
start of the same node stops whatever an earlier run left behind (issue #8, item 2): what
carries that run's tag (OTPY_NODE_RUN), recorded in the node's lock file, and nothing else."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import otpy
from otpy.host.runtime_dir import runtime_root
from tests.helpers import alive, unique_name, wait_dead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OtpyStart:
    """``python -m otpy start FILE`` with its stderr read by a thread, for waiting with deadlines."""

    def __init__(self, topology) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", str(topology)],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if needle in line:
                return line
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no line with {needle!r} within {timeout} s; got {self.seen[-20:]}")

    def descendants(self) -> list[int]:
        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def stop(self, name: str) -> None:
        if self.proc.poll() is None:
            try:
                with otpy.connect(name, timeout=20) as client:
                    client.stop(timeout=20)
            except Exception:
                self.proc.kill()
            self.proc.wait(timeout=20)


def read_pids(path, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.01)
    with open(path) as file:
        return [int(p) for p in file.read().split()]


def topology(tmp_path, name: str, forker: str = "tests.agents:Forker") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[node]
name = "{name}"
[supervisor]
[[supervisor.children]]
id = "cmd"
command = ["sleep", "3600"]
[[supervisor.children]]
id = "forker"
program = "{forker}"
args = {{ pid_file = "{tmp_path / 'grandchild'}" }}
[[supervisor.children]]
id = "deep"
program = "tests.reliability_agents:DeepForker"
args = {{ pid_file = "{tmp_path / 'deep'}" }}
[[supervisor.children]]
id = "team"
type = "supervisor"
  [[supervisor.children.children]]
  id = "echo"
  program = "tests.call_agents:Echo"
""")
    return str(path)


def recorded_run(name: str) -> str:
    """The run id the node recorded in its lock file (``<pid> <run id>``)."""
    return (runtime_root() / name / "node.lock").read_text().split()[1]


def kill_all(pids_) -> None:
    for pid in pids_:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(60)
def test_kill_9_of_the_node_takes_every_descendant_down_within_1_s(tmp_path):
    name = unique_name("death")
    node = OtpyStart(topology(tmp_path, name))
    everyone: list[int] = []
    try:
        node.wait_line("team started pid")
        grand = read_pids(tmp_path / "grandchild") + read_pids(tmp_path / "deep")
        everyone = sorted(set(node.descendants()) | set(grand))
        # zygote + cmd + forker + deep + echo + Forker's grandchild + DeepForker's two
        assert len(everyone) >= 8, everyone
        assert all(alive(p) for p in grand)
        node.kill9()
        left = wait_dead(everyone, 1.0)
        assert left == [], f"alive 1 s after kill -9 of the node: {[(p, psutil.Process(p).cmdline()) for p in left]}"
    finally:
        node.proc.kill()
        node.proc.wait(timeout=5)
        kill_all(everyone)


@pytest.mark.timeout(90)
def test_starting_again_stops_what_a_dead_run_left_and_starts_cleanly(tmp_path):
    name = unique_name("again")
    first = OtpyStart(topology(tmp_path, name))
    second = leftover = other = None
    first_run: list[int] = []
    try:
        first.wait_line("team started pid")
        first_run = first.descendants() + read_pids(tmp_path / "grandchild") + read_pids(tmp_path / "deep")
        run = recorded_run(name)
        first.kill9()
        # The dead run's zygote sweeps its run as it dies: the leftover comes after that.
        assert wait_dead(first_run, 5.0) == [], "the dead run's processes outlived it"
        (tmp_path / "grandchild").unlink()
        (tmp_path / "deep").unlink()
        # A leftover of the dead run: carries its run tag, in its own session, not a descendant
        # of the next run. And a process that only names the node (no run tag): spared.
        leftover = subprocess.Popen(["sleep", "3600"], env={**os.environ, "OTPY_NODE_RUN": run},
                                    start_new_session=True)
        other = subprocess.Popen(["sleep", "3600"], env={**os.environ, "OTPY_NODE": name},
                                 start_new_session=True)
        second = OtpyStart(topology(tmp_path, name))
        line = second.wait_line(f"stopped pid {leftover.pid} left by an earlier run")
        assert name in line
        assert leftover.wait(timeout=5) == -signal.SIGKILL
        second.wait_line("team started pid")
        with otpy.connect(name, timeout=20) as client:
            tree = client.status().tree
            assert tree.state == "running"
            assert [c.state for c in tree.children] == ["running"] * 4
        assert other.poll() is None, "a process without the dead run's tag was killed"
        assert wait_dead(first_run, 1.0) == [], "something of the dead run survived the new start"
        assert alive(read_pids(tmp_path / "grandchild")[0])
    finally:
        if second is not None:
            second.stop(name)
        first.proc.kill()
        first.proc.wait(timeout=5)
        kill_all(first_run)
        for proc in (leftover, other):
            if proc is not None:
                proc.kill()
                proc.wait(timeout=5)
