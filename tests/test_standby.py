"""Hot standby (``ChildSpec.standby``): a program child's spare processes, set up ahead, take over
at a restart (no fork, no setup), are made again in the background, follow code edits and
variable changes, are reported in which_children, and never outlive the child or the node."""

from __future__ import annotations

import logging
import os
import signal
import textwrap

import psutil
import pytest

import otpy
from otpy.cli.status_view import render_status, status_json, status_text
from otpy.specs.values import value_problems
from otpy.topology.load import parse_topology
from tests.helpers import Events, rewrite, unique_name, wait_dead, wait_until

pytestmark = pytest.mark.timeout(60)

PROGRAM = textwrap.dedent("""
    import os, stat
    from otpy.agent.program import Program

    def standby():
        return stat.S_ISSOCK(os.fstat(3).st_mode)  # a standby's fd 3 is a socket pair, a child's a pipe

    class Counted(Program):
        def setup(self, args, config):
            with open(os.environ["STANDBY_LOG"], "a") as f:
                f.write(f"setup {os.getpid()} {config.get('knob')}\\n")
            if args.get("fail_in_standby") and standby():
                raise RuntimeError("no standby for this one")
            if args.get("slow_standby") and standby():
                import time
                time.sleep(args["slow_standby"])
            self.config = dict(config)

        def forward(self, **inputs):
            return {"pid": os.getpid(), "version": "VERSION", "config": self.config}

    class Hooked(Counted):
        def on_config(self, config):
            self.config = dict(config)
            with open(os.environ["STANDBY_LOG"], "a") as f:
                f.write(f"config {os.getpid()} {config.get('knob')}\\n")

    class Refuser(Counted):  # refuses new values while it is a standby (its state is not the child's)
        def on_config(self, config):
            if standby():
                from otpy import ConfigRefused
                raise ConfigRefused("not in a standby")
            self.config = dict(config)

    class Lazy(Counted):  # imports a module of its own in setup(), not in the zygote
        def setup(self, args, config):
            super().setup(args, config)
            import lazy_module
            self.lazy = lazy_module.V

        def forward(self, **inputs):
            return {**super().forward(), "lazy": self.lazy}
""")


@pytest.fixture
def folder(tmp_path):
    rewrite(tmp_path / "standby_program.py", PROGRAM.replace("VERSION", "v1"))
    return tmp_path


def start(folder, **spec) -> otpy.Node:
    child = otpy.ChildSpec(id="a", program=spec.pop("program", "standby_program:Counted"), standby=1,
                           env={"STANDBY_LOG": str(folder / "log")}, **spec)
    root = otpy.SupervisorSpec(id="root", max_restarts=10, max_seconds=5, children=(child,))
    return otpy.Node(otpy.NodeSpec(name=unique_name("standby"), root=root, program_folders=(str(folder),)),
                     on_output=lambda *_: None)


def info(node: otpy.Node) -> otpy.ChildInfo:
    [child] = node.which_children("root")
    return child


def standbys(node: otpy.Node, id: str = "a") -> list[int]:
    """The pids titled ``otpy: NODE/ID standby``."""
    title = f"otpy: {node.name}/{id} standby"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] and " ".join(proc.info["cmdline"]).strip() == title:
            found.append(proc.pid)
    return found


def one_standby(node: otpy.Node, not_pid: int | None = None) -> int:
    """The child's one standby, once it is ready (and is not ``not_pid``)."""
    def ready():
        pids = standbys(node)
        return len(pids) == 1 and pids[0] != not_pid and info(node).standby == 1 and pids[0]
    return wait_until(ready, 20, "a ready standby")


def ask(node: otpy.Node) -> dict:
    """Call ``a`` once more if the call went to the incarnation just killed: the caller's
    connection to it may not have seen its end yet when a standby already holds the name
    (a take-over is that fast); the call is idempotent."""
    return node.call("a", retries=1)


def setups(folder) -> list[tuple[str, int, str]]:
    path = folder / "log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(word, int(pid), knob) for word, pid, knob in (line.split() for line in lines)]


def kill_and_wait(node: otpy.Node, events: Events) -> int:
    old = info(node).pid
    os.kill(old, signal.SIGKILL)
    started = events.wait("started", "a", timeout=20)
    assert started["pid"] != old
    return started["pid"]


