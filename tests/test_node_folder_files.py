"""Hardening of the files in a node's folder (second round): the lock is the folder's, so the
record ``node.lock`` may be deleted, replaced, copied or planted as something else without
fooling anyone; files the node writes are private and never followed through a symlink; no
socket file outlives the node that bound it."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import otpy
from otpy.cli.work import TOPOLOGY_RECORD, record_topology
from otpy.wire.client import node_alive
from otpy.node.node import NodeAlreadyRunning
from otpy.host.node_run import RUN_VAR, RunLock, lock_holder, new_run_id
from otpy.host import runtime_dir as _runtime
from otpy.host.runtime_dir import RuntimeDirError, runtime_root
from tests.helpers import alive, sleeper, unique_name

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)


def otpy_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def spec(*children: otpy.ChildSpec) -> otpy.SupervisorSpec:
    return otpy.SupervisorSpec(id="root", children=children or (sleeper("a"),))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- 1. deleting or replacing the record -------------------------------------------------------


@pytest.mark.parametrize("attack", ["delete", "replace"])
def test_a_deleted_or_replaced_record_fools_nobody(attack, tmp_path):
    name = unique_name("rec")
    with otpy.Node.from_spec(spec(), name=name):
        folder = runtime_root() / name
        record = folder / "node.lock"
        if attack == "delete":
            record.unlink()
        else:
            shutil.copy(record, tmp_path / "copy")
            os.replace(tmp_path / "copy", record)
        assert node_alive(name)
        status = otpy_cli("status", "--node", name)
        assert status.returncode == 0, status.stderr
        with pytest.raises(NodeAlreadyRunning):
            otpy.Node.from_spec(spec(), name=name).start()
        stop = otpy_cli("stop", "--node", name, "--timeout", "1")  # a live node: asked to stop, not swept
        assert "removed its sockets" not in stop.stdout
        assert (folder / "control.sock").exists() or stop.returncode == 0
    assert not node_alive(name)


# --- 2 and 4. something else than a file at node.lock ----------------------------------------


def plant(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "symlink":
        path.symlink_to("/etc/hostname")
    elif kind == "folder":
        path.mkdir()
    else:  # mode 0000
        path.write_text("1 x y\n")
        path.chmod(0)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder", "mode0"])
def test_something_else_at_the_record_is_one_line_naming_it_and_never_a_hang(kind, tmp_path):
    name = unique_name("plant")
    folder = runtime_root() / name
    folder.mkdir(mode=0o700)
    (folder / "control.sock").touch()  # a dead node's folder
    plant(folder / "node.lock", kind)
    topology = tmp_path / "t.toml"
    topology.write_text(f'[node]\nname = "{name}"\n[supervisor]\n[[supervisor.children]]\n'
                        'id = "a"\ncommand = ["sleep", "3600"]\n')
    for args in (["status", "--node", name], ["start", str(topology), "--detach", "--timeout", "5"],
                 ["start", str(topology)], ["stop", "--node", name]):
        done = otpy_cli(*args)
        assert "Traceback" not in done.stderr, (args, done.stderr)
        if kind == "mode0" and os.getuid() == 0:  # root reads and writes it anyway
            continue
        assert done.returncode == (3 if args[0] == "status" else 1), (args, done.stderr)  # status: not running
        if args[0] != "status":  # status of a dead node need not read the record
            assert f"otpy: {folder / 'node.lock'} is " in done.stderr, (args, done.stderr)
        if "--detach" not in args:  # --detach adds the line naming the log the error is in
            assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
    with pytest.raises(otpy.NodeNotFound):  # stale at once, not a hang
        otpy.connect(name)


# --- 3. a record copied from another folder -----------------------------------------------------


def test_a_record_copied_from_another_folder_sweeps_nothing(tmp_path):
    run = new_run_id()
    other = subprocess.Popen(["sleep", "3600"], env={**os.environ, RUN_VAR: run}, start_new_session=True)
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    try:
        for record in (f"{dead_pid()} {run} {there}\n",  # another folder's record
                       f"{other.pid} {run} {here}\n"):  # a live recorded pid
            (here / "node.lock").write_text(record)
            lock = RunLock.take(here, new_run_id())
            assert lock.previous_run is None
            lock.release()
            assert other.poll() is None
        (here / "node.lock").write_text(f"{dead_pid()} {run} {here}\n")  # this folder's dead run
        lock = RunLock.take(here, new_run_id())
        assert lock.previous_run == run
        lock.release()
    finally:
        other.kill()
        other.wait(5)


def test_the_lock_is_the_folder_and_a_probe_agrees(tmp_path):
    lock = RunLock.take(tmp_path, new_run_id())
    try:
        (tmp_path / "node.lock").unlink()
        assert lock_holder(tmp_path) == 0  # held, record gone
    finally:
        lock.release()
    assert lock_holder(tmp_path) is None


# --- 6. files the node writes -------------------------------------------------------------------


def test_the_topology_record_is_private_and_never_written_through_a_symlink(tmp_path):
    name = unique_name("topo")
    folder = runtime_root() / name
    folder.mkdir(mode=0o700)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (folder / TOPOLOGY_RECORD).symlink_to(outside)
    with pytest.raises(RuntimeDirError, match=str(folder / TOPOLOGY_RECORD)):
        record_topology(name, str(tmp_path / "t.toml"))
    assert outside.read_text() == "keep"
    (folder / TOPOLOGY_RECORD).unlink()
    old = os.umask(0)
    try:
        record_topology(name, str(tmp_path / "t.toml"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((folder / TOPOLOGY_RECORD).stat().st_mode) == 0o600
    _runtime.write_private(folder / "x", b"a longer text")
    _runtime.write_private(folder / "x", b"short")
    assert (folder / "x").read_bytes() == b"short"


# --- 9. no socket file outlives its node --------------------------------------------------------


def test_a_stopped_node_leaves_no_socket_and_stale_ones_do_not_fake_a_registry():
    name = unique_name("socks")
    folder = runtime_root() / name
    program = otpy.ChildSpec(id="p", program="tests.agents:Sleeper")
    with otpy.Node.from_spec(spec(program), name=name):
        assert (folder / "agents").is_dir()
    assert not list(folder.rglob("*.sock"))
    (folder / "agents").mkdir(mode=0o700)
    for left in ("agents/registry.sock", "agents/.spare-3.sock", "agents/p.sock", "registry-events.sock"):
        (folder / left).touch()
    with otpy.Node.from_spec(spec(program), name=name) as node:  # no [variables]: no registry to wait for
        child = node.which_children()[0]
        assert child.state == "running" and alive(child.pid)
        assert not (folder / "agents" / "registry.sock").exists()
    assert not list(folder.rglob("*.sock"))


# --- 10. a node is within reach while its tree starts (or fails to) -----------------------------


def stubborn_topology(tmp_path: Path, name: str) -> Path:
    """A child that ignores SIGTERM with a long shutdown, then one that fails to start: the failed
    start stops the first in order, which takes an hour unless killed."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[node]
