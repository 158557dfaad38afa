"""A reload, end to end: a running node made to match its edited topology file (``otpy reload``,
``Node.reload``, SIGHUP), and ``--code``: every program child replaced, one at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import otpy
from otpy.topology.load import load_topology
from otpy.wire.client import socket_path
from tests.helpers import SLEEPER, Events, alive, pids, unique_name, wait_dead, wait_until

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
ECHO = "tests.call_agents:Echo"


def sleeper(id: str, extra: str = "", indent: str = "") -> str:
    """A command child (a sleeper that says READY) as a TOML table of ``[[supervisor.children]]``."""
    return (f'{indent}id = "{id}"\n{indent}command = {json.dumps([sys.executable, "-c", SLEEPER])}\n'
            f'{indent}ready = "notify"\n{extra}')


def topology(name: str, *children: str, team: str = "", pool: str = "", settings: str = "") -> str:
    text = f'[node]\nname = "{name}"\n\n[supervisor]\nid = "root"\n{settings}\n'
    for child in children:
        text += f"[[supervisor.children]]\n{child}\n"
    if team:
        text += f'[[supervisor.children]]\nid = "team"\ntype = "supervisor"\n{team}\n'
    if pool:
        text += f'[[supervisor.children]]\nid = "pool"\ntype = "dynamic_supervisor"\n{pool}\n'
    return text


@pytest.fixture
def make_node(tmp_path):
    """``make_node(text)``: write the topology, start a node from it; stopped at the end."""
    started = []

    def make(text: str):
        path = tmp_path / "topology.toml"
        path.write_text(text)
        node = otpy.Node(load_topology(path).node).start()
        started.append(node)
        return node, path

    yield make
    for node in started:
        node.stop()


def test_reload_adds_removes_and_replaces_children_and_keeps_the_others(make_node):
    name = unique_name("reload")
    node, path = make_node(topology(name, sleeper("a"), sleeper("b"), sleeper("c")))
    events = Events(node)
    before = pids(node)
    path.write_text(topology(name, sleeper("a"), sleeper("c", 'env = { EDITED = "1" }\n'), sleeper("d")))
    result = node.reload(str(path))
    assert result.ok, result
    after = pids(node)
    assert list(after) == ["a", "c", "d"]  # b is gone from the table; d went last
    assert after["a"] == before["a"]  # unchanged: the same process
    assert after["c"] != before["c"] and alive(after["c"]) and alive(after["d"])
    assert wait_dead([before["b"], before["c"]], 10) == []
    assert [(c.action, c.child) for c in result.changes] == [("start", "d"), ("reconfigure", "c"), ("stop", "b")]
    # make-before-break: the new c was started (READY) before the old one was stopped
    new_c = events.wait("started", "c", pid=after["c"])
    old_c = events.wait("stopped", "c", pid=before["c"])
    assert events.seen.index(new_c) < events.seen.index(old_c)
    reloaded = events.wait("reloaded")
    assert reloaded["detail"] == f"{path}: 3 change(s)"
    # and the node now runs that file: the same file again is no change
    assert node.reload(str(path)).changes == []
    assert pids(node) == after


def test_a_sub_supervisor_is_updated_in_place(make_node):
    name = unique_name("reload")
    team = 'strategy = "one_for_one"\nmax_restarts = 3\n  [[supervisor.children.children]]\n' + \
        sleeper("w", indent="  ")
    node, path = make_node(topology(name, sleeper("a"), team=team))
    before = {**pids(node), **pids(node, "team")}
    edited = 'strategy = "one_for_all"\nmax_restarts = 7\n  [[supervisor.children.children]]\n' + \
        sleeper("w", indent="  ") + '  [[supervisor.children.children]]\n' + sleeper("x", indent="  ")
    path.write_text(topology(name, sleeper("a"), team=edited))
    result = node.reload(str(path))
    assert result.ok, result
    update, start = result.changes
    assert (update.action, update.supervisor) == ("update", "team")
    assert update.before == {"strategy": "one_for_one", "max_restarts": 3}
    assert update.after == {"strategy": "one_for_all", "max_restarts": 7}
    assert (start.action, start.supervisor, start.child) == ("start", "team", "x")
    assert {**pids(node), **pids(node, "team")} == {**before, "x": start.pid}  # nothing else restarted
    team_sup = node.aio.root.find_supervisor("team")
    assert team_sup.machine.spec.strategy == "one_for_all" and team_sup.machine.window.max_restarts == 7
    # one_for_all now: a crash of w bounces x too
    os.kill(before["w"], signal.SIGKILL)
    wait_until(lambda: (p := pids(node, "team"))["x"] not in (None, start.pid) and p["w"] not in (None, before["w"]),
               timeout=10, what="the team restarted as one_for_all")


def test_an_invalid_file_changes_nothing(make_node):
    name = unique_name("reload")
    node, path = make_node(topology(name, sleeper("a")))
    before = pids(node)
    path.write_text(topology(name, sleeper("a"), 'id = "b"\nrestart = "sometimes"\ncommand = ["true"]\n'))
    result = node.reload(str(path))
    assert result.outcome == "invalid" and "restart" in result.detail and result.changes == []
    path.write_text(topology(name + "x", sleeper("a"), sleeper("b")))
    renamed = node.reload(str(path))
    assert renamed.outcome == "invalid" and "[node] name" in renamed.detail and "restart the node" in renamed.detail
    assert pids(node) == before


def test_a_dry_run_changes_nothing(make_node):
    name = unique_name("reload")
    node, path = make_node(topology(name, sleeper("a"), sleeper("b")))
    before = pids(node)
    path.write_text(topology(name, sleeper("b", 'env = { X = "1" }\n'), sleeper("c")))
    plan = node.reload(str(path), dry_run=True)
    assert plan.ok and [(c.action, c.child, c.pid) for c in plan.changes] == [
        ("start", "c", None), ("reconfigure", "b", None), ("stop", "a", before["a"])]
    assert pids(node) == before
    assert [(c.action, c.child) for c in node.reload(str(path)).changes] == [(c.action, c.child) for c in plan.changes]


def test_a_templates_replicas_follow_the_file(make_node):
    name = unique_name("reload")
    pool = "  [supervisor.children.templates.w]\n" + sleeper("w", "  replicas = 1\n", indent="  ").split("\n", 1)[1]
    node, path = make_node(topology(name, pool=pool))
    first = pids(node, "pool")["w-1"]
    path.write_text(topology(name, pool=pool.replace("replicas = 1", "replicas = 2")))
    result = node.reload(str(path))
    assert result.ok, result
    assert [(c.action, c.child) for c in result.changes][-1] == ("start", "w-2")
    assert pids(node, "pool")["w-1"] == first and alive(pids(node, "pool")["w-2"])
    path.write_text(topology(name, pool=pool.replace("replicas = 1", "replicas = 1\n  env = { E = \"2\" }")))
    plan = node.reload(str(path), dry_run=True)
    result = node.reload(str(path))
    assert [(c.action, c.child) for c in plan.changes] == [(c.action, c.child) for c in result.changes]
    assert result.ok, result
    assert sorted((c.action, c.child) for c in result.changes) == [("reconfigure", "w-1"), ("stop", "w-2"),
                                                                   ("update", "")]
    assert list(pids(node, "pool")) == ["w-1"] and pids(node, "pool")["w-1"] != first


def test_a_failed_start_leaves_the_old_child_running_and_says_what_was_done(make_node):
    name = unique_name("reload")
    node, path = make_node(topology(name, sleeper("a"), sleeper("b")))
    before = pids(node)
    never_ready = 'id = "b"\ncommand = ["sleep", "60"]\nready = "notify"\nstart_timeout = 0.5\n'
    path.write_text(topology(name, sleeper("a"), never_ready, sleeper("c")))
    result = node.reload(str(path))
    assert result.outcome == "start_failed" and "'b'" in result.detail
    assert [(c.action, c.child) for c in result.changes] == [("start", "c")]  # done before the failure
    assert pids(node)["b"] == before["b"] and alive(before["b"])
    # the next reload starts from what runs: the first file again stops c, and changes nothing else
    path.write_text(topology(name, sleeper("a"), sleeper("b")))
    back = node.reload(str(path))
    assert back.ok and [(c.action, c.child) for c in back.changes] == [("stop", "c")], back
    assert pids(node) == before


def test_a_child_changing_kind_is_replaced_and_a_removed_supervisor_stops_its_subtree(make_node):
    name = unique_name("reload")
    team = '  [[supervisor.children.children]]\n' + sleeper("w", indent="  ")
    node, path = make_node(topology(name, sleeper("a"), team=team))
    w = pids(node, "team")["w"]
    as_supervisor = 'id = "a"\ntype = "supervisor"\n  [[supervisor.children.children]]\n' + sleeper("inner", indent="  ")
    path.write_text(topology(name, as_supervisor))
    result = node.reload(str(path))
    assert result.ok and [(c.action, c.child) for c in result.changes] == [("reconfigure", "a"), ("stop", "team")]
    assert list(pids(node)) == ["a"] and alive(pids(node, "a")["inner"])
    assert wait_dead([w], 10) == []


def test_reload_code_does_not_replace_twice_what_the_file_replaced(make_node):
    name = unique_name("reload")
    node, path = make_node(topology(name, f'id = "p1"\nprogram = "{ECHO}"\n', f'id = "p2"\nprogram = "{ECHO}"\n'))
    path.write_text(topology(name, f'id = "p1"\nprogram = "{ECHO}"\nargs = {{ x = 1 }}\n',
                             f'id = "p2"\nprogram = "{ECHO}"\n'))
    result = node.reload(str(path), code=True)
    assert result.ok and [(c.action, c.child) for c in result.changes] == [("reconfigure", "p1"), ("reconfigure", "p2")]


VARIABLES = """
[variables.global.impl]
type = "module"
modules = ["tests.bound_agents:Alpha", "tests.bound_agents:Beta"]
default = "tests.bound_agents:Alpha"
"""


def test_a_node_with_variables_reloads_and_keeps_its_registry(make_node):
    name = unique_name("reload")
    bound = 'id = "solver"\nprogram = { variable = "global.impl" }\n'
    node, path = make_node(topology(name, bound) + VARIABLES)
    before = pids(node)
    path.write_text(topology(name, bound, sleeper("extra")) + VARIABLES)
    result = node.reload(str(path))
    assert result.ok and [(c.action, c.child) for c in result.changes] == [("start", "extra")], result
    assert {k: v for k, v in pids(node).items() if k != "extra"} == before  # registry and solver kept
    # the registry still takes the node's writes (its secret was kept), and the bound child follows
    assert node.set_variables("global", {"impl": "tests.bound_agents:Beta"}).ok
    assert node.call("solver", {}, timeout=10)["program"] == "Beta"
    path.write_text(topology(name, bound, sleeper("extra")) + VARIABLES.replace('"tests.bound_agents:Beta"]',
                                                                               '"tests.bound_agents:Beta", '
                                                                               '"tests.bound_agents:Broken"]'))
    refused = node.reload(str(path))
    assert refused.outcome == "invalid" and "[variables]" in refused.detail and "restart the node" in refused.detail


# --- otpy reload, SIGHUP, --code: a detached node ---------------------------------------------

def otpy_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def detached(tmp_path):
    """``detached(text)``: ``otpy start --detach`` of the topology; stopped at the end."""
    names = []

    def start(text: str) -> Path:
        path = tmp_path / "topology.toml"
        path.write_text(text)
        done = otpy_cli("start", str(path), "--detach")
        assert done.returncode == 0, done.stderr
        names.append(load_topology(path, check_imports=False).node.name)
        return path

    yield start
    for name in names:
        with otpy.connect(name) as client:
            pid = client.status().pid
        if socket_path(name).exists():
            otpy_cli("stop", "--node", name)
        assert wait_dead([pid], 10) == []
        try:
            os.waitpid(pid, os.WNOHANG)  # an embedded node made this process a subreaper
        except ChildProcessError:
            pass


def status_pids(name: str) -> dict[str, int | None]:
    with otpy.connect(name) as client:
        tree = client.status().tree
    found, stack = {}, list(tree.children)
    while stack:
        entry = stack.pop(0)
        found[entry.id] = entry.pid
        stack += entry.children or []
    return found


def test_otpy_reload_prints_what_it_did_and_json_parses(detached, tmp_path):
    name = unique_name("reload")
    path = detached(topology(name, sleeper("a"), sleeper("b")))
    before = status_pids(name)
    path.write_text(topology(name, sleeper("a"), sleeper("c")))
    dry = otpy_cli("reload", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == "2 changes (dry run: nothing changed)"
    assert status_pids(name) == before
    done = otpy_cli("reload", str(path), "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["outcome"] == "ok" and [c["action"] for c in outcome["changes"]] == ["start", "stop"]
    now = status_pids(name)
    assert now["a"] == before["a"] and "b" not in now and now["c"] == outcome["changes"][0]["pid"]
    again = otpy_cli("reload", "--node", name)  # no FILE: the node's own file
    assert again.returncode == 0 and again.stdout.strip() == "no changes", again


def test_otpy_reload_refuses_an_invalid_file_with_exit_2(detached, tmp_path):
    name = unique_name("reload")
    path = detached(topology(name, sleeper("a")))
    before = status_pids(name)
    path.write_text(topology(name, sleeper("a")) + "[[supervisor.children]]\nid = 'a'\ncommand = ['true']\n")
    refused = otpy_cli("reload", str(path))
    assert refused.returncode == 2 and "a" in refused.stderr, refused
    own = otpy_cli("reload", "--node", name)  # the node reads the same file: refused by the node
    assert own.returncode == 2 and "invalid" in own.stderr, own
    as_json = otpy_cli("reload", "--node", name, "--json")  # the document, and the line (before: no line)
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["outcome"] == "invalid", as_json
    assert as_json.stderr.startswith("otpy: reload: ") and as_json.stderr.rstrip().endswith("(invalid)"), as_json
    assert status_pids(name) == before


def test_sighup_reloads_the_nodes_own_file(detached):
    name = unique_name("reload")
    path = detached(topology(name, sleeper("a")))
    before = status_pids(name)
    with otpy.connect(name) as client:
        node_pid = client.status().pid
    path.write_text(topology(name, sleeper("a"), sleeper("b")))
    os.kill(node_pid, signal.SIGHUP)
    now = wait_until(lambda: (p := status_pids(name)).get("b") and p, timeout=20, what="b started on SIGHUP")
    assert now["a"] == before["a"]


def test_reload_code_replaces_every_program_child_one_at_a_time(make_node):
    name = unique_name("reload")
    node, path = make_node(topology(name, f'id = "p1"\nprogram = "{ECHO}"\n', sleeper("cmd"),
                                    pool=f'  [supervisor.children.templates.e]\n  program = "{ECHO}"\n'))
    assert node.start_from_template("pool", "e", "p3").ok  # started at run time: a program child too
    before = {**pids(node), **pids(node, "pool")}
    events = Events(node)
    result = node.reload(str(path), code=True)
    assert result.ok, result
    assert [(c.action, c.child, c.before, c.after) for c in result.changes] == [
        ("reconfigure", "p1", ECHO, ECHO), ("reconfigure", "p3", ECHO, ECHO)]
    now = {**pids(node), **pids(node, "pool")}
    assert now["p1"] != before["p1"] and now["p3"] != before["p3"] and now["cmd"] == before["cmd"]
    # one at a time: p3's replacement begins once p1's runs
    p1_up = events.wait("started", "p1", pid=now["p1"])
    p3_begins = events.wait("reconfiguring", "p3")
    assert events.seen.index(p1_up) < events.seen.index(p3_begins)
    assert node.call("p1", {"text": "hi"})["pid"] == now["p1"]  # the new incarnation serves
    assert [c.child for c in node.reload(str(path), code=True, dry_run=True).changes] == ["p1", "p3"]
    assert {**pids(node), **pids(node, "pool")} == now  # a dry run replaces nothing


AGENT = '''
import otpy

class Answer(otpy.Program):
    def forward(self, text: str = "") -> dict:
        return {{"answer": "{answer}"}}
'''


def test_otpy_reload_code_picks_up_an_edited_module(detached, tmp_path):
    name = unique_name("reload")
    module = f"reload_agent_{os.getpid()}_{abs(hash(name)) % 10**6}"
    (tmp_path / f"{module}.py").write_text(AGENT.format(answer="old"))
    program = f'program = "{module}:Answer"\n'
    detached(topology(name, 'id = "p1"\n' + program, 'id = "p2"\n' + program, sleeper("cmd")))
    before = status_pids(name)
    with otpy.Caller(name) as caller:
        assert caller.call("p1", {}) == {"answer": "old"}
    (tmp_path / f"{module}.py").write_text(AGENT.format(answer="edited"))  # another size too: coarse mtimes
    done = otpy_cli("reload", "--code", "--node", name, "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert [(c["action"], c["child"]) for c in outcome["changes"]] == [("reconfigure", "p1"), ("reconfigure", "p2")]
    now = status_pids(name)
    assert now["p1"] != before["p1"] and now["p2"] != before["p2"] and now["cmd"] == before["cmd"]
    with otpy.Caller(name) as caller:
        assert caller.call("p1", {}) == {"answer": "edited"}  # a new zygote generation imported it afresh
        assert caller.call("p2", {}) == {"answer": "edited"}


def test_a_refusal_met_on_the_way_is_a_failure_not_a_crash():
    from otpy.node.reload import _outcome
    from otpy.wire.protocol import Outcome, Refused

    assert _outcome(Refused(0, "stopping", "node 'x' is stopping")) == Outcome("stopping", detail="node 'x' is stopping")
    assert _outcome(Outcome("ok", pid=3)).pid == 3
