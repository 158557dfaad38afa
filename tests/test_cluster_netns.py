"""Several hosts on one machine (tests/netns_lab.py: network namespaces joined by veth pairs): the
multi-host behaviour of issue #18, each host with folders of its own, addressed only by the lab's
own addresses. Needs root and ``ip`` (skipped with the reason elsewhere; a failure in CI)."""

from __future__ import annotations

import json
import os
import time
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


def b_topology(lab: Lab) -> str:
    children = "".join(f'\n[[supervisor.children]]\nid = "{id}"\nprogram = "tests.{program}"\n' for id, program in
                       [("greeter", "bound_agents:Alpha"), ("echo", "call_agents:Echo"),
                        ("raises", "call_agents:Raises"), ("slow", "call_agents:Slow")])
    return f'[node]\nname = "b"\ncontrol_tcp = "tcp://{lab.address("beta")}:{PORT}"\n\n[supervisor]\n{children}'


def a_topology(lab: Lab) -> str:
    return (f'[node]\nname = "a"\ncontrol_tcp = "tcp://{lab.address("alpha")}:{PORT}"\n\n[cluster]\n'
            'file = "cluster.toml"\n\n[supervisor]\n\n[[supervisor.children]]\nid = "relay"\n'
            'program = "tests.call_agents:CallsOther"\n')


def server_key(lab: Lab, host: str, node: str) -> Path:
    """Node ``node``'s public key file on ``host`` (where that host's otpy keeps it)."""
    code = "import sys; from otpy.wire.curve import keys_dir; print(keys_dir(sys.argv[1]) / 'server.key')"
    return Path(ok(lab.run(host, [sys.executable, "-c", code, node], cwd=ROOT)).strip())


def new_keys(lab: Lab, host: str, folder: str, name: str = "client") -> Path:
    path = lab.hosts[host].folder / folder
    path.parent.mkdir(mode=0o700, exist_ok=True)
    ok(otpy(lab, host, "keys", "new", str(path), "--name", name))
    return path


@pytest.fixture(scope="module")
def lab():
    """alpha and beta run nodes; gamma, when a test needs it, the PostgreSQL server."""
    with lab_or_skip(("alpha", "beta", "gamma")) as made:
        yield made


@pytest.fixture(scope="module")
def database(lab):
    return lab.postgres("gamma")


@pytest.fixture(scope="module")
def remote(lab):
    """Node ``b`` on beta serving control_tcp; on alpha a keys folder that b authorized (as
    docs/cli.md does it: keys new on the client, authorize on the node's host after b's first
    start, b's server.key copied to the client), a cluster file naming b, and node ``a`` running
    with that [cluster]."""
    alpha = lab.hosts["alpha"].folder
    keys = new_keys(lab, "alpha", "keys/b", "alpha")
    topology = write_topology(lab, "beta", "b", b_topology(lab))
    ok(otpy(lab, "beta", "start", str(topology), "--detach"))
    ok(otpy(lab, "beta", "keys", "authorize", "b", str(keys / "alpha.key")))
    shutil.copy(server_key(lab, "beta", "b"), keys)
    (alpha / "cluster.toml").write_text(f'[nodes.b]\nendpoint = "tcp://{lab.address("beta")}:{PORT}"\nkeys = "keys/b"\n')
    ok(otpy(lab, "alpha", "start", str(write_topology(lab, "alpha", "a", a_topology(lab))), "--detach"))
    yield {"endpoint": f"tcp://{lab.address('beta')}:{PORT}", "keys": keys, "cluster": alpha / "cluster.toml"}
    otpy(lab, "alpha", "stop", "--node", "a")
    otpy(lab, "beta", "stop", "--node", "b")


@pytest.fixture(scope="module")
def stranger(lab, remote):
    """A keys folder on alpha whose key b never authorized, with b's server.key (knowing it is not enough)."""
    folder = new_keys(lab, "alpha", "keys/stranger")
    shutil.copy(remote["keys"] / "server.key", folder)
    return folder


def greeter_pid(lab: Lab, remote: dict) -> int:
    report = json.loads(ok(otpy(lab, "alpha", "status", "--endpoint", remote["endpoint"], "--keys",
                                str(remote["keys"]), "--json")))
    [greeter] = [c for c in report["tree"]["children"] if c["id"] == "greeter"]
    assert greeter["state"] == "running"
    return greeter["pid"]


