"""One variable space across nodes (#18): two real nodes on this machine (different names), one
PostgreSQL database. A knob written on A reaches B's program's ``on_config``; a bound variable
written on A makes B run the new program (and a value B cannot run leaves B's old child,
said); a node started later runs what is stored; losing the database keeps the children
running and refuses writes (``unavailable``; ``otpy vars set`` exits 1 in one line); the
password is never in status, events or logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import msgspec
import pytest

import otpy
from otpy.specs.model import Bound, ChildSpec, NodeSpec, SupervisorSpec
from otpy.variables.placement import with_registry
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.timeout(120)

ALPHA, BETA, BROKEN = "tests.bound_agents:Alpha", "tests.bound_agents:Beta", "tests.bound_agents:Broken"
VARIABLES = {"global": {
    "impl": {"type": "module", "modules": [ALPHA, BETA, BROKEN], "default": ALPHA},
    "knob": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5},
}}


def node_spec(name: str, url: str, bind: bool = True) -> NodeSpec:
    root = SupervisorSpec(id="root", children=(
        ChildSpec(id="solver", program=Bound("global.impl") if bind else ALPHA),
        ChildSpec(id="shows", program="tests.registry_agents:Shows"),
    ))
    return NodeSpec(name=name, root=with_registry(root, VARIABLES, storage=url))


def runs(node: otpy.Node, agent: str = "solver") -> str:
    return node.call(agent, {}, timeout=10)["program"]


def not_ok(outcome):
    return None if outcome.ok else outcome


def knob(node: otpy.Node) -> float:
    return node.call("shows", {}, timeout=10)["config"]["knob"]


@pytest.fixture
def two_nodes(postgres_url):
    with otpy.Node(node_spec(unique_name("pga"), postgres_url)) as a, \
            otpy.Node(node_spec(unique_name("pgb"), postgres_url)) as b:
        yield a, b


def test_a_knob_written_on_one_node_reaches_the_other_nodes_program(two_nodes):
    a, b = two_nodes
    assert knob(b) == 0.5
    outcome = a.set_variables("global", {"knob": 0.9})
    assert outcome.ok, outcome
    assert knob(a) == 0.9  # A's write returned once A's programs ran it
    wait_until(lambda: knob(b) == 0.9, timeout=10, what="B's on_config ran A's write")
    assert b.call("shows", {}, timeout=10)["changes"] >= 1  # on_config, not a restart


def test_a_bound_variable_set_on_one_node_makes_the_other_run_it(two_nodes):
    a, b = two_nodes
    before = next(c for c in b.which_children("root") if c.id == "solver")
    assert runs(a) == runs(b) == "Alpha"
    assert a.set_variables("global", {"impl": BETA}).ok
    assert runs(a) == "Beta"
    wait_until(lambda: runs(b) == "Beta", timeout=15, what="B runs the program A set")
    after = next(c for c in b.which_children("root") if c.id == "solver")
    assert after.pid != before.pid and after.program == BETA and after.bound.version > 0
    with otpy.Caller(b.name) as caller:  # B did not write it again: the version is A's
        stored = caller.call("registry", {"op": "get", "scope": "global", "name": "impl"})
    assert stored["version"] == after.bound.version


def test_a_value_the_other_node_cannot_run_keeps_its_old_child_and_says_so(postgres_url):
    # A does not bind global.impl (so it stores BROKEN as a plain value); B runs it, and cannot
    with otpy.Node(node_spec(unique_name("pga"), postgres_url, bind=False)) as a, \
            otpy.Node(node_spec(unique_name("pgb"), postgres_url)) as b:
        events = []
        b.aio.listeners.append(events.append)
        pid = next(c for c in b.which_children("root") if c.id == "solver").pid
        with otpy.Caller(a.name) as caller:
            assert caller.call("registry", {"op": "set", "scope": "global", "name": "impl", "value": BROKEN})["ok"]
        failed = wait_until(lambda: next((e for e in events if e.kind == "follow_failed"), None), timeout=15,
                            what="B says it cannot run it")
        assert "global.impl" in failed.detail and "Broken cannot start" in failed.detail
        assert "keeps running the previous value" in failed.detail
        solver = next(c for c in b.which_children("root") if c.id == "solver")
        assert solver.pid == pid and solver.program == ALPHA and runs(b) == "Alpha"


def test_what_was_written_while_a_registry_was_down_reaches_its_programs(two_nodes):
    a, b = two_nodes
    assert b.terminate_child("registry").ok  # B hears nothing from now on
    assert a.set_variables("global", {"knob": 0.125, "impl": BETA}).ok
    assert knob(b) == 0.5 and runs(b) == "Alpha"
    assert b.restart_child("registry").ok
    wait_until(lambda: knob(b) == 0.125, timeout=15, what="B's program got the value written meanwhile")
    wait_until(lambda: runs(b) == "Beta", timeout=15, what="B runs the program written meanwhile")


def test_a_node_started_later_runs_what_is_stored(postgres_url):
    with otpy.Node(node_spec(unique_name("pga"), postgres_url)) as a:
        assert a.set_variables("global", {"impl": BETA, "knob": 0.25}).ok
        with otpy.Node(node_spec(unique_name("pgb"), postgres_url)) as b:
            assert runs(b) == "Beta" and knob(b) == 0.25


@pytest.fixture
def own_server():
    from tests.postgres_server import PostgresServer, PostgresUnavailable
    from tests.test_registry_postgres import stable_port

    try:
        server = PostgresServer.start(port=stable_port())
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    try:
        server.stop()
    except RuntimeError:
        import shutil

        shutil.rmtree(server.folder, ignore_errors=True)


def test_losing_the_database_keeps_the_children_and_refuses_writes(own_server):
    url = own_server.new_database()
    with otpy.Node(node_spec(unique_name("pga"), url)) as a, otpy.Node(node_spec(unique_name("pgb"), url)) as b:
        assert a.set_variables("global", {"knob": 0.75}).ok
        wait_until(lambda: knob(b) == 0.75, timeout=10, what="B ran it")
        pids = {c.id: c.pid for c in a.which_children("root")}
        own_server.pause()
        refused = wait_until(lambda: not_ok(a.set_variables("global", {"knob": 0.1})), timeout=15, what="a refusal")
        assert refused.outcome == "unavailable", refused
        assert f"the database at 127.0.0.1:{own_server.port} is unreachable" in refused.detail
        assert "the write was not stored" in refused.detail and own_server.password not in refused.detail
        bound = a.set_variables("global", {"impl": BETA})  # a bound write: the tree stays as it was
        assert bound.outcome == "unavailable" and runs(a) == "Alpha"
        done = subprocess.run([sys.executable, "-m", "otpy", "vars", "set", "--node", a.name, "global.knob", "0.2"],
                              capture_output=True, text=True, timeout=60, env=os.environ)
        assert done.returncode == 1 and done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"127.0.0.1:{own_server.port} is unreachable" in done.stderr and "retry when it is back" in done.stderr
        assert {c.id: c.pid for c in a.which_children("root")} == pids and knob(a) == 0.75  # kept running
        with otpy.Caller(a.name) as caller:  # reads answer from memory
            assert caller.call("registry", {"op": "get", "scope": "global", "name": "knob"})["value"] == 0.75
        own_server.resume()
        wait_until(lambda: a.set_variables("global", {"knob": 0.3}).ok, timeout=20, what="writes again")
        wait_until(lambda: knob(b) == 0.3, timeout=15, what="B caught up")


def test_a_node_cannot_start_while_the_database_is_down(own_server, monkeypatch):
    url = own_server.new_database()
    own_server.pause()
    monkeypatch.setenv("OTPY_REGISTRY_START_WAIT", "1")
    with pytest.raises(otpy.NodeStartError) as caught:
        otpy.Node(node_spec(unique_name("pgdown"), url)).start()
    message = str(caught.value)
    assert f"127.0.0.1:{own_server.port} is unreachable" in message and own_server.password not in message
    own_server.resume()


def test_the_password_is_never_shown(postgres_url, tmp_path):
    from otpy.host.log_files import log_dir

    password = postgres_url.split("@")[0].rsplit(":", 1)[1]
    with otpy.Node(node_spec(unique_name("pgpw"), postgres_url)) as a:
        events = []
        a.aio.listeners.append(events.append)
        assert a.set_variables("global", {"knob": 0.6}).ok
        status = msgspec.json.encode(a.status()).decode()
        done = subprocess.run([sys.executable, "-m", "otpy", "status", "--node", a.name, "--json"],
                              capture_output=True, text=True, timeout=60, env=os.environ)
        assert done.returncode == 0 and json.loads(done.stdout)
        folder = log_dir(a.name)
        name = a.name
    logs = "".join(path.read_text(errors="replace") for path in folder.rglob("*") if path.is_file())
    assert "registry" in logs or logs  # the logs were written
    for shown in (status, done.stdout, done.stderr, logs, repr(events)):
        assert password not in shown
    assert name
