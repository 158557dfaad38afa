"""The node's lock (``_node_run.RunLock``): one holder, a record of pid and run, probes that
never make a start fail, and the sweep of a dead node's folder under the lock."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time

import pytest

from otpy.host.node_run import RUN_VAR, AlreadyRunning, RunLock, lock_holder, new_run_id, sweep_dead_run

pytestmark = pytest.mark.timeout(30)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_one_holder_its_record_and_the_previous_run(tmp_path):
    first = RunLock.take(tmp_path, "run-1")
    try:
        path = tmp_path / "node.lock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().split() == [str(os.getpid()), "run-1", os.path.realpath(tmp_path)]
        assert lock_holder(tmp_path) == os.getpid()
        with pytest.raises(AlreadyRunning) as refused:  # another open of the file: another holder
            RunLock.take(tmp_path, "run-2")
        assert refused.value.pid == os.getpid()
    finally:
        first.release()
    assert lock_holder(tmp_path) is None
    second = RunLock.take(tmp_path, "run-2")
    assert second.previous_run == "run-1"
    second.release()
    second.release()  # idempotent


def test_probes_never_make_a_start_fail(tmp_path):
    """A probe holds the lock shared for a moment; a start must not take that for a node."""
    (tmp_path / "node.lock").touch()
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            lock_holder(tmp_path)

    probes = [threading.Thread(target=probe) for _ in range(2)]
    for thread in probes:
        thread.start()
    refused = 0
    try:
        for _ in range(300):
            try:
                RunLock.take(tmp_path, new_run_id()).release()
            except AlreadyRunning:
                refused += 1
    finally:
        stop.set()
        for thread in probes:
            thread.join()
    assert refused == 0


def test_the_sweep_of_a_dead_node_kills_its_run_and_removes_its_sockets_and_lock(tmp_path):
    run = new_run_id()
    (tmp_path / "control.sock").touch()
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "a.sock").touch()
    (tmp_path / "node.log").touch()
    left = subprocess.Popen(["sleep", "3600"], env={**os.environ, RUN_VAR: run}, start_new_session=True)
    other = subprocess.Popen(["sleep", "3600"], env={**os.environ, RUN_VAR: new_run_id()}, start_new_session=True)
    try:
        holder = RunLock.take(tmp_path, new_run_id())
        began = time.monotonic()
        assert sweep_dead_run(tmp_path, [tmp_path / "control.sock", tmp_path / "agents"]) is False
        assert time.monotonic() - began < 1.0
        holder.release()
        assert left.poll() is None and (tmp_path / "control.sock").exists()  # nothing done while held

        (tmp_path / "node.lock").write_text(f"{dead_pid()} {run} {tmp_path}\n")  # the dead run's record
        assert sweep_dead_run(tmp_path, [tmp_path / "control.sock", tmp_path / "agents"]) is True
        assert left.wait(5) == -9
        assert other.poll() is None
        assert sorted(p.name for p in tmp_path.iterdir()) == ["node.log"]
    finally:
        for proc in (left, other):
            proc.kill()
            proc.wait(5)
