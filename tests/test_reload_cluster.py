"""A reload and ``[cluster]`` (finding advA-5): a ``[cluster]`` added, changed or removed is a
change a reload applies in place (the node's ``cluster`` and the ``cluster.json`` its agents'
``Caller`` reads) and reports (``--dry-run``, ``--json``); nothing of the tree is replaced."""

from __future__ import annotations

import shutil

import pytest

import otpy
from otpy.cli.reload import reload_line
from otpy.topology.load import load_topology
from otpy.wire.calls import Caller, node_cluster
from otpy.wire.errors import NoSuchAgent, RemoteError
from tests.helpers import pids, unique_name
from tests.test_cross_node_calls import client_keys, start_node, agent

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    """Another node on 127.0.0.1 with an ``echo`` agent, and a client keys folder for it."""
    node, endpoint = start_node("b", agent("echo", "Echo"))
    node.endpoint = endpoint
    node.keys = client_keys(tmp_path_factory.mktemp("keys") / "b", node.name)
    yield node
    node.stop()


def topology(name: str, cluster: bool) -> str:
    return (f'[node]\nname = "{name}"\n\n' + ('[cluster]\nfile = "cluster.toml"\n\n' if cluster else "")
            + '[supervisor]\n\n[[supervisor.children]]\nid = "relay"\nprogram = "tests.call_agents:CallsOther"\n')


def test_a_reload_adds_changes_and_removes_the_cluster_in_place(b, tmp_path):
    shutil.copytree(b.keys, tmp_path / "keys-b")
    shutil.copytree(b.keys, tmp_path / "keys-b2")
    (tmp_path / "cluster.toml").write_text(f'[nodes.{b.name}]\nendpoint = "{b.endpoint}"\nkeys = "keys-b"\n')
    name = unique_name("a")
    path = tmp_path / "topology.toml"
    path.write_text(topology(name, cluster=False))
    with otpy.Node.from_toml(path) as node:
        before = pids(node)
        assert node_cluster(name) is None
        path.write_text(topology(name, cluster=True))
        declared = load_topology(path).cluster
        after = {"source": declared.source,
                 "nodes": {b.name: {"endpoint": b.endpoint, "keys": str(tmp_path / "keys-b")}}}

        plan = node.reload(str(path), dry_run=True)
        assert plan.ok and [(c.action, c.name, c.before, c.after) for c in plan.changes] == [
            ("update", "[cluster]", None, after)]
        assert node_cluster(name) is None and node.aio.cluster is None  # a dry run changes nothing

        done = node.reload(str(path))
        assert done.ok and [(c.action, c.name, c.before, c.after) for c in done.changes] == [
            ("update", "[cluster]", None, after)]
        assert node.aio.cluster == declared and node_cluster(name) == declared
        assert reload_line(done.changes[0]) == \
            f"update [cluster]: none -> {b.name} {b.endpoint} (from {declared.source})"
        with Caller(name) as caller:  # an agent of the node reaches AGENT@NODE now
            answer = caller.call("relay", {"target": f"echo@{b.name}", "x": 1}, timeout=10)
        assert answer["answer"]["x"] == 1
        assert node.reload(str(path)).changes == []  # the node runs that cluster now

        # the cluster file alone changes (the topology file is the same): still a change
        (tmp_path / "cluster.toml").write_text(f'[nodes.{b.name}]\nendpoint = "{b.endpoint}"\nkeys = "keys-b2"\n')
        moved = node.reload(str(path))
        assert moved.ok and len(moved.changes) == 1
        assert reload_line(moved.changes[0]) == \
            f"update [cluster]: {b.name} keys {tmp_path / 'keys-b'} -> {tmp_path / 'keys-b2'}"
        assert node_cluster(name).nodes[b.name].keys == str(tmp_path / "keys-b2")

        path.write_text(topology(name, cluster=False))
        removed = node.reload(str(path))
        assert removed.ok and [(c.name, c.after) for c in removed.changes] == [("[cluster]", None)]
        assert node.aio.cluster is None and node_cluster(name) is None
        with Caller(name) as caller, pytest.raises(NoSuchAgent, match="runs without a \\[cluster\\]"):
            caller.call(f"echo@{b.name}", {})
        assert pids(node) == before  # a cluster change replaces nothing in the tree


