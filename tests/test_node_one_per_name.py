"""Hardening of the node's life (issue "Hardening"): one node per name and runtime folder (the
node's lock), stale nodes found dead at once, a restart sweeping only the dead run, refused
runtime folders and names as one-line errors, private log and lock files, the fd limit."""

from __future__ import annotations

import asyncio
import os
import queue
import resource
import select
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

import otpy
from otpy.wire.client import NodeStale
from otpy.node.node import NodeAlreadyRunning
from otpy.host.log_files import default_log_dir
from otpy.host.runtime_dir import runtime_root
from otpy.specs.model import name_problem
from tests.helpers import alive, is_zygote, sleeper, unique_name, wait_dead, wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)

# A command child that leaves a grandchild in its own session (no parent-death signal, not in
# the child's group): only the run tag (OTPY_NODE_RUN) still ties it to the node's run.
SETSID_PARENT = (
    "import os, subprocess, sys, time\n"
    "p = subprocess.Popen(['sleep', '3600'], start_new_session=True)\n"
    "with open(sys.argv[1] + '.tmp', 'w') as f: f.write(str(p.pid))\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "while True: time.sleep(3600)\n"
)


def topology(tmp_path: Path, name: str) -> Path:
    script = tmp_path / "setsid_parent.py"
    script.write_text(SETSID_PARENT)
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[node]
name = "{name}"
[supervisor]
[[supervisor.children]]
id = "cmd"
command = ["sleep", "3600"]
[[supervisor.children]]
id = "parent"
command = ["{sys.executable}", "{script}", "{tmp_path / 'grandchild'}"]
""")
    return path


def otpy_cli(*args: str, env: dict | None = None, timeout: float = 20, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kw)


class Foreground:
    """``otpy start FILE`` in the foreground; its stderr read by a thread, waited on with deadlines."""

    def __init__(self, path: Path, env: dict | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", str(path)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(x.rstrip("\n")) for x in self.proc.stderr],
                         daemon=True).start()

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

    def tree(self) -> list[int]:
        """The node process and every descendant (zygote, children)."""
        return [self.proc.pid, *(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))]

    def zygote(self) -> int:
        return zygotes_of(self.proc.pid)[0]

    def end(self) -> None:
        """Stop in order if it still runs (SIGTERM: Ctrl-C's path), else just reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_at_once(pids) -> None:
    """SIGKILL ``pids`` as one event: each is stopped first, so none runs between the kills. Killed
    one after the other, the first one's death could be acted on by the next (the zygote's
    parent-death SIGTERM makes it kill its whole run) before its own SIGKILL arrives."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def started(tmp_path: Path, name: str, env: dict | None = None) -> Foreground:
    """A foreground node, once its children are up and ``parent`` has made its grandchild."""
    node = Foreground(topology(tmp_path, name), env)
    node.wait_line("parent started pid")
    wait_until(lambda: grandchild_pid(tmp_path), what="the grandchild's pid file")
    return node


def grandchild_pid(tmp_path: Path) -> int | None:
    path = tmp_path / "grandchild"
    return int(path.read_text()) if path.exists() else None


def zygotes_of(pid: int) -> list[int]:
    found = []
    for proc in psutil.Process(pid).children():
        try:
            if is_zygote(proc):
                found.append(proc.pid)
        except psutil.Error:  # a zombie of another test
            continue
    return found


# --- one node per name ----------------------------------------------------------------------


def test_a_second_start_foreground_or_detached_is_refused_and_the_first_is_untouched(tmp_path):
    name = unique_name("twice")
    first = started(tmp_path, name)
    try:
        before = sorted(first.tree())
        assert len(before) >= 4  # node, zygote, cmd, parent
        refused = "node %r is already running (pid %d)" % (name, first.proc.pid)

        again = otpy_cli("start", str(topology(tmp_path, name)))
        assert again.returncode == 1, again.stderr
        assert refused in again.stderr

        detached = otpy_cli("start", str(topology(tmp_path, name)), "--detach")
        assert detached.returncode == 1, detached.stderr
        assert refused in detached.stderr

        assert sorted(first.tree()) == before and all(alive(p) for p in before)
        with otpy.connect(name) as client:
            assert client.status().pid == first.proc.pid
    finally:
        first.end()


def test_an_embedded_second_start_raises_and_the_first_runs_on():
    name = unique_name("embed")
    spec = otpy.SupervisorSpec(id="root", children=(sleeper("a"),))
    with otpy.Node.from_spec(spec, name=name) as first:
        pid = first.which_children()[0].pid
        watcher = events_watcher(name, "a")
        pid = first.which_children()[0].pid
        with pytest.raises(NodeAlreadyRunning, match=f"node '{name}' is already running \\(pid {os.getpid()}\\)"):
            otpy.Node.from_spec(spec, name=name).start()
        assert first.which_children()[0].pid == pid and alive(pid)
        with otpy.connect(name) as client:
            assert client.status().pid == os.getpid()
    try:  # a node that stops ends `otpy events` with 0
        assert watcher.wait(5) == 0 and f"node {name!r} stopped" in watcher.stderr.read()
    finally:
        watcher.kill()
        watcher.communicate()


def test_a_node_of_the_same_name_in_another_runtime_folder_runs_beside_untouched(tmp_path):
    name = unique_name("beside")
    spec = otpy.SupervisorSpec(id="root", children=(sleeper("a"),))
    with otpy.Node.from_spec(spec, name=name) as here, tempfile.TemporaryDirectory(prefix="otpy-other-") as other:
        zygote = zygotes_of(os.getpid())[-1]
        child = here.which_children()[0].pid
        there = started(tmp_path, name, env={"OTPY_RUNTIME_DIR": other})
        try:
            assert there.proc.poll() is None
            assert alive(zygote) and alive(child) and here.which_children()[0].pid == child
            with otpy.connect(name) as client:
                assert client.status().pid == os.getpid()
        finally:
            there.end()
        assert there.proc.returncode == 0
        assert alive(child) and alive(zygote)


# --- a dead node ------------------------------------------------------------------------------


def test_a_killed_node_is_found_stale_at_once_and_stop_cleans_its_folder(tmp_path):
    name = unique_name("stale")
    node = started(tmp_path, name)
    everyone = node.tree()
    watcher = events_watcher(name)
    try:
        node.proc.kill()
        node.proc.wait(5)
        message = f"node {name!r} is not running (stale: its process died)"
        assert watcher.wait(5) == 1 and message in watcher.stderr.read()  # it was watching: 0.5 s
        folder = runtime_root() / name
        assert (folder / "control.sock").exists() and (folder / "node.lock").exists()

        for command in (["status"], ["events"], ["call", "greeter"], ["vars", "get", "global.x"]):
            began = time.monotonic()
            done = otpy_cli(*command, "--node", name, timeout=15)
            took = time.monotonic() - began
            expected = 3 if command == ["status"] else 1  # status: not running, as systemctl status
            assert done.returncode == expected and message in done.stderr, (command, done.stderr)
            assert took < 5, f"otpy {command[0]} of a stale node took {took:.2f} s"  # the CLI's start included

        began = time.monotonic()
        with pytest.raises(NodeStale, match="stale: its process died"):
            otpy.connect(name)
        with otpy.Client(name) as client, pytest.raises(NodeStale):
            client.status()
        asyncio.run(_async_status_is_stale(name))
        assert time.monotonic() - began < 1.0
        assert issubclass(NodeStale, otpy.NodeNotFound)

        stopped = otpy_cli("stop", "--node", name, timeout=15)
        assert stopped.returncode == 0 and message in stopped.stdout, stopped.stderr
        assert not any((folder / f).exists() for f in ("control.sock", "events.sock", "node.lock", "agents"))
        gone = otpy_cli("status", "--node", name)
        assert gone.returncode == 3 and f"no node {name!r}" in gone.stderr  # status: not running
    finally:
        kill_all(everyone)
        watcher.kill()
        watcher.communicate()


def events_watcher(name: str, child: str = "cmd") -> subprocess.Popen:
    """``otpy events`` of the node, subscribed: its first line is printed once it hears events."""
    watcher = subprocess.Popen([sys.executable, "-m", "otpy", "events", "--node", name], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with otpy.connect(name) as client:  # events flow until the subscription is up
        deadline = time.monotonic() + 15
        while not select.select([watcher.stdout], [], [], 0.2)[0]:
            assert time.monotonic() < deadline and watcher.poll() is None, "otpy events printed nothing"
            client.terminate_child(child)
            client.restart_child(child)
    return watcher


async def _async_status_is_stale(name: str) -> None:
    async with otpy.AsyncClient(name) as client:
        with pytest.raises(NodeStale):
            await client.status()


def test_a_restart_kills_what_the_dead_run_left_and_nothing_else(tmp_path):
    name = unique_name("sweep")
    first = started(tmp_path, name)
    spared: list[subprocess.Popen] = []
    everyone = first.tree()
    grandchild = grandchild_pid(tmp_path)
    second = None
    try:
        # The node and its zygote die at once: nobody of the run can clean up after it.
        zygote = first.zygote()
        kill_at_once([first.proc.pid, zygote])
        first.proc.wait(5)
        assert wait_dead([zygote], 5) == []
        assert alive(grandchild), "the setsid grandchild should outlive its run (that is what the sweep is for)"
        (tmp_path / "grandchild").unlink()
        # Spared: same node name, another run tag; and same name in another runtime folder.
        for env in ({"OTPY_NODE": name, "OTPY_NODE_RUN": "another-run"},
                    {"OTPY_NODE": name, "OTPY_RUNTIME_DIR": str(tmp_path)}):
            spared.append(subprocess.Popen(["sleep", "3600"], env={**os.environ, **env}, start_new_session=True))

        second = started(tmp_path, name)
        assert f"stopped pid {grandchild} left by an earlier run" in second.wait_line(f"pid {grandchild}")
        assert wait_dead([grandchild], 2) == []
        assert all(p.poll() is None for p in spared), "a process of no dead run was killed"
        assert alive(grandchild_pid(tmp_path))  # the new run's own grandchild
    finally:
        if second is not None:
            second.end()
        kill_all([*everyone, grandchild])
        for proc in spared:
            proc.kill()
            proc.wait(5)


# --- refused folders and names ----------------------------------------------------------------


def test_a_symlinked_runtime_folder_is_a_one_line_error_from_every_command(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    env = {"OTPY_RUNTIME_DIR": str(link)}
    for args in (["status", "--node", "x"], ["stop", "--node", "x"], ["events", "--node", "x"], ["nodes"],
                 ["start", str(topology(tmp_path, "x"))], ["start", str(topology(tmp_path, "x")), "--detach"]):
        done = otpy_cli(*args, env=env)
        assert done.returncode in (1, 2), (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and str(link) in lines[0] and "remove it" in lines[0], (args, done.stderr)
    assert not any(real.iterdir()), "something was made through the symlink"
    afile = tmp_path / "afile"
    afile.touch()
    done = otpy_cli("status", "--node", "x", env={"OTPY_RUNTIME_DIR": str(afile)})
    assert done.returncode == 1 and f"{afile} is not a folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_symlinked_node_folder_is_refused_by_clients(tmp_path):
    with tempfile.TemporaryDirectory(prefix="otpy-rt-") as runtime:
        os.chmod(runtime, 0o700)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        (elsewhere / "control.sock").touch()
        (Path(runtime) / "n").symlink_to(elsewhere)
        done = otpy_cli("status", "--node", "n", env={"OTPY_RUNTIME_DIR": runtime})
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
        assert f"{runtime}/n is a symlink" in done.stderr


def test_an_invalid_node_name_is_refused_before_any_path_is_built():
    for command in ("status", "stop", "events", "terminate-child"):
        args = [command, "--node", "../x"] + (["a"] if command == "terminate-child" else [])
        done = otpy_cli(*args)
        assert done.returncode == 2, (command, done.stderr)
        assert name_problem("../x", "node name") in done.stderr and "Traceback" not in done.stderr
    for args in (["call", "a"], ["vars", "get", "g.x"]):  # commands of other modules: through pick_node
        done = otpy_cli(*args, "--node", "../x")
        assert done.returncode in (1, 2), (args, done.stderr)
        assert name_problem("../x", "node name") in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(ValueError, match="node name '../x'"):
        otpy.connect("../x")


def test_start_from_template_checks_the_child_id_before_anything():
    template = otpy.ChildSpec(id="t", command=("sleep", "3600"))
    pool = otpy.DynamicSupervisorSpec(id="pool", templates={"sleepy": template})
    name = unique_name("tmpl")
    with otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=(pool,)), name=name) as node:
        control = runtime_root() / name / "control.sock"
        inode = control.stat().st_ino
        result = node.start_from_template("pool", "sleepy", "../control")
        assert (result.outcome, result.detail) == ("invalid", name_problem("../control"))
        assert node.which_children("pool") == []
        assert control.stat().st_ino == inode
        for args in ({"n": 2 ** 64}, ["not", "a", "table"]):  # the caller's args: checked like any spec
            refused = node.start_from_template("pool", "sleepy", "ok", args)
            assert refused.outcome == "invalid" and "child 'ok': args" in refused.detail, refused
        assert node.start_from_template("pool", "nope", "ok").outcome == "not_found"
        with otpy.connect(name) as client:
            assert client.start_from_template("pool", "sleepy", "../control").outcome == "invalid"
            assert client.status().pid == os.getpid()


# --- files and limits -----------------------------------------------------------------------------


def test_node_log_and_lock_are_private_whatever_the_umask(tmp_path):
    name = unique_name("umask")
    done = otpy_cli("start", str(topology(tmp_path, name)), "--detach", preexec_fn=lambda: os.umask(0))
    try:
        assert done.returncode == 0, done.stderr
        folder = runtime_root() / name
        logs = default_log_dir(name)  # the durable log folder (#14), not the runtime folder
        assert stat.S_IMODE((logs / "node.log").stat().st_mode) == 0o600
        assert stat.S_IMODE(logs.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / "node.lock").stat().st_mode) == 0o600
    finally:
        with otpy.connect(name) as client:
            pid = client.status().pid
            client.stop(timeout=20)
        assert wait_dead([pid], 10) == []


def test_the_soft_open_files_limit_is_raised_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"hard limit {hard}: nothing to raise to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        with otpy.Node.from_spec(otpy.SupervisorSpec(id="root"), name=unique_name("nofile")):
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
