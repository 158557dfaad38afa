"""A reload's edge cases, end to end (docs/reload.md): a child removed while its group waits
for a delayed restart, a change to a child that is not running, a run-time child with a
replica's id, a child moved to another supervisor."""

from __future__ import annotations

import os
import signal
import sys

import pytest

import otpy
from otpy.specs.model import ChildSpec
from otpy.topology.load import load_topology
from tests.helpers import SLEEPER, pids, unique_name, wait_dead, wait_until
from tests.test_reload import sleeper, topology

pytestmark = pytest.mark.timeout(90)
SLEEPER_COMMAND = (sys.executable, "-c", SLEEPER)


@pytest.fixture
def make_node(tmp_path):
    """``make_node(text)``: write the topology, start a node from it; stopped at the end."""
    started = []

    def make(text: str):
        path = tmp_path / "topology.toml"
        path.write_text(text)
        node = otpy.Node(load_topology(path).node).start()
        started.append(node)
        return node, path

    yield make
    for node in started:
        node.stop()


def group(strategy: str, *children: str) -> str:
    text = f'strategy = "{strategy}"\n'
    for child in children:
        text += "  [[supervisor.children.children]]\n" + child
    return text


@pytest.mark.parametrize("strategy, held", [("one_for_all", ["a", "c"]), ("rest_for_one", ["c"])])
def test_removing_a_child_waiting_for_its_delayed_restart_starts_its_group(make_node, strategy, held):
    name = unique_name("edges")
    kids = [sleeper("a", indent="  "), sleeper("b", "  restart_delay = 60.0\n", indent="  "), sleeper("c", indent="  ")]
    node, path = make_node(topology(name, team=group(strategy, *kids)))
    before = pids(node, "team")
    os.kill(before["b"], signal.SIGKILL)
    wait_until(lambda: all(pids(node, "team")[i] is None for i in held), timeout=10, what="the group stopped, waiting")
    path.write_text(topology(name, team=group(strategy, kids[0], kids[2])))
    result = node.reload(str(path))
    assert result.ok and [(c.action, c.child) for c in result.changes] == [("stop", "b")], result
    def started_again():
        now = pids(node, "team")
        return now if all(now[i] for i in held) else None

    now = wait_until(started_again, timeout=10, what="the bystanders started once b was removed")
    assert list(now) == ["a", "c"]
    assert all(now[i] != before[i] for i in held)


def test_a_run_time_child_with_a_replica_id_is_never_taken_over_by_a_reload(make_node):
    name = unique_name("edges")
    template = "  [supervisor.children.templates.w]\n" + sleeper("w", indent="  ").split("\n", 1)[1]
    node, path = make_node(topology(name, pool=template))  # w keeps no replicas: w-3 is a free id
    assert node.start_child("pool", ChildSpec(id="w-3", command=SLEEPER_COMMAND, ready="notify")).ok
    before = pids(node, "pool")
    for replicas in (4, 2):  # w-3 would be replaced (4), or removed as above the count (2)
        path.write_text(topology(name, pool=template + f"  replicas = {replicas}\n"))
        for dry_run in (True, False):
            refused = node.reload(str(path), dry_run=dry_run)
            assert refused.outcome == "invalid" and refused.changes == [], refused
            assert "'w-3'" in refused.detail and "terminate-child w-3" in refused.detail, refused.detail
    assert pids(node, "pool") == before  # the operator's w-3 runs on; no replica started


def test_a_run_time_child_cannot_take_a_replica_id_of_a_template_that_keeps_replicas(make_node):
    name = unique_name("edges")
    pool = "  [supervisor.children.templates.w]\n" + sleeper("w", "  replicas = 2\n", indent="  ").split("\n", 1)[1]
    node, _ = make_node(topology(name, pool=pool))
    refused = node.start_child("pool", ChildSpec(id="w-3", command=SLEEPER_COMMAND))
    assert refused.outcome == "invalid" and "choose another id" in refused.detail, refused
    assert node.start_child("pool", ChildSpec(id="w-extra", command=SLEEPER_COMMAND, ready="notify")).ok


def test_a_child_moved_to_another_supervisor_is_stopped_then_started_there(make_node):
    name = unique_name("edges")
    team = 'strategy = "one_for_one"\n  [[supervisor.children.children]]\n' + sleeper("x", indent="  ")
    node, path = make_node(topology(name, sleeper("a"), team=team))
    old_x = pids(node, "team")["x"]
    path.write_text(topology(name, sleeper("a"), sleeper("x"), team='strategy = "one_for_one"\n'))
    plan = node.reload(str(path), dry_run=True)
    result = node.reload(str(path))
    assert result.ok, result  # was: "id 'x' is already used in this node (under 'team')"
    expected = [("stop", "team", "x"), ("start", "root", "x")]  # break, then make: the one gap
    assert [(c.action, c.supervisor, c.child) for c in result.changes] == expected
    assert [(c.action, c.supervisor, c.child) for c in plan.changes] == expected
    assert "x" not in pids(node, "team") and pids(node)["x"] not in (None, old_x)
    assert wait_dead([old_x], 10) == []
    assert node.reload(str(path)).changes == []


def test_a_new_spec_for_a_child_not_running_is_reported_not_no_changes(make_node):
    name = unique_name("edges")
    node, path = make_node(topology(name, sleeper("a"), sleeper("b")))
    assert node.terminate_child("a").ok
    path.write_text(topology(name, sleeper("a", 'env = { E = "2" }\n'), sleeper("b")))
    plan = node.reload(str(path), dry_run=True)
    result = node.reload(str(path))
    for outcome in (plan, result):
        assert outcome.ok and [(c.action, c.supervisor, c.child) for c in outcome.changes] == [
            ("update", "root", "a")], outcome
    assert (result.changes[0].before, result.changes[0].after) == ({"env": {}}, {"env": {"E": "2"}})
    assert node.reload(str(path)).changes == []  # adopted: the same file again is no change


def test_a_replaced_command_child_shows_its_command_not_none(make_node):
    name = unique_name("edges")
    node, path = make_node(topology(name, sleeper("c")))
    path.write_text(topology(name, sleeper("c").replace('"-c"', '"-u", "-c"')))
    [change] = node.reload(str(path)).changes
    assert change.action == "reconfigure" and "-c" in change.before and "-u -c" in change.after, change


def test_a_symlink_in_another_folder_is_refused_saying_its_own_folder_counts(make_node, tmp_path):
    name = unique_name("edges")
    node, path = make_node(topology(name, sleeper("a")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = elsewhere / "link.toml"
    link.symlink_to(path)
    refused = node.reload(str(link))
    assert refused.outcome == "invalid" and "symlink its own folder, not its target's" in refused.detail, refused


def test_an_update_line_names_the_child_and_shows_lists_as_json():
    """Before: ``update root: command ['sleep', '3600'] -> ['sleep', '3603']``: no child, Python's list repr."""
    from otpy.cli.reload import reload_line
    from otpy.wire.protocol import Change

    line = reload_line(Change(action="update", supervisor="root", child="x",
                              before={"command": ["sleep", "3600"]}, after={"command": ["sleep", "3603"]}))
    assert line == 'update root/x: command ["sleep", "3600"] -> ["sleep", "3603"]'
    assert reload_line(Change(action="update", supervisor="team", before={"max_restarts": 3},
                              after={"max_restarts": 5})) == "update team: max_restarts 3 -> 5"
