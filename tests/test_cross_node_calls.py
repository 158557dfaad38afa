"""Cross-node calls: ``AGENT@NODE`` between two real nodes on 127.0.0.1, through the call gateway
of the called node (``node.call_gateway``) and ``RemoteCaller``: every outcome a local call has,
and the remote link's own (``NodeUnreachable``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time

import pytest
import zmq.auth

import otpy
from otpy.host.runtime_dir import node_dir, write_private
from otpy.wire.calls import Caller
from otpy.wire.curve import keys_dir
from otpy.wire.errors import (AgentCrashed, CallError, CallTimeout, NodeUnreachable, NoSuchAgent, Overloaded,
                              RemoteError, Unencodable)
from otpy.wire.remote_calls import RemoteCaller
from otpy.wire.remote_cluster import CLUSTER_FILE, ClusterNode, ClusterSpec, encode_cluster
from tests.helpers import free_node_port, Events, unique_name, wait_until

pytestmark = pytest.mark.timeout(60)


free_port_pair = free_node_port  # P, P+1 (calls) and P+2 (events) free


def agent(id: str, name: str, **args) -> otpy.ChildSpec:
    return otpy.ChildSpec(id=id, program=f"tests.call_agents:{name}", args=args)


def start_node(prefix: str, *children: otpy.ChildSpec) -> tuple[otpy.Node, str]:
    endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
    spec = otpy.NodeSpec(name=unique_name(prefix), control_tcp=endpoint,
                         root=otpy.SupervisorSpec(id="root", max_restarts=20, children=children))
    return otpy.Node(spec).start(), endpoint


def client_keys(folder, node_name: str):
    """A client keys folder for ``node_name``: its server.key and the client key pair it authorized."""
    folder.mkdir(mode=0o700)
    shutil.copy(keys_dir(node_name) / "server.key", folder)
    shutil.copy(keys_dir(node_name) / "client.key_secret", folder)
    return folder


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    node, endpoint = start_node("b", agent("echo", "Echo"), agent("slow", "Slow"), agent("victim", "Slow"),
                                agent("raises", "Raises"), agent("relay", "CallsOther"))
    node.events = Events(node)
    node.endpoint = endpoint
    node.keys = client_keys(tmp_path_factory.mktemp("keys") / "b", node.name)
    node.cluster = ClusterSpec(source="test-cluster.toml", nodes={node.name: ClusterNode(endpoint, str(node.keys))})
    yield node
    node.stop()


@pytest.fixture()
def caller(b):
    with Caller("a-caller", cluster=b.cluster) as caller:
        yield caller


def test_a_call_to_agent_at_node_returns_its_outputs(b, caller):
    at = f"echo@{b.name}"
    answer = caller.call(at, {"text": "hi"})
    assert answer["text"] == "hi" and answer["pid"] == b.which_children("root")[0].pid
    assert caller.submit(at, {"n": 2}).result(5)["n"] == 2
    assert asyncio.run(caller.acall(at, {"n": 3}))["n"] == 3
    futures = [caller.submit(at, {"i": i}) for i in range(100)]
    assert [f.result(5)["i"] for f in futures] == list(range(100))


def test_a_remote_caller_calls_an_agent_by_the_nodes_endpoint(b):
    with RemoteCaller(b.endpoint, b.keys, name=b.name) as remote:
        assert remote.call("echo", {"x": 1})["x"] == 1
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(remote.call("echo", {"i": i})["i"]))
                   for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == list(range(8))


def test_a_missing_agent_or_node_is_no_such_agent(b, caller):
    with pytest.raises(NoSuchAgent, match="has no agent 'ghost'") as raised:
        caller.call(f"ghost@{b.name}", {})
    assert raised.value.agent == f"ghost@{b.name}"
    with pytest.raises(NoSuchAgent, match="no node 'nowhere' in the cluster test-cluster.toml"):
        caller.call("echo@nowhere", {})
    with pytest.raises(NoSuchAgent):
        caller.call(f"../x@{b.name}", {})
    with Caller("lonely") as alone:  # no cluster at all
        with pytest.raises(NoSuchAgent, match="runs without a \\[cluster\\]"):
            alone.call(f"echo@{b.name}", {})


def test_the_remote_agent_raising_is_a_remote_error(b, caller):
    with pytest.raises(RemoteError) as raised:
        caller.call(f"raises@{b.name}", {"x": 7})
    assert raised.value.error_type == "ValueError" and "bad input 7" in str(raised.value)
    assert "Traceback" in raised.value.remote_traceback


def test_a_slow_remote_agent_is_a_call_timeout(b, caller):
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        caller.call(f"slow@{b.name}", {"seconds": 2}, timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_the_remote_agent_killed_mid_call_is_agent_crashed(b, caller, tmp_path):
    caller.call(f"victim@{b.name}", {"seconds": 0}, timeout=10)  # the gateway's link to it is up: the call is in flight
    mark = tmp_path / "running"
    future = caller.submit(f"victim@{b.name}", {"seconds": 30, "mark": str(mark)}, timeout=20)
    wait_until(mark.exists, 10)
    os.kill(int(mark.read_text()), signal.SIGKILL)
    with pytest.raises(AgentCrashed):
        future.result(10)
    b.events.wait("started", "victim")
    assert caller.call(f"victim@{b.name}", {"seconds": 0}, timeout=10)["seconds"] == 0  # the replacement


def test_calls_during_a_drain_reach_the_replacement_and_none_fails(b, caller):
    """The gateway makes the local call where the agent is: a call the draining agent refused
    is sent once more, to the name's next holder; the caller on the other host sees no error."""
    stop, failures, answered = threading.Event(), [], []
    at = f"victim@{b.name}"
    caller.call(at, {"seconds": 0}, timeout=10)

    def keep_calling() -> None:
        while not stop.is_set():
            try:
                answered.append(caller.call(at, {"seconds": 0}, timeout=20)["end"])
            except CallError as exc:
                failures.append(exc)

    busy = caller.submit(at, {"seconds": 0.3}, timeout=20)  # in flight when SIGTERM comes
    loop = threading.Thread(target=keep_calling)
    loop.start()
    try:
        wait_until(lambda: len(answered) > 0)
        assert b.terminate_child("victim").outcome == "ok"
        count = len(answered)
        assert b.restart_child("victim").outcome == "ok"
        wait_until(lambda: len(answered) > count + 3, 10)
    finally:
        stop.set()
        loop.join()
    assert busy.result(10)["seconds"] == 0.3
    assert failures == []