def test_a_standby_takes_over_at_a_restart_and_a_new_one_is_made(folder):
    with start(folder) as node:
        events = Events(node)
        spare = one_standby(node)
        shown = info(node)
        assert shown.standby == 1 and shown.standby_mib > 0
        report = status_json(node.status())  # otpy status --json, and its table
        [entry] = [e for e in report["tree"]["children"] if e["id"] == "a"]
        assert entry["standby"] == 1 and entry["standby_mib"] > 0
        assert "standby 1 (" in render_status(report)
        assert "standby" not in report["tree"]  # the root has none: its document is as it was
        new = kill_and_wait(node, events)
        assert new == spare  # the standby is the child now
        assert ask(node)["pid"] == spare
        assert psutil.Process(spare).cmdline()[0].strip() == f"otpy: {node.name}/a"
        again = one_standby(node, not_pid=spare)
        assert again != spare and info(node).standby == 1


def test_the_take_over_needs_no_word_from_the_zygote(folder):
    """The node sees the death itself (a pidfd) and hands the name over itself (it checks the
    sources and renames the socket): a stopped zygote delays neither. (Under 1.5 s: the zygote
    is not yet taken for stuck by its heartbeat.)"""
    with start(folder) as node:
        events = Events(node)
        spare = one_standby(node)
        child, zygote = info(node).pid, node.aio.processes._zygote.pid
        os.kill(zygote, signal.SIGSTOP)
        try:
            os.kill(child, signal.SIGKILL)
            started = events.wait("started", "a", timeout=1.5)
        finally:
            os.kill(zygote, signal.SIGCONT)
        assert started["pid"] == spare
        assert "SIGKILL" in events.wait("exited", "a")["detail"]
        assert ask(node)["pid"] == spare


def test_a_zygote_death_takes_its_standbys_and_new_ones_are_made(folder):
    with start(folder) as node:
        events = Events(node)
        spare = one_standby(node)
        child = info(node).pid
        os.kill(node.aio.processes._zygote.pid, signal.SIGKILL)
        assert "lost" in events.wait("exited", "a", timeout=20)["detail"]
        new = events.wait("started", "a", timeout=20)["pid"]
        assert new not in (child, spare) and wait_dead([spare], 10) == []
        assert one_standby(node, not_pid=spare) != new


def test_the_promoted_child_ran_setup_before_the_kill(folder):
    with start(folder) as node:
        events = Events(node)
        spare = one_standby(node)
        before = setups(folder)
        assert ("setup", spare, "None") in before  # its setup ran ahead
        new = kill_and_wait(node, events)
        assert new == spare and ask(node)["pid"] == spare
        one_standby(node, not_pid=spare)  # the refill's setup is the only new one
        after = setups(folder)
        assert [pid for _, pid, _ in after].count(spare) == 1
        assert len(after) == len(before) + 1


def test_an_edited_program_is_not_served_by_its_standby(folder):
    with start(folder) as node:
        events = Events(node)
        spare = one_standby(node)
        assert ask(node)["version"] == "v1"
        rewrite(folder / "standby_program.py", PROGRAM.replace("VERSION", "v2"))
        new = kill_and_wait(node, events)
        assert new != spare  # it refused: its code is out of date
        assert ask(node)["version"] == "v2"
        assert wait_dead([spare], 10) == []
        one_standby(node, not_pid=spare)


def test_a_standby_that_lists_no_sources_is_asked_and_checks_its_code_itself(folder):
    """So many source files that the STANDBY line cannot list them: the node asks (GO), the
    standby checks its code, renames its socket and says READY; after an edit it refuses."""
    package = folder / "many"
    package.mkdir()
    (package / "__init__.py").write_text("")
    names = [f"module_with_a_long_name_so_that_the_list_is_long_{i:04d}" for i in range(600)]
    for name in names:
        (package / f"{name}.py").write_text("X = 1\n")
    rewrite(folder / "standby_program.py", PROGRAM.replace("VERSION", "v1").replace(
        "import os, stat", "import os, stat\n" + "\n".join(f"import many.{n}" for n in names)))
    with start(folder) as node:
        events = Events(node)
        spare = one_standby(node)
        assert node.aio.processes.standbys._by_id["a"][0].sources is None  # no list: GO
        assert kill_and_wait(node, events) == spare and ask(node)["pid"] == spare
        spare = one_standby(node, not_pid=spare)
        rewrite(package / f"{names[0]}.py", "X = 2\n")
        new = kill_and_wait(node, events)
        assert new != spare and wait_dead([spare], 10) == []  # it refused: STALE