def test_cluster_lines():
    from otpy.cli.reload import cluster_line

    one = {"source": "c.toml", "nodes": {"b": {"endpoint": "tcp://h:1", "keys": "/k"}}}
    two = {"source": "c.toml", "nodes": {"b": {"endpoint": "tcp://h:2", "keys": "/k"},
                                         "c": {"endpoint": "tcp://h:3", "keys": "/k"}}}
    assert cluster_line(one, two) == "b endpoint tcp://h:1 -> tcp://h:2, c added (tcp://h:3)"
    assert cluster_line(two, one) == "b endpoint tcp://h:2 -> tcp://h:1, c removed"
    assert cluster_line(one, None) == "b tcp://h:1 (from c.toml) -> none"


def test_a_cluster_file_that_cannot_be_written_fails_the_reload_before_the_tree(b, tmp_path):
    from otpy.host.runtime_dir import node_dir
    from otpy.wire.remote_cluster import CLUSTER_FILE

    shutil.copytree(b.keys, tmp_path / "keys-b")
    (tmp_path / "cluster.toml").write_text(f'[nodes.{b.name}]\nendpoint = "{b.endpoint}"\nkeys = "keys-b"\n')
    name = unique_name("a")
    path = tmp_path / "topology.toml"
    path.write_text(topology(name, cluster=False))
    with otpy.Node.from_toml(path) as node:
        (node_dir(name) / (CLUSTER_FILE + ".new")).mkdir()  # in the way of the file staged there
        path.write_text(topology(name, cluster=True).replace('id = "relay"', 'id = "relay2"'))
        failed = node.reload(str(path))
        assert failed.outcome == "start_failed" and "[cluster]" in failed.detail and failed.changes == [], failed
        assert node.aio.cluster is None and node_cluster(name) is None
        assert list(pids(node)) == ["relay"]  # the tree was not touched either


def test_a_running_caller_follows_the_cluster_a_reload_writes(b, tmp_path):
    """An agent's Caller made before the reload (the relay's, kept across calls) reads the
    node's cluster file again when it changed: removed, AGENT@NODE is no longer reachable."""
    shutil.copytree(b.keys, tmp_path / "keys-b")
    (tmp_path / "cluster.toml").write_text(f'[nodes.{b.name}]\nendpoint = "{b.endpoint}"\nkeys = "keys-b"\n')
    name = unique_name("a")
    path = tmp_path / "topology.toml"
    path.write_text(topology(name, cluster=True))
    with otpy.Node.from_toml(path) as node, Caller(name) as caller:
        assert caller.call("relay", {"target": f"echo@{b.name}", "x": 1}, timeout=10)["answer"]["x"] == 1
        assert caller.call(f"echo@{b.name}", {"x": 2}, timeout=10)["x"] == 2
        path.write_text(topology(name, cluster=False))
        assert node.reload(str(path)).ok
        with pytest.raises(RemoteError, match="runs without a \\[cluster\\]"):
            caller.call("relay", {"target": f"echo@{b.name}"}, timeout=10)
        with pytest.raises(NoSuchAgent, match="runs without a \\[cluster\\]"):
            caller.call(f"echo@{b.name}", {}, timeout=10)
        path.write_text(topology(name, cluster=True))
        assert node.reload(str(path)).ok  # and back: the same callers reach it again
        assert caller.call("relay", {"target": f"echo@{b.name}", "x": 3}, timeout=10)["answer"]["x"] == 3
        assert caller.call(f"echo@{b.name}", {"x": 4}, timeout=10)["x"] == 4