def test_retries_resend_a_timed_out_call(b, caller):
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        caller.call(f"slow@{b.name}", {"seconds": 1}, timeout=0.2, retries=2)
    assert time.monotonic() - started >= 0.55  # three attempts


def test_oversized_or_deep_inputs_are_refused_at_once_as_locally(b, caller):
    with pytest.raises(Unencodable, match="over the limit"):
        caller.call(f"echo@{b.name}", {"blob": b"x" * (17 << 20)})
    deep: list = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(Unencodable, match="'deep'"):
        caller.call(f"echo@{b.name}", {"deep": deep})
    with pytest.raises(Unencodable, match="'handle'"):
        caller.call(f"echo@{b.name}", {"handle": object()})
    assert caller.call(f"echo@{b.name}", {"ok": 1})["ok"] == 1


def test_a_deep_call_sent_by_hand_is_refused_by_the_agent_and_the_node_goes_on(b):
    """Inputs that never went through the client's checks: the agent refuses them (bad_request)."""
    from otpy.wire.call_book import BlockingResult
    from otpy.wire.errors import BadRequest
    from otpy.wire.remote_calls import _Call

    with RemoteCaller(b.endpoint, b.keys) as remote:
        deep = b"\x81\xa1d" + b"\x91" * 300 + b"\xc0"  # msgpack {"d": [[[...nil]]]}, 300 deep
        call = _Call("echo", "echo", deep, 5.0, 0, BlockingResult())
        link = remote._enter("echo")
        try:
            link.start(call)
            link.wait(call)
        finally:
            remote._leave(link)
        with pytest.raises(BadRequest):
            call.future.result()
        assert remote.call("echo", {"x": 1})["x"] == 1


def test_too_many_calls_of_one_client_are_overloaded(b, monkeypatch):
    from otpy.node import call_gateway

    monkeypatch.setattr(call_gateway, "MAX_PER_CLIENT", 2)
    with RemoteCaller(b.endpoint, b.keys) as remote:
        futures = [remote.submit("slow", {"seconds": 0.5}, timeout=10) for _ in range(4)]
        errors = [f.exception(10) for f in futures]
    assert sum(isinstance(e, Overloaded) for e in errors) == 2, errors
    assert sum(e is None for e in errors) == 2


