"""An edited program is picked up: a program child started or restarted after its source (or
a helper it imports) changed on disk runs the new code, from a new zygote generation; a
restart of unchanged code stays on the running zygote (the fast path); the old zygote keeps
its children and exits after the last one."""

from __future__ import annotations

import os
import signal
import textwrap

import psutil
import pytest

import otpy
from tests.helpers import Events, rewrite, unique_name, wait_dead, wait_until

pytestmark = pytest.mark.timeout(90)

PROGRAM = textwrap.dedent("""
    from otpy.agent.program import Program
    import versioned_helper

    class Versioned(Program):
        def forward(self, **inputs):
            return {"version": "VERSION", "helper": versioned_helper.HELPER, "pid": __import__("os").getpid()}
""")


@pytest.fixture
def folder(tmp_path):
    rewrite(tmp_path / "versioned_program.py", PROGRAM.replace("VERSION", "v1"))
    rewrite(tmp_path / "versioned_helper.py", 'HELPER = "h1"\n')
    return tmp_path


@pytest.fixture
def node(folder):
    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="edited", program="versioned_program:Versioned"),
        otpy.DynamicSupervisorSpec(id="pool"),
    ))
    spec = otpy.NodeSpec(name=unique_name("codegen"), root=root, program_folders=(str(folder),))
    node = otpy.Node(spec, on_output=lambda *_: None).start()
    yield node
    node.stop()


def zygote_of(node: otpy.Node) -> int:
    return node.aio.processes._zygote.pid


def pid_of(node: otpy.Node, id: str, sup: str = "root") -> int:
    [child] = [c for c in node.which_children(sup) if c.id == id]
    return child.pid


def kill_and_wait_restart(node: otpy.Node, events: Events, id: str) -> int:
    old = pid_of(node, id)
    os.kill(old, signal.SIGKILL)
    events.wait("started", id, timeout=20)
    return wait_until(lambda: (pid := pid_of(node, id)) not in (None, old) and pid, 10, "restarted")


def test_a_restart_after_an_edit_runs_the_new_code_from_a_new_zygote(node, folder):
    events = Events(node)
    assert node.call("edited", {})["version"] == "v1"
    first_zygote = zygote_of(node)
    kill_and_wait_restart(node, events, "edited")  # nothing changed: the same zygote, fast
    assert zygote_of(node) == first_zygote and node.call("edited", {})["version"] == "v1"

    rewrite(folder / "versioned_program.py", PROGRAM.replace("VERSION", "v2"))
    kill_and_wait_restart(node, events, "edited")
    assert node.call("edited", {})["version"] == "v2"
    second_zygote = zygote_of(node)
    assert second_zygote != first_zygote
    assert wait_dead([first_zygote], 10) == []  # its last child is gone: it retired
    assert psutil.Process(node.aio.processes._zygote.pid).ppid() == os.getpid()

    kill_and_wait_restart(node, events, "edited")  # unchanged since: the new zygote's fast path
    assert zygote_of(node) == second_zygote and node.call("edited", {})["version"] == "v2"


def test_an_edited_helper_counts_too(node, folder):
    events = Events(node)
    assert node.call("edited", {})["helper"] == "h1"
    rewrite(folder / "versioned_helper.py", 'HELPER = "h2"\n')
    kill_and_wait_restart(node, events, "edited")
    assert node.call("edited", {})["helper"] == "h2"


def test_a_new_child_after_an_edit_runs_the_new_code_and_the_old_zygote_keeps_its_child(node, folder):
    first_zygote = zygote_of(node)
    old_child = pid_of(node, "edited")
    rewrite(folder / "versioned_program.py", PROGRAM.replace("VERSION", "v2"))
    result = node.start_child("pool", otpy.ChildSpec(id="fresh", program="versioned_program:Versioned"))
    assert result.ok, result
    assert node.call("fresh", {})["version"] == "v2"
    assert zygote_of(node) != first_zygote
    # the old generation still serves its child: alive, answering, its zygote there
    assert node.call("edited", {})["version"] == "v1" and node.call("edited", {})["pid"] == old_child
    assert psutil.Process(old_child).ppid() == first_zygote
    # its exit is still seen (reaped and reported by the old zygote), and then the old zygote goes
    assert node.terminate_child("edited", "root").ok
    assert wait_dead([old_child, first_zygote], 10) == []
    assert [c.state for c in node.which_children("root") if c.id == "edited"] == ["stopped"]
    assert node.restart_child("edited", "root").ok
    assert node.call("edited", {})["version"] == "v2"


def test_killing_an_old_zygote_loses_only_its_own_children(node, folder):
    events = Events(node)
    first_zygote = zygote_of(node)
    old_child = pid_of(node, "edited")
    rewrite(folder / "versioned_program.py", PROGRAM.replace("VERSION", "v2"))
    assert node.start_child("pool", otpy.ChildSpec(id="fresh", program="versioned_program:Versioned")).ok
    fresh = pid_of(node, "fresh", "pool")
    os.kill(first_zygote, signal.SIGKILL)
    events.wait("exited", "edited", timeout=10)
    assert wait_dead([old_child], 10) == []
    restarted = wait_until(lambda: (pid := pid_of(node, "edited")) not in (None, old_child) and pid, 10, "restarted")
    assert node.call("edited", {})["version"] == "v2" and restarted
    assert pid_of(node, "fresh", "pool") == fresh and node.call("fresh", {})["pid"] == fresh


def test_nothing_of_any_generation_outlives_the_node(folder):
    root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="edited", program="versioned_program:Versioned"),
                                                    otpy.DynamicSupervisorSpec(id="pool")))
    node = otpy.Node(otpy.NodeSpec(name=unique_name("codegen-end"), root=root, program_folders=(str(folder),)),
                     on_output=lambda *_: None).start()
    try:
        first_zygote, old_child = zygote_of(node), pid_of(node, "edited")
        rewrite(folder / "versioned_program.py", PROGRAM.replace("VERSION", "v2"))
        assert node.start_child("pool", otpy.ChildSpec(id="fresh", program="versioned_program:Versioned")).ok
        everyone = [first_zygote, old_child, zygote_of(node), pid_of(node, "fresh", "pool")]
        assert len(set(everyone)) == 4
    finally:
        node.stop()
    assert wait_dead(everyone, 10) == []
