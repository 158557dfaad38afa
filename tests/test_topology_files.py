"""Topology files are read safely (``topology.load.read_topology_file``): only a regular file of
at most ``MAX_TOPOLOGY_BYTES`` is read, so a FIFO never blocks and ``/dev/zero`` never fills
the memory of ``otpy validate`` / ``otpy reload`` or of a node reloading on SIGHUP."""

from __future__ import annotations

import os
import signal

import pytest

import otpy
from otpy.topology.load import MAX_TOPOLOGY_BYTES, TopologyError, load_topology
from tests.helpers import unique_name, wait_dead
from tests.test_reload import otpy_cli, sleeper, status_pids, topology

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def detached(tmp_path):
    """``detached(text)``: ``otpy start --detach`` of the topology; its pid; killed at the end if
    the test did not stop it (a FIFO's reader, blocked, would keep it alive)."""
    started = []

    def start(text: str) -> tuple[os.PathLike, int]:
        path = tmp_path / "topology.toml"
        path.write_text(text)
        done = otpy_cli("start", str(path), "--detach")
        assert done.returncode == 0, done.stderr
        with otpy.connect(load_topology(path, check_imports=False).node.name) as client:
            started.append(client.status().pid)
        return path, started[-1]

    yield start
    for pid in started:
        try:
            if wait_dead([pid], 1):
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.toml"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_without_waiting_for_a_writer(fifo):
    with pytest.raises(TopologyError, match="FIFO .*not a regular file"):
        load_topology(fifo, check_imports=False)


def test_a_device_is_refused_unread():
    with pytest.raises(TopologyError, match="/dev/zero: .*character device"):
        load_topology("/dev/zero", check_imports=False)


def test_a_file_over_the_limit_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text("# padding\n" * (MAX_TOPOLOGY_BYTES // 10 + 1))
    with pytest.raises(TopologyError, match=f"{path}: .* over the 1 MiB"):
        load_topology(path, check_imports=False)


def test_a_symlink_to_a_topology_file_is_followed(tmp_path):
    real = tmp_path / "real.toml"
    real.write_text(topology("linked", sleeper("a")))
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    assert [c.id for c in load_topology(link, check_imports=False).node.root.children] == ["a"]


@pytest.mark.parametrize("what", ["fifo", "/dev/zero", "big"])
def test_otpy_validate_refuses_it_in_one_line_with_exit_2(what, fifo, tmp_path):
    path = {"fifo": str(fifo), "/dev/zero": "/dev/zero", "big": str(tmp_path / "big.toml")}[what]
    if what == "big":
        padding = "#" * 99 + "\n"  # a valid topology, but over the limit
        (tmp_path / "big.toml").write_text(topology("big", sleeper("a")) + padding * (MAX_TOPOLOGY_BYTES // 100))
    done = otpy_cli("validate", path, timeout=30)  # the old code hung (FIFO) or grew without bound
    assert done.returncode == 2, done
    assert len(done.stderr.strip().splitlines()) == 1 and path in done.stderr, done.stderr


def test_sighup_with_the_nodes_file_replaced_by_a_fifo_leaves_it_serving_and_stoppable(detached):
    name = unique_name("fifo")
    path, node_pid = detached(topology(name, sleeper("a")))
    before = status_pids(name)
    path.unlink()
    os.mkfifo(path)
    os.kill(node_pid, signal.SIGHUP)
    refused = otpy_cli("reload", "--node", name, timeout=30)  # the node reads its own file: refused, at once
    assert refused.returncode == 2 and "FIFO" in refused.stderr, refused
    assert status_pids(name) == before
    stopped = otpy_cli("stop", "--node", name, timeout=30)  # a thread blocked on the FIFO kept the node alive
    assert stopped.returncode == 0, stopped
    assert wait_dead([node_pid, before["a"]], 10) == []
