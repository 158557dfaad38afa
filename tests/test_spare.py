"""The zygote's spare: a child forked ahead, detached and warmed up, that takes the next
program start. A child started through it must be indistinguishable from one forked on
request, and the spare itself must never be mistaken for a child, an orphan, or be left."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

import otpy
from otpy.agent.bootstrap import SPARE_NAME
from tests.helpers import alive, unique_name, wait_dead, wait_until

pytestmark = pytest.mark.timeout(60)

FDS = "tests.spare_agents:Fds"


@pytest.fixture
def node():
    root = otpy.SupervisorSpec(id="root", children=(otpy.DynamicSupervisorSpec(id="pool"),))
    node = otpy.Node.from_spec(root, name=unique_name("spare")).start()
    yield node
    node.stop()


def zygote(node: otpy.Node) -> psutil.Process:
    [z] = [p for p in psutil.Process().children() if _node_of(p) == node.name]
    return z


def _node_of(proc: psutil.Process) -> str | None:
    """A child's OTPY_NODE; None for a zombie another test's subprocess left (no environment)."""
    try:
        return proc.environ().get("OTPY_NODE")
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return None


def spares(node: otpy.Node) -> list[int]:
    found = []
    for child in zygote(node).children():
        try:
            if child.name() == SPARE_NAME:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def the_spare(node: otpy.Node) -> int:
    return wait_until(lambda: (s := spares(node)) and len(s) == 1 and s[0], what="one spare")


def start(node: otpy.Node, id: str, program: str = FDS, **fields) -> int:
    result = node.start_child("pool", otpy.ChildSpec(id=id, program=program, **fields))
    assert result.ok, result
    return result.pid


def test_a_child_from_the_spare_is_like_one_forked_on_request(node, tmp_path):
    forked = start(node, "forked")  # the program's first start: its import, then a fork
    spare = the_spare(node)
    warm = start(node, "warm", cwd=str(tmp_path), env={"SPARE_TEST": "yes"})
    assert warm == spare != forked
    a, b = node.call("forked", {}), node.call("warm", {})
    assert (a["pid"], b["pid"]) == (forked, warm)
    assert a["low"] == b["low"] == {"0": "/dev/null", "1": "pipe", "2": "pipe", "3": "pipe"}
    assert a["high"] == b["high"]  # the same kinds of fds above 3: ZeroMQ's and the worker's
    assert b["cwd"] == str(tmp_path) and b["env"]["SPARE_TEST"] == "yes"
    assert b["env"]["OTPY_CHILD_ID"] == "warm" and b["env"]["OTPY_INCARNATION"] == str(warm)
    assert psutil.Process(warm).name() != SPARE_NAME
    assert os.getpgid(warm) == warm  # its own process group, like any child


def test_every_program_start_after_the_first_takes_the_spare_and_a_new_one_waits(node):
    start(node, "a")
    for id in "bcd":
        spare = the_spare(node)
        assert start(node, id) == spare
    assert len(spares(node)) <= 1


def test_a_spare_killed_while_it_waits_is_not_a_child_and_starts_still_work(node):
    start(node, "a")
    spare = the_spare(node)
    events = []
    node.aio.listeners.append(events.append)
    os.kill(spare, signal.SIGKILL)
    assert wait_dead([spare], 5) == []
    pid = start(node, "b")
    assert pid != spare and node.call("b", {})["pid"] == pid
    assert not [e for e in events if e.pid == spare]  # never reported: it was no child
    zombies = [c.pid for c in zygote(node).children() if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []
    assert the_spare(node) not in (spare, pid)


def test_a_spare_that_predates_a_new_program_import_is_retired(node):
    start(node, "a")
    stale = the_spare(node)
    pid = start(node, "e", program="tests.call_agents:Echo")  # a module the spare lacks
    assert pid != stale
    assert wait_dead([stale], 5) == []
    assert not alive(stale)
    assert node.call("e", {"x": 1})["x"] == 1
    assert the_spare(node) != stale


def test_the_spare_survives_the_reaping_of_a_dead_child(node):
    pid = start(node, "a")
    spare = the_spare(node)
    node.terminate_child("a", "pool")  # a reap: the zygote then looks for orphans
    assert wait_dead([pid], 5) == []
    assert alive(spare) and spares(node) == [spare]
    assert start(node, "b") == spare


def test_the_spare_dies_with_the_node(tmp_path):
    root = otpy.SupervisorSpec(id="root", children=(otpy.DynamicSupervisorSpec(id="pool"),))
    node = otpy.Node.from_spec(root, name=unique_name("spare-stop")).start()
    try:
        start(node, "a")
        spare = the_spare(node)
    finally:
        node.stop()
    assert wait_dead([spare], 5) == []
