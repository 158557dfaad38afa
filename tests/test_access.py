"""Only the owning user reaches a node's sockets (issue #8, item 6).

The tests run as root, and root bypasses file permissions: the client runs in a forked child
that really drops privileges to ``nobody`` (uid/gid 65534, no supplementary groups) and tries
``connect()`` on each AF_UNIX socket file (what a ZeroMQ ``ipc://`` connect does). Each
layer is checked on its own: the runtime root, the node's folder (0700), and the socket
files (0600), by loosening the layers above it for the duration of the check.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from pathlib import Path

import pytest

import otpy
from otpy.host.runtime_dir import agent_socket_path, agents_dir
from otpy.variables.placement import EVENTS_SOCKET, REGISTRY_ID, with_registry
from otpy.host.runtime_dir import control_endpoint, events_endpoint, runtime_root
from tests.helpers import unique_name

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")]

NOBODY = 65534
def _connect_all(paths: list[str]) -> dict[str, str]:
    out = {}
    for path in paths:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            out[path] = "connected"
        except OSError as e:
            out[path] = errno.errorcode.get(e.errno, str(e.errno))
        finally:
            sock.close()
    return out


def probe(paths: list[str], as_nobody: bool = True) -> dict[str, str]:
    """connect() to each path from a forked child that dropped to ``nobody`` first (the
    interpreter lives under /root, so exec'ing it as nobody is not possible: fork instead)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only syscalls, then _exit
        code = 1
        try:
            os.close(r)
            if as_nobody:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                assert os.getuid() == os.geteuid() == NOBODY
            os.write(w, json.dumps(_connect_all(paths)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the probe failed"
    return json.loads(data)


@pytest.fixture(scope="module")
def node():
    variables = {"global": {"t": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}}}
    root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="echo", program="tests.call_agents:Echo"),))
    node = otpy.Node.from_spec(with_registry(root, variables), name=unique_name("access")).start()
    yield node
    node.stop()


def sockets(node) -> dict[str, str]:
    folder = runtime_root() / node.name
    return {
        "control": control_endpoint(node.name).removeprefix("ipc://"),
        "events": events_endpoint(node.name).removeprefix("ipc://"),
        "registry events": str(folder / EVENTS_SOCKET),
        "agent echo": str(agent_socket_path(node.name, "echo")),
        "agent registry": str(agent_socket_path(node.name, REGISTRY_ID)),
    }


class loosened:
    """chmod folders for the duration of a check, then put their modes back."""

    def __init__(self, *paths: Path, mode: int = 0o711) -> None:
        self.paths, self.mode, self.saved = paths, mode, {}

    def __enter__(self):
        for path in self.paths:
            self.saved[path] = stat.S_IMODE(path.stat().st_mode)
            os.chmod(path, self.mode)

    def __exit__(self, *exc):
        for path, mode in self.saved.items():
            os.chmod(path, mode)


def test_modes_are_private(node):
    folder = runtime_root() / node.name
    for path in (folder, agents_dir(node.name)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        assert path.stat().st_uid == os.getuid()
    for what, path in sockets(node).items():
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode), what
        assert info.st_uid == os.getuid(), what
        if what in ("control", "events", "registry events"):
            assert stat.S_IMODE(info.st_mode) == 0o600, (what, oct(info.st_mode))
        assert not stat.S_IMODE(info.st_mode) & 0o022, f"{what} socket is writable by others: {oct(info.st_mode)}"


def test_the_owner_connects(node):
    """The probe works: as the owner, every socket accepts a connection."""
    assert set(probe(list(sockets(node).values()), as_nobody=False).values()) == {"connected"}


def test_another_user_is_refused_as_the_folders_stand(node):
    refused = probe(list(sockets(node).values()))
    assert set(refused.values()) <= {"EACCES", "EPERM"}, refused


def test_the_node_folder_alone_refuses_another_user(node):
    """The runtime root made traversable: the node's 0700 folder is what refuses."""
    with loosened(runtime_root()):
        refused = probe(list(sockets(node).values()))
    assert set(refused.values()) <= {"EACCES", "EPERM"}, refused


def test_the_socket_files_alone_refuse_another_user(node):
    """Every folder made traversable: the sockets' own modes (0600) are what refuse."""
    folder = runtime_root() / node.name
    with loosened(runtime_root(), folder, agents_dir(node.name)):
        refused = probe(list(sockets(node).values()))
    assert set(refused.values()) <= {"EACCES", "EPERM"}, refused
