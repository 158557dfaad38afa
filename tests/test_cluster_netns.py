"""Several hosts on one machine (tests/netns_lab.py: network namespaces joined by veth pairs): the
multi-host behaviour of issue #18, each host with folders of its own, addressed only by the lab's
own addresses. Needs root and ``ip`` (skipped with the reason elsewhere; a failure in CI)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.netns_lab import Lab, lab_or_skip

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 7400  # every host is a network of its own: a fixed port is free there


def otpy(lab: Lab, host: str, *args: str, timeout: float = 60, env: dict | None = None):
    """``otpy ARGS`` run to its end on ``host`` (from the repository root: tests' programs import)."""
    return lab.run(host, [sys.executable, "-m", "otpy", *args], cwd=ROOT, timeout=timeout, env=env)


def ok(done) -> str:
    assert done.returncode == 0, f"{done.args[4:]} exit {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def write_topology(lab: Lab, host: str, name: str, body: str) -> Path:
    path = lab.hosts[host].folder / f"{name}.toml"
    path.write_text(body)
    return path


def remote_topology(lab: Lab, host: str, name: str) -> str:
    return (f'[node]\nname = "{name}"\ncontrol_tcp = "tcp://{lab.address(host)}:{PORT}"\n\n[supervisor]\n\n'
            '[[supervisor.children]]\nid = "greeter"\nprogram = "tests.bound_agents:Alpha"\n')


def new_keys(lab: Lab, host: str, folder: str, name: str = "client") -> Path:
    path = lab.hosts[host].folder / folder
    ok(otpy(lab, host, "keys", "new", str(path), "--name", name))
    return path


@pytest.fixture(scope="module")
def lab():
    with lab_or_skip(("alpha", "beta")) as made:
        yield made


@pytest.fixture(scope="module")
def remote(lab):
    """Node ``b`` on beta serving control_tcp, and a keys folder on alpha that beta authorized
    (as docs/cli.md does it: keys new on the client, authorize on the node's host, restart)."""
    topology = write_topology(lab, "beta", "b", remote_topology(lab, "beta", "b"))
    ok(otpy(lab, "beta", "start", str(topology), "--detach"))
    keys = new_keys(lab, "alpha", "keys", "laptop")
    ok(otpy(lab, "beta", "keys", "authorize", "b", str(keys / "laptop.key")))
    ok(otpy(lab, "beta", "stop", "--node", "b"))
    ok(otpy(lab, "beta", "start", str(topology), "--detach"))
    shutil.copy(lab.hosts["beta"].folder / "run" / "b" / "curve" / "server.key", keys)
    yield {"endpoint": f"tcp://{lab.address('beta')}:{PORT}", "keys": keys, "topology": topology}
    otpy(lab, "beta", "stop", "--node", "b")


def greeter_pid(lab: Lab, remote: dict) -> int:
    report = json.loads(ok(otpy(lab, "alpha", "status", "--endpoint", remote["endpoint"], "--keys",
                                str(remote["keys"]), "--json")))
    [greeter] = report["tree"]["children"]
    assert greeter["id"] == "greeter" and greeter["state"] == "running"
    return greeter["pid"]


# --- remote control ----------------------------------------------------------------------------

def test_status_and_a_restart_from_another_host_over_curve_tcp(lab, remote):
    report = json.loads(ok(otpy(lab, "alpha", "status", "--endpoint", remote["endpoint"], "--keys",
                                str(remote["keys"]), "--json")))
    assert report["node"] == "b"
    assert [(c["id"], c["state"]) for c in report["tree"]["children"]] == [("greeter", "running")]
    before = report["tree"]["children"][0]["pid"]
    restarted = json.loads(ok(otpy(lab, "alpha", "restart", "greeter", "--endpoint", remote["endpoint"],
                                   "--keys", str(remote["keys"]), "--json")))
    assert restarted["outcome"] == "ok" and restarted["pid"] != before
    assert greeter_pid(lab, remote) == restarted["pid"]
    local = otpy(lab, "alpha", "status", "--node", "b")  # alpha is another host: no node b in its folders
    assert local.returncode == 3 and "no node 'b' is running" in local.stderr


STRANGER = """
import sys, otpy
client = otpy.connect(endpoint=sys.argv[1], keys=sys.argv[2], timeout=1)
for name, ask in [("status", client.status), ("restart_child", lambda: client.restart_child("greeter")),
                  ("terminate_child", lambda: client.terminate_child("greeter")), ("stop", lambda: client.stop(timeout=1))]:
    try:
        print(name, "answered", ask())
    except TimeoutError:
        print(name, "nothing")
client.close()
"""


def test_a_client_without_an_allowed_key_gets_nothing_from_remote_control(lab, remote):
    stranger = new_keys(lab, "alpha", "stranger")
    shutil.copy(remote["keys"] / "server.key", stranger)  # it knows the node's public key: not enough
    pid = greeter_pid(lab, remote)
    done = otpy(lab, "alpha", "status", "--endpoint", remote["endpoint"], "--keys", str(stranger), "--timeout", "1")
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert "did not answer within 1.0 s" in done.stderr
    asked = lab.run("alpha", [sys.executable, "-c", STRANGER, remote["endpoint"], str(stranger)], cwd=ROOT)
    assert asked.stdout.splitlines() == ["status nothing", "restart_child nothing", "terminate_child nothing",
                                         "stop nothing"], asked.stderr
    assert greeter_pid(lab, remote) == pid  # nothing was done: the same child, the node still up