def test_a_client_whose_key_is_not_authorized_gets_nothing(b, tmp_path):
    folder = tmp_path / "stranger"
    folder.mkdir(mode=0o700)
    zmq.auth.create_certificates(folder, "stranger")
    (folder / "stranger.key").unlink()
    (folder / "stranger.key_secret").chmod(0o600)
    shutil.copy(keys_dir(b.name) / "server.key", folder)
    with RemoteCaller(b.endpoint, folder) as remote:
        started = time.monotonic()
        with pytest.raises((NodeUnreachable, CallTimeout)):
            remote.call("echo", {"x": 1}, timeout=3)
        assert time.monotonic() - started < 3.5
    with RemoteCaller(b.endpoint, b.keys) as remote:  # the node is unaffected
        assert remote.call("echo", {"x": 2})["x"] == 2


def test_the_remote_node_stopped_mid_call_is_node_unreachable_never_a_hang(tmp_path):
    node, endpoint = start_node("c", agent("slow", "Slow"))
    keys = client_keys(tmp_path / "c", node.name)
    stopper = None
    try:
        with RemoteCaller(endpoint, keys, name=node.name) as remote:
            mark = tmp_path / "running"
            future = remote.submit("slow", {"seconds": 60, "mark": str(mark)}, timeout=30)
            wait_until(mark.exists, 10)
            started = time.monotonic()
            stopper = threading.Thread(target=node.stop)
            stopper.start()
            error = future.exception(20)
            assert isinstance(error, (NodeUnreachable, AgentCrashed)), error
            assert time.monotonic() - started < 15
            with pytest.raises((CallTimeout, NodeUnreachable)):  # nobody there now: a deadline, never a hang
                remote.call("slow", {"seconds": 0}, timeout=0.5)
    finally:
        if stopper is not None:
            stopper.join()
        else:
            node.stop()


def test_a_link_lost_mid_call_is_node_unreachable_and_not_resent(tmp_path):
    """The node's gateway goes away under a call (as when its host goes down): the call may have
    run, so it fails with NodeUnreachable, even with retries."""
    node, endpoint = start_node("d", agent("slow", "Slow"))
    keys = client_keys(tmp_path / "d", node.name)
    try:
        with RemoteCaller(endpoint, keys, name=node.name) as remote:
            assert remote.call("slow", {"seconds": 0})["seconds"] == 0
            mark = tmp_path / "running"
            future = remote.submit("slow", {"seconds": 60, "mark": str(mark)}, timeout=30, retries=3)
            wait_until(mark.exists, 10)
            control = next(service for service in node.aio._services if hasattr(service, "_gateway"))
            control._gateway._send = lambda *_: None  # as a host that went away: no last word
            control._gateway.stop()  # its socket closes: the link breaks
            with pytest.raises(NodeUnreachable, match="broke during the call"):
                future.result(10)
    finally:
        node.stop()


def test_an_agent_of_one_node_calls_agent_at_another_through_its_nodes_cluster(b):
    node, _ = start_node("a", agent("relay", "CallsOther"))
    try:
        # what the node writes from its topology's [cluster] when it starts (control server)
        write_private(node_dir(node.name) / CLUSTER_FILE, encode_cluster(b.cluster))
        with Caller(node.name) as caller:
            answer = caller.call("relay", {"target": f"echo@{b.name}", "x": 5}, timeout=10)
        assert answer["via"] == "relay" and answer["answer"]["x"] == 5
        assert answer["answer"]["pid"] == b.which_children("root")[0].pid
    finally:
        node.stop()


def test_a_node_started_from_a_topology_with_a_cluster_gives_it_to_its_agents(b, tmp_path):
    shutil.copytree(b.keys, tmp_path / "keys-b")
    (tmp_path / "cluster.toml").write_text(f'[nodes.{b.name}]\nendpoint = "{b.endpoint}"\nkeys = "keys-b"\n')
    name = unique_name("a")
    (tmp_path / "topology.toml").write_text(
        f'[node]\nname = "{name}"\n\n[cluster]\nfile = "cluster.toml"\n\n'
        '[supervisor]\n\n[[supervisor.children]]\nid = "relay"\nprogram = "tests.call_agents:CallsOther"\n')
    with otpy.Node.from_toml(tmp_path / "topology.toml") as node:
        assert (node_dir(name) / CLUSTER_FILE).exists()
        with Caller(node.name) as caller:
            answer = caller.call("relay", {"target": f"echo@{b.name}", "x": 6}, timeout=10)
        assert answer["answer"]["x"] == 6