# --- remote control ----------------------------------------------------------------------------

def test_status_and_a_restart_from_another_host_over_curve_tcp(lab, remote):
    report = json.loads(ok(otpy(lab, "alpha", "status", "--endpoint", remote["endpoint"], "--keys",
                                str(remote["keys"]), "--json")))
    assert report["node"] == "b"
    assert [(c["id"], c["state"]) for c in report["tree"]["children"]] == [
        ("greeter", "running"), ("echo", "running"), ("raises", "running"), ("slow", "running")]
    before = report["tree"]["children"][0]["pid"]
    restarted = json.loads(ok(otpy(lab, "alpha", "restart", "greeter", "--endpoint", remote["endpoint"],
                                   "--keys", str(remote["keys"]), "--json")))
    assert restarted["outcome"] == "ok" and restarted["pid"] != before
    assert greeter_pid(lab, remote) == restarted["pid"]
    local = otpy(lab, "alpha", "status", "--node", "b")  # alpha is another host: no node b in its folders
    assert local.returncode == 3 and "no node 'b' is running" in local.stderr


def test_events_followed_from_another_host_and_refused_to_a_stranger(lab, remote, stranger):
    import select
    import subprocess

    events = lab.popen("alpha", [sys.executable, "-m", "otpy", "events", "--endpoint", remote["endpoint"], "--keys",
                                 str(remote["keys"]), "--json"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    seen: list[dict] = []
    started: set[int] = set()  # the pids the restarts made

    def a_restart_was_seen() -> bool:
        return any(e["kind"] == "started" and e["child"] == "greeter" and e["pid"] in started for e in seen)

    try:
        deadline = time.monotonic() + 30
        # The subscription is live once its handshake is done: restart until one is seen.
        while not a_restart_was_seen():
            assert time.monotonic() < deadline, seen
            started.add(json.loads(ok(otpy(lab, "alpha", "restart", "greeter", "--endpoint", remote["endpoint"],
                                           "--keys", str(remote["keys"]), "--json")))["pid"])
            while not a_restart_was_seen() and select.select([events.stdout], [], [], 1.0)[0]:
                seen.append(json.loads(events.stdout.readline()))
    finally:
        events.terminate()
        events.wait(10)
    assert all(e["node"] == "b" for e in seen)
    refused = otpy(lab, "alpha", "events", "--endpoint", remote["endpoint"], "--keys", str(stranger), "--timeout", "3")
    assert refused.returncode == 1 and refused.stdout == "", refused.stderr


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


def test_a_client_without_an_allowed_key_gets_nothing_from_remote_control(lab, remote, stranger):
    pid = greeter_pid(lab, remote)
    done = otpy(lab, "alpha", "status", "--endpoint", remote["endpoint"], "--keys", str(stranger), "--timeout", "1")
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert "did not answer within 1.0 s" in done.stderr
    asked = lab.run("alpha", [sys.executable, "-c", STRANGER, remote["endpoint"], str(stranger)], cwd=ROOT)
    assert asked.stdout.splitlines() == ["status nothing", "restart_child nothing", "terminate_child nothing",
                                         "stop nothing"], asked.stderr
    assert greeter_pid(lab, remote) == pid  # nothing was done: the same child, the node still up


# --- cross-node calls ----------------------------------------------------------------------------

CALLS = """
import json, sys
from otpy.topology.cluster import load_cluster
from otpy.wire.calls import Caller
from otpy.wire.errors import CallError

with Caller("a", cluster=load_cluster(sys.argv[1])) as caller:
    for target, inputs in [("echo@b", {"x": 1}), ("nope@b", {}), ("raises@b", {"x": 2}), ("raises@b", {"ok": 1})]:
        try:
            print(target, json.dumps(caller.call(target, inputs, timeout=10)))
        except CallError as exc:
            print(target, type(exc).__name__, exc)
"""


def local_echo_pid(lab: Lab) -> int:
    return json.loads(ok(otpy(lab, "beta", "call", "echo", "--node", "b")))["pid"]


def test_a_call_from_one_host_reaches_an_agent_of_a_node_on_another(lab, remote):
    pid = local_echo_pid(lab)
    by_cluster = otpy(lab, "alpha", "call", "echo@b", "--cluster", str(remote["cluster"]), "--input", '{"x": 1}')
    assert json.loads(ok(by_cluster)) == {"x": 1, "pid": pid}
    by_endpoint = otpy(lab, "alpha", "call", "echo", "--endpoint", remote["endpoint"], "--keys", str(remote["keys"]),
                       "--input", '{"x": 2}')
    assert json.loads(ok(by_endpoint)) == {"x": 2, "pid": pid}


def test_a_cross_node_call_fails_with_the_typed_errors_of_a_local_one(lab, remote):
    done = lab.run("alpha", [sys.executable, "-c", CALLS, str(remote["cluster"])], cwd=ROOT)
    pid = local_echo_pid(lab)
    assert done.stdout.splitlines() == [
        f'echo@b {{"x": 1, "pid": {pid}}}',
        "nope@b NoSuchAgent node 'b' has no agent 'nope'",
        "raises@b RemoteError ValueError: bad input 2",
        'raises@b {"ok": true}',
    ], done.stderr


def test_an_agent_on_one_host_calls_an_agent_of_a_node_on_another(lab, remote):
    pid = local_echo_pid(lab)
    by_node = otpy(lab, "alpha", "call", "echo@b", "--node", "a", "--input", '{"x": 3}')  # a's [cluster]
    assert json.loads(ok(by_node)) == {"x": 3, "pid": pid}
    relayed = otpy(lab, "alpha", "call", "relay", "--node", "a", "--input", '{"target": "echo@b", "x": 4}')
    assert json.loads(ok(relayed)) == {"via": "relay", "answer": {"x": 4, "pid": pid}}
    missing = otpy(lab, "alpha", "call", "relay", "--node", "a", "--input", '{"target": "nope@b"}')
    assert missing.returncode == 1 and "NoSuchAgent: node 'b' has no agent 'nope'" in missing.stderr


def two_way_topology(lab: Lab, host: str, name: str, other: str, other_host: str) -> str:
    return (f'[node]\nname = "{name}"\ncontrol_tcp = "tcp://{lab.address(host)}:{PORT + 10}"\n\n'
            f'[cluster.nodes.{other}]\nendpoint = "tcp://{lab.address(other_host)}:{PORT + 10}"\n'
            f'keys = "keys/{other}"\n\n[supervisor]\n\n'
            '[[supervisor.children]]\nid = "echo"\nprogram = "tests.call_agents:Echo"\n\n'
            '[[supervisor.children]]\nid = "relay"\nprogram = "tests.call_agents:CallsOther"\n')


def test_two_nodes_that_call_each_other_exchange_keys_before_either_starts(lab):
    """Each host: a key pair for the other node, authorized there, and the other's server.key,
    all before the first start (otpy keys server / authorize); then both start and call each other."""
    pair = {"c": ("alpha", "d", "beta"), "d": ("beta", "c", "alpha")}
    for name, (host, other, other_host) in pair.items():
        new_keys(lab, host, f"keys/{other}", host)
    for name, (host, other, other_host) in pair.items():
        ok(otpy(lab, host, "keys", "authorize", name, str(lab.hosts[other_host].folder / "keys" / name / f"{other_host}.key")))
        shutil.copy(ok(otpy(lab, host, "keys", "server", name)).strip(), lab.hosts[other_host].folder / "keys" / name)
    for name, (host, other, other_host) in pair.items():
        ok(otpy(lab, host, "start", str(write_topology(lab, host, name, two_way_topology(lab, host, name, other,
                                                                                           other_host))), "--detach"))
    try:
        for name, (host, other, _) in pair.items():
            answer = json.loads(ok(otpy(lab, host, "call", "relay", "--node", name, "--input",
                                        json.dumps({"target": f"echo@{other}", "x": name}))))
            assert answer["answer"]["x"] == name and answer["via"] == "relay"
            there = json.loads(ok(otpy(lab, pair[other][0], "call", "echo", "--node", other)))
            assert answer["answer"]["pid"] == there["pid"]  # the other host's agent answered
    finally:
        for name, (host, _, _) in pair.items():
            otpy(lab, host, "stop", "--node", name)


PARTITIONED = """
import sys, time
from otpy.topology.cluster import load_cluster
from otpy.wire.calls import Caller
from otpy.wire.errors import CallError

with Caller("a", cluster=load_cluster(sys.argv[1])) as caller:
    print("before", caller.call("echo@b", {"x": 1}, timeout=5)["x"], flush=True)
    sys.stdin.readline()  # the test cuts beta off
    try:
        print("cut", caller.call("echo@b", {"x": 2}, timeout=2), flush=True)
    except CallError as exc:
        print("cut", type(exc).__name__, flush=True)
    sys.stdin.readline()  # the test puts beta back
    deadline = time.monotonic() + 20
    while True:
        try:
            print("after", caller.call("echo@b", {"x": 3}, timeout=2)["x"], flush=True)
            break
        except CallError as exc:
            if time.monotonic() > deadline:
                print("after", type(exc).__name__, flush=True)
                break
"""


def test_a_call_to_a_host_cut_off_times_out_and_the_same_caller_reaches_it_once_it_is_back(lab, remote):
    import subprocess

    proc = lab.popen("alpha", [sys.executable, "-c", PARTITIONED, str(remote["cluster"])], cwd=ROOT,
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "before 1\n"
        lab.disconnect("beta")
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "cut CallTimeout\n"  # nothing answers: as a node that is down
        finally:
            lab.reconnect("beta")
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "after 3\n"
    finally:
        proc.kill()
        proc.wait(10)


STRANGER_CALL = """
import sys
from otpy.wire.errors import CallError
from otpy.wire.remote_calls import RemoteCaller

with RemoteCaller(sys.argv[1], keys=sys.argv[2], name="b") as caller:
    try:
        print("answered", caller.call("slow", {"seconds": 0, "mark": sys.argv[3]}, timeout=3))
    except CallError as exc:
        print(type(exc).__name__)
"""


def test_a_client_without_an_allowed_key_gets_nothing_from_calls(lab, remote, stranger):
    mark = lab.folder / "slow-ran"
    refused = lab.run("alpha", [sys.executable, "-c", STRANGER_CALL, remote["endpoint"], str(stranger), str(mark)],
                      cwd=ROOT)
    assert refused.stdout == "NodeUnreachable\n", refused.stderr  # the key refused: said at once, not a timeout
    assert not mark.exists()  # the agent never ran
    allowed = lab.run("alpha", [sys.executable, "-c", STRANGER_CALL, remote["endpoint"], str(remote["keys"]),
                                str(mark)], cwd=ROOT)
    assert allowed.stdout.startswith("answered") and mark.exists(), allowed.stderr


# --- one variable space on PostgreSQL ---------------------------------------------------------------

def shared_topology(name: str, url: str) -> str:
    return f"""[node]
name = "{name}"

[registry]
storage = "{url}"

[variables.global]
classifier = {{ type = "module", modules = ["tests.bound_agents:Alpha", "tests.bound_agents:Beta"], default = "tests.bound_agents:Alpha" }}
knob = {{ type = "float", low = 0, high = 1, default = 0.5 }}
count = {{ type = "integer", low = 0, high = 1000000, default = 0 }}

[supervisor]

[[supervisor.children]]
id = "worker"
program = {{ variable = "global.classifier" }}

[[supervisor.children]]
id = "shows"
program = "tests.registry_agents:Shows"
"""


def start_shared(lab: Lab, url: str, names=("va", "vb")) -> list[str]:
    """Node names[0] on alpha and names[1] on beta, both on the database ``url``."""
    for host, name in zip(("alpha", "beta"), names):
        ok(otpy(lab, host, "start", str(write_topology(lab, host, name, shared_topology(name, url))), "--detach"))
    return list(names)


WAIT_FOR = """
import json, sys, time
import otpy

node, agent, key, want = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
deadline = time.monotonic() + float(sys.argv[5])
seen = None
with otpy.Caller(node) as caller:
    while time.monotonic() < deadline:
        reply = caller.call(agent, {}, timeout=5)
        seen = reply
        for part in key.split("."):
            seen = seen.get(part) if isinstance(seen, dict) else None
        if seen == want:
            print(json.dumps(reply))
            sys.exit(0)
        time.sleep(0.02)
print("not seen; last:", json.dumps(seen))
sys.exit(1)
"""


def wait_on(lab: Lab, host: str, node: str, agent: str, key: str, want, timeout: float = 15) -> dict:
    """On ``host``, call ``agent`` of ``node`` until its answer's ``key`` (a.b path) is ``want``."""
    done = lab.run(host, [sys.executable, "-c", WAIT_FOR, node, agent, key, json.dumps(want), str(timeout)], cwd=ROOT,
                   timeout=timeout + 30)
    assert done.returncode == 0, f"{agent} of {node} on {host}: {done.stdout}{done.stderr[-2000:]}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def shared(lab, database):
    names = start_shared(lab, lab.new_database(database))
    yield names
    for host, name in zip(("alpha", "beta"), names):
        otpy(lab, host, "stop", "--node", name)


def test_a_variable_written_on_one_host_reaches_the_program_on_another(lab, shared):
    va, vb = shared
    assert wait_on(lab, "beta", vb, "shows", "config.knob", 0.5)["changes"] == 0
    assert ok(otpy(lab, "alpha", "vars", "set", "global.knob", "0.7", "--node", va)) == "set global.knob 0.5 -> 0.7\n"
    seen = wait_on(lab, "beta", vb, "shows", "config.knob", 0.7)
    assert seen["changes"] == 1  # through on_config, in the same process
    listed = json.loads(ok(otpy(lab, "beta", "vars", "get", "global.knob", "--node", vb)))
    assert listed == 0.7


def test_a_bound_variable_written_on_one_host_switches_the_program_on_another(lab, shared):
    va, vb = shared
    before = wait_on(lab, "beta", vb, "worker", "program", "Alpha")["pid"]
    ok(otpy(lab, "alpha", "vars", "set", "global.classifier", "tests.bound_agents:Beta", "--node", va))
    after = wait_on(lab, "beta", vb, "worker", "program", "Beta")
    assert after["pid"] != before  # b's own tree replaced its child: make, then break
    assert wait_on(lab, "alpha", va, "worker", "program", "Beta")["program"] == "Beta"
    log = (lab.hosts["beta"].folder / "state" / "otpy" / vb / "logs" / "node.log").read_text()
    assert "another node set global.classifier = 'tests.bound_agents:Beta'" in log


@pytest.mark.timeout(180)
def test_a_node_cut_off_from_the_database_keeps_its_children_refuses_writes_and_catches_up(lab, shared):
    va, vb = shared
    before = json.loads(ok(otpy(lab, "beta", "call", "shows", "--node", vb)))
    knob = before["config"]["knob"]
    assert knob != 0.25
    lab.disconnect("beta")  # beta loses the network: the database on gamma, and alpha
    try:
        assert ok(otpy(lab, "alpha", "vars", "set", "global.knob", "0.25", "--node", va)) == f"set global.knob {knob} -> 0.25\n"
        refused = otpy(lab, "beta", "vars", "set", "global.knob", "0.5", "--node", vb)
        assert refused.returncode == 1 and "unreachable" in refused.stderr and "not stored" in refused.stderr, \
            refused.stderr
        still = wait_on(lab, "beta", vb, "shows", "config.knob", knob)  # the same child, the last values
        assert still["pid"] == before["pid"]
    finally:
        lab.reconnect("beta")
    caught_up = wait_on(lab, "beta", vb, "shows", "config.knob", 0.25, timeout=30)
    assert caught_up["pid"] == before["pid"]
    assert json.loads(ok(otpy(lab, "beta", "vars", "get", "global.knob", "--node", vb))) == 0.25


WRITER = """
import json, sys, os, otpy
from otpy.wire.protocol import Outcome

node, stop = sys.argv[1], sys.argv[2]
i = 0
with otpy.connect(node, timeout=20) as client:
    while not os.path.exists(stop):
        i += 1
        try:
            outcome = client.set_variables("global", {"count": i})
            print(json.dumps([i, outcome.outcome, outcome.detail]), flush=True)
        except Exception as exc:  # an outcome unknown to the writer
            print(json.dumps([i, "error", f"{type(exc).__name__}: {exc}"]), flush=True)
"""


@pytest.mark.timeout(180)
def test_a_database_restart_in_the_middle_of_writes_loses_no_acknowledged_write(lab, database):
    va, vb = start_shared(lab, lab.new_database(database), names=("wa", "wb"))
    stop = lab.folder / "stop-writing"
    writer = lab.popen("alpha", [sys.executable, "-u", "-c", WRITER, va, str(stop)], cwd=ROOT,
                       stdout=__import__("subprocess").PIPE, text=True)
    written: list = []

    def read_until(predicate, timeout=60):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"writer: {written[-5:]}"
            line = writer.stdout.readline()
            assert line, f"the writer ended: {written[-5:]}"
            written.append(json.loads(line))

    try:
        read_until(lambda: sum(w[1] == "ok" for w in written) >= 20)
        database.restart(immediate=True)  # a crash: no checkpoint, then up again on the same port
        restarted_at = len(written)
        read_until(lambda: sum(w[1] == "ok" for w in written[restarted_at:]) >= 20)
    finally:
        stop.write_text("")
        for line in writer.stdout:
            written.append(json.loads(line))
        writer.wait(30)
    acknowledged = [i for i, outcome, _ in written if outcome == "ok"]
    refused = [i for i, outcome, detail in written if outcome == "unavailable" and "the write was not stored" in detail]
    uncertain = [i for i, outcome, detail in written  # the link broke during its COMMIT: said so
                 if outcome == "unavailable" and "whether the write was stored is not known" in detail]
    other = [w for w in written if w[0] not in {*acknowledged, *refused, *uncertain}]
    assert not other, other  # every write acknowledged, refused as not stored, or said to be not known
    # Every stored write advanced the space's version by one: the count of stored writes, seen on
    # the OTHER node once it caught up, is every acknowledged one (none lost), none of the
    # refused ones, and at most the uncertain ones besides.
    ok(otpy(lab, "alpha", "vars", "set", "global.count", "999999", "--node", va))  # one more, the last
    acknowledged.append(999999)
    wait_on(lab, "beta", vb, "shows", "config.count", 999999, timeout=30)  # beta caught up to it
    listed = json.loads(ok(otpy(lab, "beta", "vars", "list", "--node", vb, "--json")))
    [count] = [v for v in listed if (v["scope"], v["name"]) == ("global", "count")]
    assert len(acknowledged) <= count["version"] <= len(acknowledged) + len(uncertain), \
        (len(acknowledged), len(refused), uncertain, count)
    for host, name in (("alpha", va), ("beta", vb)):
        otpy(lab, host, "stop", "--node", name)


# --- distributed optimization ---------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_an_optimization_with_workers_in_two_hosts_shares_one_study(lab, database):
    import subprocess

    from tests.test_optimize_distributed_programs import TOPOLOGY

    url = lab.new_database(database)
    topology = lab.folder / "optimize.toml"  # the same path on both hosts (one machine's files)
    topology.write_text(TOPOLOGY.format(name="opt", delay=0.5).replace("trials = 8", "trials = 12"))  # slow enough for a joiner to start under load
    leader = lab.popen("alpha", [sys.executable, "-m", "otpy", "optimize", str(topology), "--storage", url,
                                 "--workers", "1", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    said = []
    try:
        while not any("study '" in line for line in said):
            line = leader.stderr.readline()
            assert line, f"the leader ended before naming its study: {''.join(said)}"
            said.append(line)
        study = [line for line in said if "study '" in line][0].split("study '")[1].split("'")[0]
        assert "***" in said[-1] and database.password not in "".join(said)  # the password is never shown
        joined = otpy(lab, "beta", "optimize", "--join", study, "--storage", url, "--workers", "1", "--json",
                      timeout=180)
        out, err = leader.communicate(timeout=180)
    finally:
        if leader.poll() is None:
            leader.kill()
    assert leader.returncode == 0, "".join(said) + err
    led, joiner = json.loads(out), json.loads(ok(joined))
    assert joiner["ran"] > 0 and joiner["study"] == study
    workers = {w["worker"]: w["trials"] for w in led["workers"]}
    assert len(workers) == 2 and sum(workers.values()) == 12, led["workers"]
    [beta_worker] = joiner["workers"]
    assert workers[beta_worker["worker"]] == joiner["ran"]  # the leader counts the trials beta's worker ran