def test_a_standby_without_setup_success_leaves_one_warning_and_the_child_restarts(folder, caplog):
    caplog.set_level(logging.WARNING, logger="otpy")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "hot standby" in r.getMessage()]

    with start(folder, args={"fail_in_standby": True}) as node:
        events = Events(node)
        wait_until(lambda: warnings(), 20, "the standby's warning")
        pool = node.aio.processes.standbys
        wait_until(lambda: not pool._refills, 10, "the refill to end")  # no retry: no loop
        assert len(warnings()) == 1 and "no standby for this one" in warnings()[0]
        assert info(node).standby == 0 and standbys(node) == []
        first = info(node).pid
        new = kill_and_wait(node, events)  # the ordinary way, not charged to anything but the child
        assert new != first and ask(node)["pid"] == new
        wait_until(lambda: len(warnings()) == 2, 20, "the next start's one try")
        wait_until(lambda: not pool._refills, 10, "the refill to end")
        assert len([s for s in setups(folder) if s[1] != first and s[1] != new]) == 2  # two tries in all


def test_terminate_delete_and_node_stop_leave_no_standby(folder):
    node = start(folder).start()
    try:
        events = Events(node)
        spare = one_standby(node)
        assert node.terminate_child("a", "root").ok
        assert wait_dead([spare], 10) == []
        assert info(node).standby == 0
        assert node.restart_child("a", "root").ok
        events.wait("started", "a")
        spare = one_standby(node)
        assert node.terminate_child("a", "root").ok
        assert node.delete_child("a", "root").ok
        assert wait_dead([spare], 10) == []
        root = otpy.ChildSpec(id="b", program="standby_program:Counted", standby=2,
                              env={"STANDBY_LOG": str(folder / "log")})
        assert node.start_child("root", root).ok
        two = wait_until(lambda: len(pids := standbys(node, "b")) == 2 and pids, 20, "two standbys")
    finally:
        node.stop()
    assert wait_dead(two, 10) == []


def test_a_child_stopped_while_its_standby_sets_up_leaves_nothing(folder):
    """A standby is titled ``otpy: NODE/ID standby`` from before its setup (so that a
    ``pkill -f "otpy: NODE/ID$"`` meant for the child spares it)."""
    with start(folder, args={"slow_standby": 30}) as node:
        child = info(node).pid
        setting_up = wait_until(lambda: standbys(node), 20, "its standby, in setup")
        assert info(node).standby == 0  # it has not said STANDBY: still in setup
        assert psutil.Process(setting_up[0]).name() == "a"
        assert node.terminate_child("a", "root").ok
        assert wait_dead([child, *setting_up], 10) == []
        assert info(node).standby == 0


def test_a_reconfigured_child_does_not_take_the_old_specs_standby(folder):
    with start(folder) as node:
        events = Events(node)
        spare = one_standby(node)
        target = otpy.ChildSpec(id="a", program="standby_program:Counted", standby=1, args={"x": 1},
                                env={"STANDBY_LOG": str(folder / "log")})
        assert node.reconfigure("root", "a", target).ok
        events.wait("started", "a")
        assert info(node).pid != spare
        assert wait_dead([spare], 10) == []  # made for the old spec: retired
        one_standby(node, not_pid=spare)


VARIABLES_TOML = """
[node]
name = "{name}"

[supervisor]
max_restarts = 10
max_seconds = 5

[[supervisor.children]]
id = "a"
program = "standby_program:{program}"
standby = 1
env = {{ STANDBY_LOG = "{log}" }}

[variables.a]
knob = {{ type = "integer", low = 0, high = 100, default = 1 }}
"""


