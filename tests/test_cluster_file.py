"""The cluster file and the [cluster] table: read into a ClusterSpec, or refused naming the field."""

from __future__ import annotations

import os

import pytest
import zmq.auth

from otpy.topology.cluster import ClusterError, load_cluster
from otpy.topology.load import TopologyError, parse_topology

TOPOLOGY = '[node]\nname = "a"\n\n[supervisor]\n\n[[supervisor.children]]\nid = "w"\ncommand = ["true"]\n'


def keys_folder(path):
    """A client keys folder as ``otpy keys new`` and a copied server.key make it."""
    path.mkdir(mode=0o700, parents=True)
    zmq.auth.create_certificates(path, "server")
    (path / "server.key_secret").unlink()
    zmq.auth.create_certificates(path, "me")
    (path / "me.key").unlink()
    os.chmod(path / "me.key_secret", 0o600)
    return path


def test_a_cluster_file_is_read_with_paths_relative_to_its_folder(tmp_path):
    keys_folder(tmp_path / "keys" / "b")
    (tmp_path / "cluster.toml").write_text('[nodes.b]\nendpoint = "tcp://10.0.0.2:7000"\nkeys = "keys/b"\n')
    spec = load_cluster(tmp_path / "cluster.toml")
    assert spec.source == str(tmp_path / "cluster.toml")
    assert spec.nodes["b"].endpoint == "tcp://10.0.0.2:7000"
    assert spec.nodes["b"].keys == str(tmp_path / "keys" / "b")


@pytest.mark.parametrize("text, expected", [
    ('[nodes.b]\nendpoint = "b:7000"\nkeys = "k"\n', "nodes.b.endpoint: got 'b:7000'; expected tcp://HOST:PORT"),
    ('[nodes.b]\nendpoint = "tcp://h:65535"\nkeys = "k"\n', "nodes.b.endpoint: got 'tcp://h:65535'"),
    ('[nodes.b]\nendpoint = 7000\nkeys = "k"\n', "nodes.b.endpoint: got 7000; expected tcp://HOST:PORT"),
    ('[nodes.b]\nkeys = "k"\n', "nodes.b.endpoint: missing"),
    ('[nodes.b]\nendpoint = "tcp://h:1"\n', "nodes.b.keys: missing"),
    ('[nodes.b]\nendpoint = "tcp://h:1"\nkeys = "k"\nport = 3\n', "nodes.b.port: unknown field"),
    ('[nodes."../etc"]\nendpoint = "tcp://h:1"\nkeys = "k"\n', "nodes.../etc: node name '../etc'"),
    ('[nodes.b]\nendpoint = "tcp://h:1"\nkeys = "nowhere"\n', "nodes.b.keys: "),
    ('[other]\n', "other: unknown table or field"),
    ('nodes = 3\n', "nodes: got 3; expected [nodes.NAME] tables"),
    ('[nodes.b\n', "cluster.toml: "),
])
def test_a_bad_cluster_file_is_refused_naming_the_field(tmp_path, text, expected):
    keys_folder(tmp_path / "k")
    (tmp_path / "cluster.toml").write_text(text)
    with pytest.raises(ClusterError) as raised:
        load_cluster(tmp_path / "cluster.toml")
    assert expected in str(raised.value)
    assert str(raised.value).startswith(str(tmp_path / "cluster.toml"))


def test_a_keys_folder_still_without_the_nodes_key_is_refused_at_the_call_saying_what_to_copy(tmp_path):
    """A node's server.key exists once it started: two nodes whose clusters name each other must
    both load before either has started, so the missing key is the call's problem, not the load's."""
    from otpy.wire.calls import Caller
    from otpy.wire.errors import NodeUnreachable

    (tmp_path / "k").mkdir(mode=0o700)
    (tmp_path / "cluster.toml").write_text('[nodes.b]\nendpoint = "tcp://127.0.0.1:9"\nkeys = "k"\n')
    spec = load_cluster(tmp_path / "cluster.toml")
    with Caller("a", cluster=spec) as caller:
        with pytest.raises(NodeUnreachable, match="node 'b' of .*cluster.toml: .* has no server.key"):
            caller.call("echo@b", {})


def test_a_keys_folder_with_a_secret_others_may_read_is_refused_at_load(tmp_path):
    keys_folder(tmp_path / "k")
    os.chmod(tmp_path / "k" / "me.key_secret", 0o644)
    (tmp_path / "cluster.toml").write_text('[nodes.b]\nendpoint = "tcp://h:1"\nkeys = "k"\n')
    with pytest.raises(ClusterError, match="nodes.b.keys: .*me.key_secret may be read by others"):
        load_cluster(tmp_path / "cluster.toml")


