"""A node's CURVE keys are durable and can be made before its first start.

They live in the node's state folder (``$XDG_STATE_HOME/otpy/NODE/curve``), not in its runtime
folder (a tmpfs emptied at reboot): a reboot keeps the node's server key and its authorized
clients. ``otpy keys server NODE`` makes (or shows) them before any start, and ``otpy keys
authorize`` works before the first start too, so that two nodes that call each other can have
each other's keys before either starts. Keys an older otpy left in the runtime folder are moved
once, and said once."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import zmq.auth
from click.testing import CliRunner

import otpy
from otpy.cli.main import main
from otpy.host.log_files import node_state_dir
from otpy.host.runtime_dir import RuntimeDirError, runtime_root
from otpy.wire import curve
from otpy.wire.calls import Caller
from otpy.wire.curve import ensure_keys, keys_dir
from tests.helpers import sleeper, unique_name
from tests.test_remote_cli import free_port

pytestmark = pytest.mark.timeout(60)


def otpy_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def spec_of(name: str, endpoint: str) -> otpy.NodeSpec:
    return otpy.NodeSpec(name=name, control_tcp=endpoint, root=otpy.SupervisorSpec(id="root", children=(sleeper("a"),)))


def client_of(tmp_path, node_name: str, name: str = "laptop"):
    """A client keys folder made by `otpy keys new`, authorized on the node, with its server.key
    as `otpy keys server` shows it."""
    folder = tmp_path / name
    assert otpy_cli("keys", "new", str(folder), "--name", name).exit_code == 0
    result = otpy_cli("keys", "authorize", node_name, str(folder / f"{name}.key"))
    assert result.exit_code == 0, result.output
    result = otpy_cli("keys", "server", node_name)
    assert result.exit_code == 0, result.output
    shutil.copy(result.stdout.strip(), folder)
    return folder


def served(endpoint: str, folder, timeout: float = 5.0) -> str:
    with otpy.connect(endpoint=endpoint, keys=folder, timeout=timeout) as client:
        return client.status().node


def old_layout(name: str, *clients) -> bytes:
    """The keys as an older otpy left them in the runtime folder: RUNTIME/NODE/curve with a
    server pair, a client pair (client.key authorized) and the given clients' public keys
    authorized; returns the server's public key file's bytes."""
    folder = runtime_root() / name / "curve"
    authorized = folder / "authorized"
    os.makedirs(authorized, mode=0o700)
    os.chmod(runtime_root() / name, 0o700)
    zmq.auth.create_certificates(folder, "server")
    public, _ = zmq.auth.create_certificates(folder, "client")
    os.replace(public, authorized / "client.key")
    for client in clients:
        shutil.copy(client, authorized)
    return (folder / "server.key").read_bytes()


# --- durable keys --------------------------------------------------------------------------------

def test_keys_live_in_the_nodes_state_folder_private(tmp_path):
    name = unique_name("keys")
    folder = ensure_keys(name)
    assert folder == node_state_dir(name) / "curve" == keys_dir(name)
    assert not (runtime_root() / name).exists()  # nothing in the runtime folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "authorized").stat().st_mode) == 0o700
    for secret in folder.glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert sorted(p.name for p in (folder / "authorized").iterdir()) == ["client.key"]
    assert ensure_keys(name) == folder and not list(folder.glob(".new-*"))


def test_the_keys_survive_the_runtime_folder_being_emptied(tmp_path):
    """A reboot, as the node sees it: stopped, its runtime folder gone, started again."""
    name, endpoint = unique_name("reboot"), f"tcp://127.0.0.1:{free_port()}"
    with otpy.Node(spec_of(name, endpoint)):
        laptop = client_of(tmp_path, name)
        assert served(endpoint, laptop) == name
        server_key = (keys_dir(name) / "server.key").read_bytes()
    shutil.rmtree(runtime_root() / name)
    with otpy.Node(spec_of(name, endpoint)):
        assert (keys_dir(name) / "server.key").read_bytes() == server_key
        assert served(endpoint, laptop) == name  # the client's copy of server.key and its authorization hold


def test_a_key_folder_made_a_symlink_in_the_state_folder_is_refused(tmp_path):
    name = unique_name("keys")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    node_state_dir(name).mkdir(mode=0o700, parents=True)
    (node_state_dir(name) / "curve").symlink_to(elsewhere)
    with pytest.raises(RuntimeDirError, match="symlink"):
        ensure_keys(name)
    result = otpy_cli("keys", "server", name)
    assert result.exit_code == 2 and "symlink" in result.stderr
    assert not list(elsewhere.iterdir())


# --- otpy keys server, authorize before the first start -----------------------------------------

def test_keys_server_makes_the_keys_before_the_first_start_then_shows_them(tmp_path):
    name = unique_name("first")
    result = otpy_cli("keys", "server", name, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    folder = str(node_state_dir(name) / "curve")
    assert shown == {"node": name, "public": os.path.join(folder, "server.key"), "folder": folder}
    assert f"otpy: node {name!r} had no key pair: made one in {folder}" in result.stderr
    public = zmq.auth.load_certificate(shown["public"])
    assert public[1] is None  # the public half only
    assert zmq.auth.load_certificate(os.path.join(folder, "server.key_secret"))[0] == public[0]
    again = otpy_cli("keys", "server", name)
    assert again.exit_code == 0 and again.stdout == shown["public"] + "\n" and again.stderr == ""
    (keys_dir(name) / "server.key").unlink()  # removed by hand: made again from the secret, the same key
    assert otpy_cli("keys", "server", name).exit_code == 0
    assert zmq.auth.load_certificate(shown["public"]) == public


def test_authorize_before_the_first_start_then_the_node_lets_that_client_in(tmp_path):
    name, endpoint = unique_name("first"), f"tcp://127.0.0.1:{free_port()}"
    assert otpy_cli("keys", "new", str(tmp_path / "k"), "--name", "k").exit_code == 0
    result = otpy_cli("keys", "authorize", name, str(tmp_path / "k" / "k.key"))
    assert result.exit_code == 0, result.output
    assert result.stderr == f"otpy: node {name!r} had no key pair: made one in {node_state_dir(name) / 'curve'}\n"
    laptop = client_of(tmp_path, name)  # another client: no note, the keys are there
    assert not (runtime_root() / name).exists()
    with otpy.Node(spec_of(name, endpoint)):
        assert served(endpoint, laptop) == name


def test_revoke_of_a_node_without_keys_says_so(tmp_path):
    name = unique_name("nokeys")
    result = otpy_cli("keys", "revoke", name, "laptop")
    assert result.exit_code == 2
    assert result.stderr == (f"otpy: keys revoke: no node {name!r} on this host (no key folder "
                             f"{node_state_dir(name) / 'curve'}): revoke on the node's host\n")


def test_two_nodes_that_call_each_other_are_set_up_before_either_starts(tmp_path):
    """finding-lab-1: each node's cluster needs the other's server.key at load; with `keys server`
    every key is made first, then both nodes start once."""
    a, b = unique_name("a"), unique_name("b")
    ports = {a: free_port(), b: free_port()}
    while ports[b] in range(ports[a] - 2, ports[a] + 3):
        ports[b] = free_port()
    for here, other in ((a, b), (b, a)):  # on `here`'s host: keys for reaching `other`
        folder = tmp_path / here / f"keys-{other}"
        folder.parent.mkdir(mode=0o700)
        assert otpy_cli("keys", "new", str(folder), "--name", here).exit_code == 0
        assert otpy_cli("keys", "authorize", other, str(folder / f"{here}.key")).exit_code == 0  # on other's host
        shutil.copy(otpy_cli("keys", "server", other).stdout.strip(), folder)
        (tmp_path / here / "cluster.toml").write_text(
            f'[nodes.{other}]\nendpoint = "tcp://127.0.0.1:{ports[other]}"\nkeys = "keys-{other}"\n')
        (tmp_path / here / "topology.toml").write_text(
            f'[node]\nname = "{here}"\ncontrol_tcp = "tcp://127.0.0.1:{ports[here]}"\n\n[cluster]\nfile = "cluster.toml"\n\n'
            '[supervisor]\n\n[[supervisor.children]]\nid = "echo"\nprogram = "tests.call_agents:Echo"\n\n'
            '[[supervisor.children]]\nid = "relay"\nprogram = "tests.call_agents:CallsOther"\n')
    with otpy.Node.from_toml(tmp_path / a / "topology.toml") as node_a, \
            otpy.Node.from_toml(tmp_path / b / "topology.toml") as node_b:
        for caller_node, other in ((node_a, b), (node_b, a)):
            with Caller(caller_node.name) as caller:
                answer = caller.call("relay", {"target": f"echo@{other}", "x": 7}, timeout=10)
            assert answer["answer"]["x"] == 7


# --- keys an older otpy left in the runtime folder -----------------------------------------------

def test_keys_left_in_the_runtime_folder_are_moved_once_and_said_once(tmp_path):
    name, endpoint = unique_name("old"), f"tcp://127.0.0.1:{free_port()}"
    laptop = tmp_path / "laptop"
    assert otpy_cli("keys", "new", str(laptop), "--name", "laptop").exit_code == 0
    server_key = old_layout(name, laptop / "laptop.key")
    old = runtime_root() / name / "curve"
    result = otpy_cli("keys", "server", name)
    assert result.exit_code == 0, result.output
    new = node_state_dir(name) / "curve"
    assert result.stderr == (f"otpy: node {name!r}: CURVE keys moved from the runtime folder {old} to {new} (the "
                             "runtime folder is emptied at reboot; the node's key and its authorized clients stay)\n")
    assert result.stdout == f"{new / 'server.key'}\n" and (new / "server.key").read_bytes() == server_key
    assert not old.exists()
    assert sorted(p.name for p in (new / "authorized").iterdir()) == ["client.key", "laptop.key"]
    assert stat.S_IMODE(new.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (*new.glob("*.key_secret"), *new.glob("authorized/*")))
    again = otpy_cli("keys", "server", name)
    assert again.exit_code == 0 and again.stderr == ""  # said once
    shutil.copy(new / "server.key", laptop)
    with otpy.Node(spec_of(name, endpoint)):
        assert served(endpoint, laptop) == name  # the same identity, the same allow-list


def test_a_node_started_on_keys_left_in_the_runtime_folder_moves_them_and_logs_it(tmp_path, caplog):
    name, endpoint = unique_name("old"), f"tcp://127.0.0.1:{free_port()}"
    laptop = tmp_path / "laptop"
    assert otpy_cli("keys", "new", str(laptop), "--name", "laptop").exit_code == 0
    (laptop / "server.key").write_bytes(old_layout(name, laptop / "laptop.key"))
    with caplog.at_level("WARNING", logger="otpy"), otpy.Node(spec_of(name, endpoint)):
        assert served(endpoint, laptop) == name
        assert not (runtime_root() / name / "curve").exists()
    said = [r.getMessage() for r in caplog.records if "CURVE keys moved" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"otpy[{name}]: ")


def test_keys_are_not_moved_from_under_an_older_node_that_runs_on_them(tmp_path):
    """An older node still running reads its allow-list from the runtime folder: moving it would
    shut every client out. The command says to stop it first; after that, the keys move."""
    name = unique_name("old")
    laptop = tmp_path / "laptop"
    assert otpy_cli("keys", "new", str(laptop), "--name", "laptop").exit_code == 0
    old_layout(name)
    holder = subprocess.Popen(  # holds the node's run lock, as a running node does
        [sys.executable, "-c", "import sys; from pathlib import Path; from otpy.host.node_run import RunLock; "
         "RunLock.take(Path(sys.argv[1]), 'old-run'); print('held', flush=True); sys.stdin.read()",
         str(runtime_root() / name)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        result = otpy_cli("keys", "authorize", name, str(laptop / "laptop.key"))
        assert result.exit_code == 2
        assert f"node {name!r} runs with its keys still in the runtime folder" in result.stderr
        assert "stop it, then retry" in result.stderr
        assert (runtime_root() / name / "curve" / "server.key_secret").exists()
        assert not (node_state_dir(name) / "curve").exists()
    finally:
        holder.stdin.close()
        holder.wait(10)
    result = otpy_cli("keys", "authorize", name, str(laptop / "laptop.key"))
    assert result.exit_code == 0, result.output
    assert "CURVE keys moved" in result.stderr
    assert (node_state_dir(name) / "curve" / "authorized" / "laptop.key").exists()


def test_a_symlink_left_as_the_old_key_folder_is_refused_and_nothing_is_written(tmp_path):
    name = unique_name("old")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (runtime_root() / name).mkdir(mode=0o700)
    (runtime_root() / name / "curve").symlink_to(elsewhere)
    with pytest.raises(RuntimeDirError, match="symlink"):
        curve.take_over_keys(name)
    assert not list(elsewhere.iterdir()) and not (node_state_dir(name) / "curve").exists()