def test_pipelines_and_plans_take_remote_agents(b, caller):
    from otpy.optimize.pipeline import Pipeline, PlanError, Stage, parse_step

    at = f"echo@{b.name}"
    result = Pipeline([at, Stage("again", agent=at)]).run({"v": 1}, caller)
    assert result.ok and result.outputs["v"] == 1 and [t[1] for t in result.trace] == [at, at]
    parallel = Pipeline([at, Stage("other", agent=at)], strategy="parallel").run({"v": 2}, caller)
    assert parallel.ok and parallel.outputs["other"]["v"] == 2
    assert parse_step(at).agent == at and parse_step({"step": "s", "agent": at}).agent == at
    for bad in ("../x@b", "echo@", "@b", "echo@b/c"):
        with pytest.raises(PlanError, match="AGENT@NODE"):
            parse_step({"step": "s", "agent": bad})


def test_a_connection_whose_key_is_revoked_gets_no_more_answers(b, tmp_path):
    """The node's allow-list is live: a client connected before `otpy keys revoke` is cut at its
    next call (no answer: CallTimeout), others go on."""
    from otpy.wire.curve import authorize, new_key_pair, revoke

    folder = tmp_path / "late"
    public, _ = new_key_pair(folder, "late")
    shutil.copy(keys_dir(b.name) / "server.key", folder)
    authorize(b.name, public)
    with RemoteCaller(b.endpoint, folder) as remote:
        assert remote.call("echo", {"x": 1})["x"] == 1
        revoke(b.name, "late")

        def refused() -> bool:  # the gateway looks a connection's key up again after KEYS_RECHECK_S (0.1 s)
            try:
                remote.call("echo", {"x": 2}, timeout=0.3)
                return False
            except CallTimeout:
                return True

        wait_until(refused, 5)
    with RemoteCaller(b.endpoint, b.keys) as remote:
        assert remote.call("echo", {"x": 3})["x"] == 3


def otpy_cli(*args: str) -> "subprocess.CompletedProcess":
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "otpy", *args], capture_output=True, text=True, timeout=30)


def test_otpy_call_reaches_agent_at_node_by_cluster_file_or_endpoint(b, tmp_path):
    import json

    shutil.copytree(b.keys, tmp_path / "keys-b")
    (tmp_path / "cluster.toml").write_text(f'[nodes.{b.name}]\nendpoint = "{b.endpoint}"\nkeys = "keys-b"\n')
    done = otpy_cli("call", f"echo@{b.name}", "--cluster", str(tmp_path / "cluster.toml"), "--input", '{"x": 1}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["x"] == 1
    done = otpy_cli("call", "echo", "--endpoint", b.endpoint, "--keys", str(b.keys), "--input", '{"x": 2}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["x"] == 2
    done = otpy_cli("call", f"ghost@{b.name}", "--cluster", str(tmp_path / "cluster.toml"))
    assert done.returncode == 1 and "NoSuchAgent" in done.stderr
    done = otpy_cli("call", "echo@nowhere", "--cluster", str(tmp_path / "cluster.toml"))
    assert done.returncode == 2 and "NODE one of" in done.stderr


def test_otpy_call_agent_at_node_from_the_calling_nodes_host(b, tmp_path):
    import json

    node, _ = start_node("a", agent("echo", "Echo"))
    try:
        write_private(node_dir(node.name) / CLUSTER_FILE, encode_cluster(b.cluster))
        done = otpy_cli("call", f"echo@{b.name}", "--node", node.name, "--input", '{"x": 3}')
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["pid"] == b.which_children("root")[0].pid
    finally:
        node.stop()


def test_a_long_timeout_is_one_rule_for_local_and_remote_calls(b, caller):
    """advA-9: what a local call takes (any finite number of seconds > 0), a call to AGENT@NODE takes."""
    assert caller.call(f"echo@{b.name}", {"n": 1}, timeout=100000)["n"] == 1
    with pytest.raises(ValueError, match="timeout"):
        caller.call(f"echo@{b.name}", {}, timeout=float("inf"))


@pytest.mark.timeout(120)
def test_the_cross_node_bench_ends_by_itself(tmp_path):
    """finding-lab-3: the bench's forked raw echoes never hold node b's stdin: the run ends."""
    import subprocess
    import sys

    import tempfile

    run = tempfile.mkdtemp(prefix="ob-", dir="/tmp")  # short: agents' socket paths live under it
    try:
        env = {**os.environ, "OTPY_RUNTIME_DIR": run}
        done = subprocess.run([sys.executable, "-m", "bench.remote_call", "--n", "50"], capture_output=True,
                              text=True, timeout=90, env=env,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    finally:
        shutil.rmtree(run, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert "remote_call p50 / local_call p50" in done.stdout