@pytest.mark.parametrize("program", ["Hooked", "Counted"])
def test_a_variable_changed_while_the_standby_waits_reaches_the_promoted_child(folder, program):
    path = folder / "topology.toml"
    path.write_text(VARIABLES_TOML.format(name=unique_name("standby-vars"), program=program, log=folder / "log"))
    with otpy.Node.from_toml(path, on_output=lambda *_: None) as node:
        spare = wait_until(lambda: len(p := standbys(node)) == 1 and child_of(node).standby == 1 and p[0],
                           20, "a standby")
        assert ask(node)["config"] == {"knob": 1}
        assert node.set_variables("a", {"knob": 7}).ok
        wait_until(lambda: ask(node)["config"] == {"knob": 7}, 10, "the running child's new values")
        child = child_of(node).pid
        if program == "Hooked":  # its on_config ran in the standby
            wait_until(lambda: ("config", spare, "7") in setups(folder), 10, "the standby's on_config")
        else:  # no on_config: the standby left, and a new one resolved the new values at its setup
            spare = wait_until(lambda: len(p := standbys(node)) == 1 and p[0] not in (spare, child)
                               and ("setup", p[0], "7") in setups(folder) and p[0], 20, "a new standby")
        events = Events(node)
        os.kill(child, signal.SIGKILL)
        assert events.wait("started", "a", timeout=20)["pid"] == spare
        assert ask(node)["config"] == {"knob": 7}


def child_of(node: otpy.Node, id: str = "a") -> otpy.ChildInfo:
    return next(c for c in node.which_children("root") if c.id == id)


def test_a_child_ending_for_new_values_is_not_restarted_on_a_standby_with_the_old_ones(folder):
    """The standby has not heard of the change yet (stopped here): the child's exit for new
    values (75) makes it resolve again before it could take over; it leaves, and the restart
    goes the ordinary way, once, with the new values."""
    path = folder / "topology.toml"
    path.write_text(VARIABLES_TOML.format(name=unique_name("standby-75"), program="Counted", log=folder / "log"))
    with otpy.Node.from_toml(path, on_output=lambda *_: None) as node:
        spare = wait_until(lambda: len(p := standbys(node)) == 1 and child_of(node).standby == 1 and p[0],
                           20, "a standby")
        events = Events(node)
        os.kill(spare, signal.SIGSTOP)
        try:  # straight to the registry: no write of the node's waits for anyone
            assert node.call("registry", {"op": "set", "scope": "a", "name": "knob", "value": 7})["ok"]
            assert "75" in events.wait("exited", "a", timeout=20)["detail"]
        finally:
            os.kill(spare, signal.SIGCONT)
        started = events.wait("started", "a", timeout=20)
        assert started["pid"] != spare
        assert ask(node)["config"] == {"knob": 7}
        assert wait_dead([spare], 10) == []
        assert [e["kind"] for e in events.drain() if e["child"] == "a"] == ["exited", "restarting", "started"]


WAITER = textwrap.dedent("""
    import os, sys, threading, types
    from pathlib import Path
    from otpy.agent.shutdown import Shutdown
    from otpy.agent.standby_wait import StandbyWait

    os.dup2(int(sys.argv[1]), 3)
    warm = types.SimpleNamespace(path=Path("/nonexistent/.spare.sock"), forget=lambda: None)
    server = types.SimpleNamespace(context=None)
    program = types.SimpleNamespace(teardown=lambda: print("teardown", flush=True))
    wait = StandbyWait(program, server, warm, Shutdown(), node="n", child_id="a", stale=lambda: "")
    wait.retire_soon("changed: its configuration")
    wait.until_promoted()
""")


