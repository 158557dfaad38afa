"""The command line over a node's CURVE TCP control endpoint (``--endpoint``, ``--keys``) and
``otpy keys``: loopback only, on a port the OS gave."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
import zmq.auth
from click.testing import CliRunner

import otpy
from otpy.cli.main import main
from otpy.node.remote_events import RemoteEvents, events_endpoint
from otpy.wire.curve import keys_dir
from tests.helpers import free_node_port, sleeper, unique_name

pytestmark = pytest.mark.timeout(60)


free_port = free_node_port  # the name other test modules import from here


def otpy_cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def stderr_of(result) -> str:
    """What the command wrote on stderr: the node's children, run in this process, echo their
    own lines (``[a] up``) there too, at any time."""
    return "".join(line for line in result.stderr.splitlines(keepends=True) if not re.match(r"\[[\w.-]+\] ", line))


@pytest.fixture
def node():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spec = otpy.NodeSpec(name=unique_name("rcli"), control_tcp=endpoint,
                         root=otpy.SupervisorSpec(id="root", children=(sleeper("a"),)))
    with otpy.Node(spec) as node:
        yield node, endpoint


def client_keys(tmp_path, node_name: str):
    """A client's folder as an operator makes it: the node's server.key and the client key pair it made."""
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    shutil.copy(keys_dir(node_name) / "server.key", folder)
    shutil.copy(keys_dir(node_name) / "client.key_secret", folder)
    return folder


# --- otpy keys new ---------------------------------------------------------------------------

def test_keys_new_makes_a_private_folder_and_a_0600_secret(tmp_path):
    folder = tmp_path / "mine"
    result = otpy_cli("keys", "new", str(folder), "--name", "laptop", "--json")
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made == {"folder": str(folder), "name": "laptop", "public": str(folder / "laptop.key"),
                    "secret": str(folder / "laptop.key_secret")}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "laptop.key_secret").stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(folder / "laptop.key_secret")
    assert secret is not None and zmq.auth.load_certificate(folder / "laptop.key") == (public, None)
    assert sorted(p.name for p in folder.iterdir()) == ["laptop.key", "laptop.key_secret"]  # no scratch left


def test_keys_new_says_what_to_do_with_the_public_key(tmp_path):
    result = otpy_cli("keys", "new", str(tmp_path / "k"))
    assert result.exit_code == 0, result.output
    assert f"public key: {tmp_path / 'k' / 'client.key'}" in result.stdout
    assert "otpy keys authorize NODE client.key" in result.stdout and "server.key" in result.stdout


def test_keys_new_never_overwrites_a_key(tmp_path):
    folder = tmp_path / "k"
    assert otpy_cli("keys", "new", str(folder)).exit_code == 0
    before = (folder / "client.key_secret").read_bytes()
    result = otpy_cli("keys", "new", str(folder))
    assert result.exit_code == 2
    assert f"{folder / 'client.key_secret'} already exists: it is never overwritten" in result.stderr
    assert (folder / "client.key_secret").read_bytes() == before


def test_keys_new_refuses_a_dangling_symlink_in_place_of_the_public_key(tmp_path):
    folder = tmp_path / "k"
    folder.mkdir(mode=0o700)
    (folder / "client.key").symlink_to(tmp_path / "elsewhere")
    result = otpy_cli("keys", "new", str(folder))
    assert result.exit_code == 2 and "client.key already exists" in result.stderr
    assert not (tmp_path / "elsewhere").exists() and not (folder / "client.key_secret").exists()


@pytest.mark.parametrize("kind", ["symlink", "file", "open"])
def test_keys_new_refuses_a_folder_it_should_not_write_in(tmp_path, kind):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    target = tmp_path / "target"
    if kind == "symlink":
        target.symlink_to(real)
        said = "is a symlink"
    elif kind == "file":
        target.write_text("")
        said = "is not a folder"
    else:
        target.mkdir()
        target.chmod(0o755)
        said = "may be read by others (mode 0755): `chmod 700"
    result = otpy_cli("keys", "new", str(target))
    assert result.exit_code == 2, result.output
    assert said in result.stderr
    assert list(real.iterdir()) == [] and not list(tmp_path.glob("**/*.key_secret"))


def test_keys_new_refuses_a_name_that_is_a_path_or_the_servers(tmp_path):
    for name in ("../x", "server"):
        result = otpy_cli("keys", "new", str(tmp_path / "k"), "--name", name)
        assert result.exit_code == 2, result.output
        assert "--name" in result.stderr
    assert not (tmp_path / "x.key").exists()


# --- --endpoint and --keys -------------------------------------------------------------------

def test_status_over_tcp(node, tmp_path):
    node, endpoint = node
    result = otpy_cli("status", "--endpoint", endpoint, "--keys", str(client_keys(tmp_path, node.name)), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["node"] == node.name
    assert [(c["id"], c["state"]) for c in report["tree"]["children"]] == [("a", "running")]


def test_a_child_operation_over_tcp(node, tmp_path):
    node, endpoint = node
    keys = str(client_keys(tmp_path, node.name))
    stopped = otpy_cli("terminate-child", "a", "--endpoint", endpoint, "--keys", keys, "--json")
    assert stopped.exit_code == 0, stopped.output
    assert node.which_children("root")[0].pid is None
    started = otpy_cli("restart-child", "a", "--endpoint", endpoint, "--json", env={"OTPY_KEYS": keys})
    assert started.exit_code == 0, started.output
    assert json.loads(started.stdout)["outcome"] == "ok"
    assert node.which_children("root")[0].pid == json.loads(started.stdout)["pid"]


def test_stop_over_tcp(node, tmp_path):
    node, endpoint = node
    result = otpy_cli("stop", "--endpoint", endpoint, "--keys", str(client_keys(tmp_path, node.name)), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"command": "stop", "node": endpoint, "ok": True, "pid": os.getpid(),
                                         "stale": False}
    assert node.which_children("root")[0].pid is None  # the tree stopped


@pytest.mark.timeout(20)  # its --timeout 1 is kept: without it, status waits 30 s
def test_a_client_whose_key_is_not_authorized_gets_the_timeout_message(node, tmp_path):
    node, endpoint = node
    folder = tmp_path / "stranger"
    assert otpy_cli("keys", "new", str(folder)).exit_code == 0
    shutil.copy(keys_dir(node.name) / "server.key", folder)
    result = otpy_cli("status", "--endpoint", endpoint, "--keys", str(folder), "--timeout", "1")
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert stderr_of(result).startswith(f"status: node '{endpoint}' ")
    assert "curve/authorized/" in stderr_of(result) and len(stderr_of(result).splitlines()) == 1


@pytest.mark.parametrize("args, said", [
    (["--endpoint", "tcp://127.0.0.1:9"], "--endpoint needs --keys DIR (or OTPY_KEYS)"),
    (["--endpoint", "http://127.0.0.1:9", "--keys", "."], "Invalid value for '--endpoint'"),
    (["--endpoint", "ipc:///tmp/x", "--keys", "."], "expected tcp://HOST:PORT"),
    (["--endpoint", "tcp://*:9", "--keys", "."], "expected tcp://HOST:PORT"),
    (["--endpoint", "tcp://127.0.0.1:70000", "--keys", "."], "expected tcp://HOST:PORT"),
    (["--keys", "."], "--keys goes with --endpoint"),
    (["--node", "x", "--endpoint", "tcp://127.0.0.1:9", "--keys", "."], "not both"),
])
def test_endpoint_refusals_are_usage_errors(args, said):
    for command in (["status"], ["restart", "a"], ["stop"]):
        result = otpy_cli(*command, *args)
        assert result.exit_code == 2, (command, result.output)
        assert said in result.stderr


def test_otpy_keys_in_the_environment_leaves_a_local_command_local(node, tmp_path):
    node, _ = node
    result = otpy_cli("status", "--node", node.name, "--json", env={"OTPY_KEYS": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["node"] == node.name


def test_a_key_folder_that_lacks_a_key_says_what_and_how(node, tmp_path):
    node, endpoint = node
    folder = tmp_path / "k"
    assert otpy_cli("keys", "new", str(folder)).exit_code == 0
    result = otpy_cli("status", "--endpoint", endpoint, "--keys", str(folder))
    assert result.exit_code == 2
    assert stderr_of(result) == (f"otpy: --keys {folder} has no server.key (the node's public key): copy it there from "
                             "the node's host (`otpy keys server NODE` there prints where it is)\n")
    only_server = tmp_path / "s"
    only_server.mkdir(mode=0o700)
    shutil.copy(keys_dir(node.name) / "server.key", only_server)
    result = otpy_cli("status", "--endpoint", endpoint, "--keys", str(only_server))
    assert result.exit_code == 2 and "no client secret key (*.key_secret): make a key pair with" in result.stderr
    shutil.copy(keys_dir(node.name) / "client.key_secret", only_server)
    (only_server / "client.key_secret").chmod(0o644)
    result = otpy_cli("status", "--endpoint", endpoint, "--keys", str(only_server))
    assert result.exit_code == 2 and "may be read by others (mode 0644): `chmod 600" in result.stderr


# --- otpy keys authorize ---------------------------------------------------------------------

def test_authorize_copies_a_public_key_into_the_nodes_folder(node, tmp_path):
    node, _ = node
    folder = tmp_path / "k"
    assert otpy_cli("keys", "new", str(folder), "--name", "laptop").exit_code == 0
    result = otpy_cli("keys", "authorize", node.name, str(folder / "laptop.key"), "--json")
    assert result.exit_code == 0, result.output
    target = keys_dir(node.name) / "authorized" / "laptop.key"
    assert json.loads(result.stdout) == {"node": node.name, "authorized": str(target)}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() == (folder / "laptop.key").read_bytes()
    again = otpy_cli("keys", "authorize", node.name, str(folder / "laptop.key"))
    assert again.exit_code == 2 and "already authorized" in again.stderr


def test_authorize_refuses_a_secret_a_symlink_and_a_path_for_a_node(node, tmp_path):
    node, _ = node
    folder = tmp_path / "k"
    assert otpy_cli("keys", "new", str(folder)).exit_code == 0
    link = tmp_path / "link.key"
    link.symlink_to(folder / "client.key")
    for node_name, path, said in ((node.name, folder / "client.key_secret", "expected a client's public key file"),
                                  (node.name, link, "is not a regular file"),
                                  ("../x", folder / "client.key", "node name '../x'")):
        result = otpy_cli("keys", "authorize", node_name, str(path))
        assert result.exit_code == 2, result.output
        assert said in result.stderr
    assert sorted(p.name for p in (keys_dir(node.name) / "authorized").iterdir()) == ["client.key"]


def test_reload_without_file_goes_over_tcp_and_a_file_is_refused(tmp_path):
    """The node reads the topology on its own host: its own file over --endpoint, never a client's path."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    name = unique_name("rrel")
    path = tmp_path / "t.toml"
    path.write_text(f'[node]\nname = "{name}"\ncontrol_tcp = "{endpoint}"\n[supervisor]\n'
                    '[[supervisor.children]]\nid = "a"\ncommand = ["sleep", "600"]\n')
    with otpy.Node.from_toml(path) as running:
        keys = client_keys(tmp_path, running.name)
        result = otpy_cli("reload", "--dry-run", "--json", "--endpoint", endpoint, "--keys", str(keys))
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["outcome"] == "ok"
        refused = otpy_cli("reload", str(path), "--endpoint", endpoint, "--keys", str(keys))
        assert refused.exit_code == 2 and "reload FILE does not take --endpoint" in refused.output