def test_a_cluster_file_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ClusterError, match="a FIFO"):
        load_cluster(tmp_path / "fifo")
    with pytest.raises(ClusterError, match="no such file|No such file"):
        load_cluster(tmp_path / "absent.toml")


def test_the_topologys_cluster_is_loaded_inline_and_from_a_file(tmp_path):
    keys_folder(tmp_path / "kb")
    keys_folder(tmp_path / "kc")
    (tmp_path / "cluster.toml").write_text('[nodes.c]\nendpoint = "tcp://10.0.0.3:7000"\nkeys = "kc"\n')
    text = TOPOLOGY + '\n[cluster]\nfile = "cluster.toml"\n\n[cluster.nodes.b]\nendpoint = "tcp://[::1]:7000"\nkeys = "kb"\n'
    topology = parse_topology(text, source="topology.toml", base_dir=str(tmp_path))
    assert sorted(topology.cluster.nodes) == ["b", "c"]
    assert topology.cluster.nodes["b"].keys == str(tmp_path / "kb")
    assert parse_topology(TOPOLOGY, source="topology.toml", base_dir=str(tmp_path)).cluster is None


@pytest.mark.parametrize("table, expected", [
    ('[cluster.nodes.b]\nendpoint = "udp://h:1"\nkeys = "kb"\n', "topology.toml: cluster.nodes.b.endpoint: got 'udp://h:1'"),
    ('[cluster.nodes.b]\nendpoint = "tcp://h:1"\nkeys = "absent"\n', "topology.toml: cluster.nodes.b.keys: "),
    ('[cluster]\nfile = "absent.toml"\n', "topology.toml: cluster.file: "),
    ('[cluster]\nfile = "cluster.toml"\n\n[cluster.nodes.c]\nendpoint = "tcp://h:1"\nkeys = "kb"\n',
     "cluster.nodes.c: node 'c' is also in"),
])
def test_a_bad_cluster_table_is_a_topology_problem_naming_the_field(tmp_path, table, expected):
    keys_folder(tmp_path / "kb")
    keys_folder(tmp_path / "kc")
    (tmp_path / "cluster.toml").write_text('[nodes.c]\nendpoint = "tcp://10.0.0.3:7000"\nkeys = "kc"\n')
    with pytest.raises(TopologyError) as raised:
        parse_topology(TOPOLOGY + "\n" + table, source="topology.toml", base_dir=str(tmp_path))
    assert expected in str(raised.value)


@pytest.mark.parametrize("endpoint", ["tcp://a:b@127.0.0.1:47400", "tcp://x y:1", "tcp://-a:1", "tcp://h:0"])
def test_a_cluster_endpoint_the_cli_refuses_is_refused_at_load(tmp_path, endpoint):
    """advA-12: one endpoint rule, the CLI's --endpoint's, for cluster files and RemoteCaller."""
    from otpy.wire.remote_calls import RemoteCaller

    keys_folder(tmp_path / "keys")
    (tmp_path / "cluster.toml").write_text(f'[nodes.b]\nendpoint = "{endpoint}"\nkeys = "keys"\n')
    with pytest.raises(ValueError, match="nodes.b.endpoint"):
        load_cluster(tmp_path / "cluster.toml")
    with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
        RemoteCaller(endpoint, tmp_path / "keys")


@pytest.mark.parametrize("folder", ["/", "/tmp", "open"])
def test_a_keys_folder_that_is_not_private_is_refused_at_load(tmp_path, folder):
    """advA-4: a keys folder without server.key yet loads only if it is private (0700, this user's)."""
    if folder == "open":
        (tmp_path / "open").mkdir(mode=0o755)
        os.chmod(tmp_path / "open", 0o755)
    (tmp_path / "cluster.toml").write_text(f'[nodes.b]\nendpoint = "tcp://h:1"\nkeys = "{folder}"\n')
    with pytest.raises(ClusterError, match="nodes.b.keys: .*(another user|open to others)"):
        load_cluster(tmp_path / "cluster.toml")


@pytest.mark.parametrize("nest", ["[" * 100000 + "]" * 100000, "{a=" * 50000 + "1" + "}" * 50000])
def test_a_cluster_or_topology_file_nested_too_deeply_is_one_line(tmp_path, nest):
    """advA-3: under the size limit, but deeper than the parser's recursion: a problem, not a RecursionError."""
    (tmp_path / "cluster.toml").write_text(f"x = {nest}\n")
    with pytest.raises(ClusterError, match="invalid TOML: values nested too deeply"):
        load_cluster(tmp_path / "cluster.toml")
    with pytest.raises(TopologyError, match="invalid TOML: values nested too deeply"):
        parse_topology(TOPOLOGY + f"x = {nest}\n", source="t.toml")
