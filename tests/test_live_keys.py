"""`otpy keys authorize` and `otpy keys revoke` on a running node: they take effect at the next
handshake (and, for a revocation, at the next request of a connection made before), with no
restart; ``AuthorizedKeys`` reads the folder again only when it changed."""

from __future__ import annotations

import json
import re
import os
import shutil
import time

import pytest
import zmq.auth
from click.testing import CliRunner

import otpy
from otpy.cli.main import main
from otpy.wire import curve
from otpy.wire.curve import AuthorizedKeys, keys_dir
from tests.helpers import sleeper, unique_name
from tests.test_remote_cli import free_port

pytestmark = pytest.mark.timeout(60)


def otpy_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def stderr_of(result) -> str:
    """What the command wrote on stderr: the node's children, run in this process, echo their
    own lines (``[a] up``) there too, at any time."""
    return "".join(line for line in result.stderr.splitlines(keepends=True) if not re.match(r"\[[\w.-]+\] ", line))


@pytest.fixture
def node():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spec = otpy.NodeSpec(name=unique_name("live"), control_tcp=endpoint,
                         root=otpy.SupervisorSpec(id="root", children=(sleeper("a"),)))
    with otpy.Node(spec) as node:
        yield node, endpoint


def new_client(tmp_path, node_name: str, name: str):
    """A client folder as `otpy keys new` makes it, with the node's server.key copied in."""
    folder = tmp_path / name
    assert otpy_cli("keys", "new", str(folder), "--name", name).exit_code == 0
    shutil.copy(keys_dir(node_name) / "server.key", folder)
    return folder


def status_over_tcp(endpoint: str, folder, timeout: float = 5.0):
    with otpy.connect(endpoint=endpoint, keys=folder, timeout=timeout) as client:
        return client.status()


def test_a_key_authorized_while_the_node_runs_gets_in_at_once(node, tmp_path):
    node, endpoint = node
    folder = new_client(tmp_path, node.name, "laptop")
    with pytest.raises(TimeoutError):  # not authorized yet: no answer
        status_over_tcp(endpoint, folder, timeout=0.5)
    result = otpy_cli("keys", "authorize", node.name, str(folder / "laptop.key"))
    assert result.exit_code == 0, result.output
    assert "lets this key in from its next connection on" in result.stdout
    assert status_over_tcp(endpoint, folder).node == node.name  # no restart


def test_a_revoked_key_is_refused_at_its_next_handshake_and_the_node_goes_on(node, tmp_path):
    node, endpoint = node
    folder = new_client(tmp_path, node.name, "laptop")
    assert otpy_cli("keys", "authorize", node.name, str(folder / "laptop.key")).exit_code == 0
    assert status_over_tcp(endpoint, folder).node == node.name
    result = otpy_cli("keys", "revoke", node.name, "laptop", "--json")
    assert result.exit_code == 0, result.output
    target = keys_dir(node.name) / "authorized" / "laptop.key"
    assert json.loads(result.stdout) == {"node": node.name, "revoked": str(target)}
    assert not target.exists()
    with pytest.raises(TimeoutError, match="could not be sent|did not answer"):  # nothing at all comes back
        status_over_tcp(endpoint, folder, timeout=1.0)
    assert node.which_children("root")[0].pid is not None  # the node is unaffected
    other = tmp_path / "node-client"  # the key pair the node made, still authorized
    other.mkdir(mode=0o700)
    shutil.copy(keys_dir(node.name) / "server.key", other)
    shutil.copy(keys_dir(node.name) / "client.key_secret", other)
    assert status_over_tcp(endpoint, other).node == node.name


def test_a_connection_made_before_the_revocation_gets_no_answer_after_it(node, tmp_path):
    node, endpoint = node
    folder = new_client(tmp_path, node.name, "laptop")
    assert otpy_cli("keys", "authorize", node.name, str(folder / "laptop.key")).exit_code == 0
    with otpy.connect(endpoint=endpoint, keys=folder, timeout=5.0) as client:
        assert client.status().node == node.name  # connected, handshake done
        assert otpy_cli("keys", "revoke", node.name, "laptop.key").exit_code == 0
        with pytest.raises(TimeoutError, match="did not answer within 1.0 s"):
            client.request(otpy.wire.protocol.GetStatus(0), timeout=1.0)
    assert node.status().node == node.name


def test_revoke_says_which_keys_there_are_when_the_name_is_not_one(node, tmp_path):
    node, _ = node
    result = otpy_cli("keys", "revoke", node.name, "nobody")
    assert result.exit_code == 2
    assert stderr_of(result) == (f"otpy: keys revoke: node {node.name!r} has no authorized key 'nobody' (authorized: "
                             "client)\n")
    for name, said in (("../client", "key name"), ("a/b", "key name")):
        refused = otpy_cli("keys", "revoke", node.name, name)
        assert refused.exit_code == 2 and said in refused.stderr, refused.output
    missing = otpy_cli("keys", "revoke", unique_name("none"), "client")
    assert missing.exit_code == 2 and "no node" in missing.stderr
    assert (keys_dir(node.name) / "authorized" / "client.key").exists()


# --- AuthorizedKeys ---------------------------------------------------------------------------

def make_key(folder, name: str) -> bytes:
    public, _ = zmq.auth.create_certificates(folder, name)
    os.unlink(folder / f"{name}.key_secret")
    return zmq.auth.load_certificate(public)[0]


def test_authorized_keys_follow_the_folder(tmp_path):
    keys = AuthorizedKeys(tmp_path)
    assert keys.current() == frozenset()
    first = make_key(tmp_path, "one")
    assert keys.callback("*", first)
    second = make_key(tmp_path, "two")  # within the same clock tick, maybe: still seen
    assert keys.current() == {first, second}
    generation = keys.generation
    (tmp_path / "one.key").unlink()
    assert not keys.callback("*", first) and keys.allows(second.decode())
    assert keys.generation == generation + 1  # a key gone: remote subscribers are cut (node/remote_events)
    assert not keys.allows(None)
    (tmp_path / "link.key").symlink_to(tmp_path / "two.key")
    (tmp_path / "junk.key").write_text("not a key")
    assert keys.current() == {second}  # a symlink and a file that is not a key are skipped
    shutil.rmtree(tmp_path)
    assert keys.current() == frozenset()  # a folder that is gone lets nobody in


def test_authorized_keys_read_a_settled_folder_once(tmp_path, monkeypatch):
    make_key(tmp_path, "one")
    old = time.time() - 10
    os.utime(tmp_path, (old, old))
    reads = []
    real = curve._read_keys
    monkeypatch.setattr(curve, "_read_keys", lambda folder: reads.append(folder) or real(folder))
    monkeypatch.setattr(curve, "TRUST_AFTER_NS", 0)  # the folder's ctime is now: trust it anyway
    keys = AuthorizedKeys(tmp_path)
    for _ in range(100):
        assert len(keys.current()) == 1
    assert len(reads) == 1  # one stat per look afterwards
    make_key(tmp_path, "two")
    assert len(keys.current()) == 2 and len(reads) == 2