name = "{name}"
[supervisor]
[[supervisor.children]]
id = "stubborn"
program = "tests.agents:IgnoresTerm"
shutdown = 3600
[[supervisor.children]]
id = "bad"
program = "tests.agents:FailingSetup"
""")
    return path


def test_a_failing_start_is_within_reach_and_signals_end_it(tmp_path):
    from tests.test_node_one_per_name import Foreground

    name = unique_name("stub")
    node = Foreground(stubborn_topology(tmp_path, name))
    try:
        node.wait_line("bad failed to start")
        status = otpy_cli("status", "--node", name, "--json")
        assert status.returncode == 3, status.stderr  # it answers; its tree is still starting (not running)
        assert '"state": "starting"' in status.stdout
        node.proc.send_signal(signal.SIGTERM)  # in order: the stubborn child's shutdown goes on
        node.wait_line("stopping in order once the start ends")
        node.proc.send_signal(signal.SIGTERM)  # the second: at once
        assert node.proc.wait(10) == 1
    finally:
        node.proc.kill()
        node.proc.wait(5)


def test_a_detached_start_honours_its_timeout(tmp_path):
    name = unique_name("stubd")
    began = time.monotonic()
    done = otpy_cli("start", str(stubborn_topology(tmp_path, name)), "--detach", "--timeout", "3", timeout=40)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - began < 20
    assert not node_alive(name)


# --- 7. the CURVE keys stay in the node's folder ------------------------------------------------


def test_curve_keys_are_never_written_or_read_through_a_symlink(tmp_path):
    from otpy.wire.curve import ensure_keys

    name = unique_name("curve")
    folder = runtime_root() / name
    folder.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "curve").symlink_to(elsewhere)
    with pytest.raises(RuntimeDirError, match="symlink"):
        ensure_keys(name)
    assert not list(elsewhere.iterdir())
    (folder / "curve").unlink()
    keys = ensure_keys(name)
    (keys / "server.key_secret").unlink()
    (keys / "server.key_secret").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RuntimeDirError, match="server.key_secret"):
        ensure_keys(name)
    assert not (tmp_path / "nowhere").exists()


# --- 8. ids that make an agent socket path longer than AF_UNIX allows ---------------------------


def long_id(name: str) -> str:
    """An id that passes the name rule (at most 64 characters) and makes the socket path 108 bytes."""
    room = 107 - len(os.fsencode(runtime_root().absolute() / name / "agents" / ".sock"))
    assert 0 < room < 64, "the runtime folder of the tests is too long or too short for this test"
    return "x" * (room + 1)


def test_an_id_too_long_for_its_socket_path_is_invalid_wherever_it_stands():
    name = unique_name("long")
    too_long = long_id(name)
    with pytest.raises(otpy.NodeStartError, match=f"id '{too_long}': its socket .* would be 108 bytes long"):
        otpy.Node.from_spec(spec(sleeper(too_long)), name=name).start()
    dyn = otpy.DynamicSupervisorSpec(id="dyn", templates={"t": sleeper("t")})
    with otpy.Node.from_spec(spec(sleeper("a"), dyn), name=name) as node:
        for result in (node.start_child("root", sleeper(too_long)),
                       node.start_from_template("dyn", "t", too_long),
                       node.reconfigure("root", "a", otpy.SupervisorSpec(id="a", children=(sleeper(too_long),)))):
            assert result.outcome == "invalid" and "expected at most 107" in result.detail, result
        ok = node.start_child("root", sleeper(too_long[:-1]))
        assert ok.outcome == "ok", ok


def test_a_runtime_folder_too_long_is_one_line_at_start(tmp_path):
    """From a file, ``validate``'s check speaks (exit 2); from Python, the node's (NodeStartError)."""
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    path = tmp_path / "t.toml"
    path.write_text('[node]\nname = "n"\n[supervisor]\n[[supervisor.children]]\nid = "a"\ncommand = ["sleep", "9"]\n')
    done = subprocess.run([sys.executable, "-m", "otpy", "start", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=20, env={**os.environ, "OTPY_RUNTIME_DIR": str(deep)})
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
    assert "expected at most 107" in done.stderr
    script = ("import otpy, sys\n"
              "spec = otpy.SupervisorSpec(id='root', children=(otpy.ChildSpec(id='a', command=('sleep', '9')),))\n"
              "try:\n    otpy.Node.from_spec(spec, name='n').start()\n"
              "except otpy.NodeStartError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=20,
                          env={**os.environ, "OTPY_RUNTIME_DIR": str(deep)})
    assert "node 'n': its socket" in done.stdout and "expected at most 107" in done.stdout, done
    assert not (deep / "n").exists()  # refused before any folder was made


# --- 5 and 11. what the command line says ------------------------------------------------------


def test_status_without_a_name_names_the_only_node_when_it_is_stale(tmp_path):
    root = tmp_path / "rt"
    (root / "gone").mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    (root / "gone" / "control.sock").touch()  # its process died: the folder's lock is free
    env = {**os.environ, "OTPY_RUNTIME_DIR": str(root)}
    for args in (["status"], ["stop"]):
        done = subprocess.run([sys.executable, "-m", "otpy", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=20, env=env)
        assert "node 'gone' is not running (stale: its process died)" in done.stdout + done.stderr, done
        assert done.returncode == (3 if args == ["status"] else 0), done  # status: not running
    assert not (root / "gone" / "control.sock").exists()  # stop cleaned it


def test_start_child_with_an_id_that_is_not_a_name_is_an_input_error():
    name = unique_name("cliid")
    with otpy.Node.from_spec(spec(), name=name):
        done = otpy_cli("start-child", "root", "--id", "../x", "--command", "sleep 9", "--node", name)
        assert done.returncode == 2, done.stderr
        assert "id" in done.stderr and "Traceback" not in done.stderr