def test_a_standby_that_asks_to_retire_waits_for_the_node_to_retire_it():
    """RETIRE is a request: the standby still answers (here a SYNC) until the node's EOF, so a
    TAKEN the node sent before it read the RETIRE is never met by a quiet exit."""
    import socket
    import subprocess
    import sys

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen([sys.executable, "-c", WAITER, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                            stdout=subprocess.PIPE, text=True)
    theirs.close()
    try:
        lines = ours.makefile("rwb", buffering=0)
        assert lines.readline() == b"STANDBY\n"
        assert lines.readline() == b"RETIRE changed: its configuration\n"
        lines.write(b"SYNC\n")
        assert lines.readline() == b"SYNCED unchanged\n"  # still there, waiting for its retirement
        ours.shutdown(socket.SHUT_WR)  # EOF: retired
        assert proc.wait(10) == 0 and proc.stdout.read() == "teardown\n"
    finally:
        proc.kill()
        proc.wait()
        ours.close()


def test_status_text_shows_the_standbys():
    entry = {"id": "a", "kind": "worker", "state": "running", "pid": 1, "restarts": 0, "standby": 1,
             "standby_mib": 2.94, "status_line": ""}
    assert status_text(entry) == "standby 1 (2.9 MiB)"
    assert status_text({**entry, "status_line": "warm"}) == "warm; standby 1 (2.9 MiB)"
    assert status_text({**entry, "standby": 0}) == ""


def test_spec_rules():
    command = otpy.ChildSpec(id="c", command=("true",), standby=1)
    assert any(p.field == "standby" for p in value_problems(command))
    assert any(p.field == "standby" for p in value_problems(otpy.ChildSpec(id="p", program="m:P", standby=9)))
    assert not value_problems(otpy.ChildSpec(id="p", program="m:P", standby=8))
    topology = parse_topology('[node]\nname = "n"\n[[supervisor.children]]\nid = "a"\nprogram = "m:P"\nstandby = 1\n')
    assert topology.node.root.children[0].standby == 1


def test_a_dead_standby_is_not_promoted_and_one_kill_is_one_restart(folder):
    """The zygote (stopped here) has not reported the standby's death yet when the child dies:
    the node asks the kernel (pidfd, ``/proc``), drops the dead standby and forks. One death,
    one restart (as ``pkill -9 -f "otpy: NODE/ID"`` killing both must cost)."""
    with start(folder) as node:
        events = Events(node)
        spare = one_standby(node)
        child, zygote = info(node).pid, node.aio.processes._zygote.pid
        pool = node.aio.processes.standbys
        os.kill(zygote, signal.SIGSTOP)
        try:
            os.kill(spare, signal.SIGKILL)
            wait_until(lambda: psutil.Process(spare).status() == psutil.STATUS_ZOMBIE, 1, "the standby dead")
            os.kill(child, signal.SIGKILL)
            events.wait("exited", "a", timeout=1)
            wait_until(lambda: all(s.child.pid != spare for s in pool._by_id.get("a", ())), 1, "the restart's choice")
        finally:
            os.kill(zygote, signal.SIGCONT)
        new = events.wait("started", "a", timeout=20)["pid"]
        assert new not in (child, spare)
        assert ask(node)["pid"] == new
        one_standby(node, not_pid=spare)
        assert [e["kind"] for e in events.drain() if e["child"] == "a"] == ["exited", "restarting", "started"]
        assert info(node).restarts == 1


def test_a_stopped_standby_is_not_promoted(folder):
    with start(folder) as node:
        events = Events(node)
        spare = one_standby(node)
        os.kill(spare, signal.SIGSTOP)
        new = kill_and_wait(node, events)
        assert new != spare and ask(node)["pid"] == new
        assert wait_dead([spare], 10) == []  # killed
        one_standby(node, not_pid=spare)


def test_a_dead_standbys_spare_socket_file_is_removed(folder):
    from otpy.agent.call_socket import spare_socket_path

    with start(folder) as node:
        spare = one_standby(node)
        path = spare_socket_path(node.name, spare)
        assert path.exists()
        os.kill(spare, signal.SIGKILL)
        wait_until(lambda: not path.exists(), 10, "the dead standby's socket file removed")


@pytest.mark.timeout(20)  # a stopped standby held the write 30 s
def test_a_stopped_standby_does_not_hold_a_variable_write(folder):
    path = folder / "topology.toml"
    path.write_text(VARIABLES_TOML.format(name=unique_name("standby-stop"), program="Hooked", log=folder / "log"))
    with otpy.Node.from_toml(path, on_output=lambda *_: None) as node:
        spare = wait_until(lambda: len(p := standbys(node)) == 1 and child_of(node).standby == 1 and p[0],
                           20, "a standby")
        os.kill(spare, signal.SIGSTOP)
        assert node.set_variables("a", {"knob": 7}).ok
        assert wait_dead([spare], 10) == []  # it could not resolve them: killed
        new = wait_until(lambda: len(p := standbys(node)) == 1 and p[0] != spare and child_of(node).standby == 1
                         and p[0], 20, "a new standby")
        events = Events(node)
        os.kill(child_of(node).pid, signal.SIGKILL)
        assert events.wait("started", "a", timeout=20)["pid"] == new
        assert ask(node)["config"] == {"knob": 7}


def test_a_standby_that_refuses_new_values_is_replaced(folder):
    """``on_config`` refused the new values in the standby (the child took them): the standby
    goes and one made with the stored values takes over at the restart."""
    path = folder / "topology.toml"
    path.write_text(VARIABLES_TOML.format(name=unique_name("standby-refuse"), program="Refuser", log=folder / "log"))
    with otpy.Node.from_toml(path, on_output=lambda *_: None) as node:
        spare = wait_until(lambda: len(p := standbys(node)) == 1 and child_of(node).standby == 1 and p[0],
                           20, "a standby")
        assert node.set_variables("a", {"knob": 7}).ok
        assert ask(node)["config"] == {"knob": 7}  # the child took them
        assert wait_dead([spare], 10) == []
        new = wait_until(lambda: len(p := standbys(node)) == 1 and p[0] != spare and child_of(node).standby == 1
                         and p[0], 20, "a new standby")
        events = Events(node)
        os.kill(child_of(node).pid, signal.SIGKILL)
        assert events.wait("started", "a", timeout=20)["pid"] == new
        assert ask(node)["config"] == {"knob": 7}


def lazy_module(folder, value: int, unseen: bool = False) -> None:
    """``lazy_module.py`` (imported by ``Lazy.setup``), its time set well in the past (a file
    edited after a standby's start is never taken for up to date, see ``processes.sources``);
    ``unseen``: its time kept as it was (with the same size, an edit no ``stat`` shows)."""
    path = folder / "lazy_module.py"
    before = os.stat(path).st_mtime_ns if path.exists() else None
    path.write_text(f"V = {value}\n")
    if unseen:
        stamp = before
        for cached in (folder / "__pycache__").glob("lazy_module.*"):  # Python's own check is stat's too
            cached.unlink()
    else:
        stamp = before + 1_000_000_000 if before else os.stat(path).st_mtime_ns - 60_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_a_module_imported_in_setup_is_checked_at_the_take_over(folder):
    lazy_module(folder, 1)
    with start(folder, program="standby_program:Lazy") as node:
        events = Events(node)
        spare = one_standby(node)
        assert kill_and_wait(node, events) == spare  # unchanged: it takes over
        assert ask(node)["lazy"] == 1
        spare = one_standby(node, not_pid=spare)
        lazy_module(folder, 22)
        new = kill_and_wait(node, events)
        assert new != spare and ask(node)["lazy"] == 22
        assert wait_dead([spare], 10) == []


def test_reload_code_does_not_promote_a_standby_made_from_the_old_code(folder):
    lazy_module(folder, 1)
    path = folder / "topology.toml"
    path.write_text(VARIABLES_TOML.split("[variables")[0].format(
        name=unique_name("standby-code"), program="Lazy", log=folder / "log"))
    with otpy.Node.from_toml(path, on_output=lambda *_: None) as node:
        spare = wait_until(lambda: len(p := standbys(node)) == 1 and child_of(node).standby == 1 and p[0],
                           20, "a standby")
        assert ask(node)["lazy"] == 1
        lazy_module(folder, 2, unseen=True)  # reload --code serves the disk's code even so
        assert node.reload(str(path), code=True).ok
        # the old child may still answer a call already on its connection while it drains
        # (make-before-break); a standby of the old code would answer 1 for ever
        wait_until(lambda: ask(node)["lazy"] == 2, 10, "the disk's code served")
        assert wait_dead([spare], 10) == []
        wait_until(lambda: len(p := standbys(node)) == 1 and p[0] != spare and child_of(node).standby == 1,
                   20, "a new standby")


def test_a_reload_that_changes_only_standby_keeps_the_child(folder):
    path = folder / "topology.toml"
    toml = VARIABLES_TOML.split("[variables")[0]
    path.write_text(toml.format(name=unique_name("standby-count"), program="Counted", log=folder / "log"))
    with otpy.Node.from_toml(path, on_output=lambda *_: None) as node:
        wait_until(lambda: child_of(node).standby == 1, 20, "a standby")
        child = child_of(node).pid
        path.write_text(path.read_text().replace("standby = 1", "standby = 2"))
        result = node.reload(str(path))
        assert result.ok and [c.action for c in result.changes] == ["update"]
        wait_until(lambda: child_of(node).standby == 2, 20, "two standbys")
        assert child_of(node).pid == child
        two = standbys(node)
        path.write_text(path.read_text().replace("standby = 2", "standby = 0"))
        assert node.reload(str(path)).ok
        assert wait_dead(two, 10) == [] and child_of(node).pid == child and child_of(node).standby == 0
        events = Events(node)
        os.kill(child, signal.SIGKILL)  # restarted from the new spec: no standby made
        events.wait("started", "a", timeout=20)
        assert child_of(node).standby == 0 and standbys(node) == []


def test_the_kernels_word_on_a_standby():
    import subprocess
    import types

    from otpy.processes.linux import proc_stat
    from otpy.processes.standby_checks import unusable

    proc = subprocess.Popen(["sleep", "60"])
    try:
        child = types.SimpleNamespace(pid=proc.pid, start_time=proc_stat(proc.pid).start_time)
        assert unusable(child) == ""
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED, 10, "stopped")
        assert unusable(child) == "stopped"
        assert unusable(types.SimpleNamespace(pid=proc.pid, start_time=child.start_time + 1)) == "gone"  # a reused pid
        os.kill(proc.pid, signal.SIGKILL)
        wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE, 10, "a zombie")
        assert unusable(child) == "dead"
    finally:
        proc.kill()
        proc.wait()
    assert unusable(child) == "gone"