# --- otpy events --endpoint ------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def node_client_keys(tmp_path, node_name: str, name: str = "keys"):
    folder = tmp_path / name
    folder.mkdir(mode=0o700)
    shutil.copy(keys_dir(node_name) / "server.key", folder)
    shutil.copy(keys_dir(node_name) / "client.key_secret", folder)
    return folder


def until_an_event(node, lines: queue.Queue, deadline_s: float = 15.0) -> dict:
    """Stop and restart child a until the subscriber prints a line (its subscription is made
    asynchronously, after the handshake)."""
    deadline = time.monotonic() + deadline_s
    while True:
        assert time.monotonic() < deadline, "no event printed"
        node.terminate_child("a")
        node.restart_child("a")
        try:
            return json.loads(lines.get(timeout=0.5))
        except queue.Empty:
            pass


@pytest.mark.timeout(40)
def test_events_over_tcp_until_the_node_stops(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spec = otpy.NodeSpec(name=unique_name("revt"), control_tcp=endpoint,
                         root=otpy.SupervisorSpec(id="root", children=(sleeper("a"),)))
    node = otpy.Node(spec).start()
    try:
        keys = client_keys(tmp_path, node.name)
        watcher = subprocess.Popen([sys.executable, "-m", "otpy", "events", "--endpoint", endpoint, "--keys",
                                    str(keys), "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout], daemon=True).start()
        event = until_an_event(node, lines)
        assert event["node"] == node.name and event["child"] == "a" and event["kind"] in ("stopped", "started")
    finally:
        node.stop()
    assert watcher.wait(15) == 0  # the node said node_stopping, then its endpoint closed
    assert f"otpy: node at {endpoint} stopped" in watcher.stderr.read()


@pytest.mark.timeout(20)
def test_events_over_tcp_with_a_key_the_node_does_not_know(node, tmp_path):
    node, endpoint = node
    folder = tmp_path / "stranger"
    assert otpy_cli("keys", "new", str(folder)).exit_code == 0
    shutil.copy(keys_dir(node.name) / "server.key", folder)
    result = otpy_cli("events", "--endpoint", endpoint, "--keys", str(folder), "--timeout", "5")
    assert result.exit_code == 1, result.output
    assert stderr_of(result) == (f"events: {events_endpoint(endpoint)}: the node refused this client's key (not in "
                             "its curve/authorized/, or revoked)\n")


@pytest.mark.timeout(20)
def test_events_over_tcp_where_nothing_serves_them(tmp_path):
    folder = tmp_path / "k"
    assert otpy_cli("keys", "new", str(folder)).exit_code == 0
    (folder / "server.key").write_bytes((folder / "client.key").read_bytes())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    result = otpy_cli("events", "--endpoint", endpoint, "--keys", str(folder), "--timeout", "0.5")
    assert result.exit_code == 1, result.output
    assert stderr_of(result).startswith(f"events: no events endpoint answered at {events_endpoint(endpoint)} within 0.5 s")
    assert "its events: port + 2" in result.stderr


@pytest.mark.timeout(40)
def test_a_revoked_subscriber_is_cut_and_the_others_go_on(node, tmp_path):
    node, endpoint = node
    laptop = tmp_path / "laptop"
    assert otpy_cli("keys", "new", str(laptop), "--name", "laptop").exit_code == 0
    shutil.copy(keys_dir(node.name) / "server.key", laptop)
    assert otpy_cli("keys", "authorize", node.name, str(laptop / "laptop.key")).exit_code == 0
    kept, revoked = queue.Queue(), queue.Queue()

    def follow(keys, into: queue.Queue) -> None:
        with RemoteEvents(endpoint, keys) as stream:
            stream.connect(10)
            try:
                for event in stream:
                    into.put(json.dumps(msgspec.to_builtins(event)))
            except Exception as exc:
                into.put(exc)

    for keys, into in ((node_client_keys(tmp_path, node.name), kept), (laptop, revoked)):
        threading.Thread(target=follow, args=(keys, into), daemon=True).start()
    until_an_event(node, revoked)
    assert otpy_cli("keys", "revoke", node.name, "laptop").exit_code == 0
    deadline = time.monotonic() + 15
    ended = None
    while ended is None:  # the next event cuts every subscriber; the laptop's reconnection is refused
        assert time.monotonic() < deadline, "the revoked subscriber was not cut"
        node.terminate_child("a")
        node.restart_child("a")
        try:
            item = revoked.get(timeout=0.5)
        except queue.Empty:
            continue
        if isinstance(item, BaseException):
            ended = item
    assert isinstance(ended, ConnectionRefusedError)
    while not kept.empty():
        kept.get()
    assert until_an_event(node, kept)["node"] == node.name  # the allowed one reconnected by itself


# --- otpy.connect(endpoint=..., keys=...): every method of the handle --------------------------

@pytest.mark.timeout(60)
def test_every_method_of_a_remote_handle(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pool = otpy.DynamicSupervisorSpec(id="pool", templates={"w": sleeper("w")})
    spec = otpy.NodeSpec(name=unique_name("rapi"), control_tcp=endpoint,
                         root=otpy.SupervisorSpec(id="root", children=(sleeper("a"), pool)))
    with otpy.Node(spec) as node:
        keys = client_keys(tmp_path, node.name)
        with otpy.connect("far", endpoint=endpoint, keys=keys, timeout=30) as client:
            assert client.status().node == node.name
            assert [c.id for c in client.which_children("root")] == ["a", "pool"]
            assert client.count_children("root").workers == 1
            assert client.start_child("root", sleeper("b")).ok
            assert client.start_from_template("pool", "w", "w1").ok
            assert [c.id for c in node.which_children("pool")] == ["w1"]
            assert client.signal_child("b", int(signal.SIGCONT)).ok  # harmless to a sleeper
            assert client.terminate_child("b").ok and client.delete_child("b").ok
            assert client.terminate_child("a").ok
            assert client.restart_child("a").ok
            pid = node.which_children("root")[0].pid
            assert pid is not None
            assert client.reconfigure("root", "a", sleeper("a", shutdown=3.0)).ok
            assert node.which_children("root")[0].pid != pid
            assert client.announce("remote_note", "from far").ok
            assert client.apply(otpy.wire.protocol.TerminateChild(0, "w1", "pool")).ok
            assert client.wait_ready(5.0, give_up=lambda: False).node == node.name
            no_vars = client.set_variables("global", {"x": 1})  # this node has no registry: the node says so
            assert not no_vars.ok and no_vars.detail
            assert not client.set_config({"global": {"x": 1}}).ok
            reload = client.reload(dry_run=True)  # the node's own file (this one has none: it says so)
            assert reload.outcome == "invalid" and "not started from a topology file" in reload.detail
            with pytest.raises(otpy.ControlError, match=r"reload\('/tmp/x.toml'\) over TCP: the node reads files"):
                client.reload("/tmp/x.toml")
            with pytest.raises(otpy.ControlError):  # the node's refusals are the same typed errors
                client.which_children("nosuch")
            assert client.stop(timeout=30).ok
        assert node.which_children("root")[0].pid is None  # the tree stopped


def test_a_remote_handle_without_usable_keys_is_a_value_error(tmp_path):
    folder = tmp_path / "k"
    assert otpy_cli("keys", "new", str(folder)).exit_code == 0
    with pytest.raises(ValueError, match="has no server.key"):
        otpy.connect(endpoint="tcp://127.0.0.1:9", keys=folder)
    with pytest.raises(ValueError, match="needs endpoint='tcp://host:port' and keys=FOLDER"):
        otpy.connect(endpoint="tcp://127.0.0.1:9")


@pytest.mark.timeout(20)
def test_a_remote_handle_whose_key_is_not_authorized_times_out(node, tmp_path):
    node, endpoint = node
    folder = tmp_path / "stranger"
    assert otpy_cli("keys", "new", str(folder)).exit_code == 0
    shutil.copy(keys_dir(node.name) / "server.key", folder)
    with otpy.connect(endpoint=endpoint, keys=folder, timeout=0.5) as client:
        with pytest.raises(TimeoutError):
            client.status()


@pytest.mark.timeout(30)
def test_an_async_remote_handle(node, tmp_path):
    node, endpoint = node
    keys = client_keys(tmp_path, node.name)

    async def use() -> None:
        async with otpy.AsyncClient("far", endpoint=endpoint, keys=keys, timeout=10) as client:
            assert (await client.status()).node == node.name
            assert (await client.terminate_child("a")).ok
            with pytest.raises(otpy.ControlError, match="over TCP"):
                await client.reload("x.toml")

    import asyncio
    asyncio.run(use())
    assert node.which_children("root")[0].pid is None


def test_logs_refuses_an_endpoint_saying_where_to_run_it(tmp_path):
    folder = tmp_path / "k"
    assert otpy_cli("keys", "new", str(folder)).exit_code == 0
    (folder / "server.key").write_bytes((folder / "client.key").read_bytes())
    result = otpy_cli("logs", "--endpoint", "tcp://127.0.0.1:9", "--keys", str(folder))
    assert result.exit_code == 2, result.output
    assert stderr_of(result) == ("otpy: logs does not take --endpoint: the logs are files on the node's host (`otpy events "
                             "--endpoint` follows its events from here); run it on the node's host\n")
