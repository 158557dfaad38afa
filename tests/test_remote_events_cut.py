"""``otpy events --endpoint`` when the connection goes silent (finding advA-10): a node frozen by
SIGSTOP keeps its TCP connection open in the kernel (no FIN, no RST), as a cut network does; the
ZMTP heartbeats end the connection, and the command exits 1 once it is not made again within
the reconnection grace."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import otpy
from otpy.node.remote_events import HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS, RECONNECT_GRACE_S
from tests.helpers import unique_name, wait_dead
from tests.test_reload import sleeper
from tests.test_remote_cli import free_port, node_client_keys

ROOT = Path(__file__).resolve().parent.parent


def otpy_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(90)
def test_events_over_tcp_exits_1_when_the_node_goes_silent(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    name = unique_name("cut")
    path = tmp_path / "topology.toml"
    path.write_text(f'[node]\nname = "{name}"\ncontrol_tcp = "{endpoint}"\n\n[supervisor]\nid = "root"\n\n'
                    f'[[supervisor.children]]\n{sleeper("a")}')
    started = otpy_cli("start", str(path), "--detach")
    assert started.returncode == 0, started.stderr
    with otpy.connect(name) as client:
        pid = client.status().pid
    watcher = None
    try:
        keys = node_client_keys(tmp_path, name)
        watcher = subprocess.Popen([sys.executable, "-m", "otpy", "events", "--endpoint", endpoint, "--keys",
                                    str(keys), "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout], daemon=True).start()
        deadline = time.monotonic() + 20
        while True:  # connected and subscribed: an event comes through
            assert time.monotonic() < deadline, "no event printed"
            with otpy.connect(name) as client:
                client.terminate_child("a")
                client.restart_child("a")
            try:
                assert json.loads(lines.get(timeout=0.5))["node"] == name
                break
            except queue.Empty:
                pass
        os.kill(pid, signal.SIGSTOP)  # the kernel keeps the connection; nothing answers on it
        frozen = time.monotonic()
        limit = (HEARTBEAT_IVL_MS + HEARTBEAT_TIMEOUT_MS) / 1000 + RECONNECT_GRACE_S + 5
        try:
            code = watcher.wait(limit)
        except subprocess.TimeoutExpired:
            pytest.fail(f"otpy events --endpoint still running {limit} s after the node froze")
        took = time.monotonic() - frozen
        said = watcher.stderr.read()
        assert code == 1 and "was not made again within 5.0 s" in said, said
        assert took >= RECONNECT_GRACE_S, took  # the grace was given
        print(f"exit 1 after {took:.1f} s")
    finally:
        os.kill(pid, signal.SIGCONT)
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        otpy_cli("stop", "--node", name)
        assert wait_dead([pid], 10) == []
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