TEMPLATE_TOML = """
[node]
name = "{name}"

[[supervisor.children]]
id = "dyn"
type = "dynamic_supervisor"
  [supervisor.children.templates.w]
  program = "standby_program:Counted"
  standby = 1
  replicas = 1
  env = {{ STANDBY_LOG = "{log}" }}
"""


def test_a_reload_that_changes_only_a_templates_standby_keeps_its_replicas(folder):
    path = folder / "topology.toml"
    path.write_text(TEMPLATE_TOML.format(name=unique_name("standby-tpl"), log=folder / "log"))
    with otpy.Node.from_toml(path, on_output=lambda *_: None) as node:
        def replica() -> otpy.ChildInfo:
            return next(c for c in node.which_children("dyn") if c.id == "w-1")

        wait_until(lambda: replica().standby == 1, 20, "a standby")
        child = replica().pid
        path.write_text(path.read_text().replace("standby = 1", "standby = 2"))
        result = node.reload(str(path))
        assert result.ok and [c.action for c in result.changes] == ["update"]
        wait_until(lambda: replica().standby == 2, 20, "two standbys")
        assert replica().pid == child


def test_a_reconfigure_that_changes_only_standby_keeps_the_child(folder):
    """As a reload does: the running child is kept and its hot standbys go or come to the count
    (before, ``reconfigure`` replaced the child, make-before-break, for a change of standby)."""
    import msgspec

    path = folder / "topology.toml"
    toml = VARIABLES_TOML.split("[variables")[0]
    path.write_text(toml.format(name=unique_name("standby-reconf"), program="Counted", log=folder / "log"))
    with otpy.Node.from_toml(path, on_output=lambda *_: None) as node:
        wait_until(lambda: child_of(node).standby == 1, 20, "a standby")
        child = child_of(node).pid
        from otpy.topology.load import load_topology
        declared = next(c for c in load_topology(str(path)).node.root.children if c.id == "a")
        result = node.reconfigure("root", "a", msgspec.structs.replace(declared, standby=2))
        assert result.ok and result.pid == child
        wait_until(lambda: child_of(node).standby == 2 and len(standbys(node)) == 2, 20, "two standbys")
        assert child_of(node).pid == child
        assert node.reconfigure("root", "a", msgspec.structs.replace(declared, standby=0)).ok
        wait_until(lambda: standbys(node) == [] and child_of(node).standby == 0, 20, "no standby")
        assert child_of(node).pid == child
