"""Variables decide what runs (#13): a child bound to a variable follows every write of it,
make-before-break; a write that cannot be run is not stored; a node started again runs what
was stored; status shows what runs and from which variable version."""

from __future__ import annotations

import pytest

import otpy
from otpy.specs.model import Bound, ChildSpec, DynamicSupervisorSpec, NodeSpec, SupervisorSpec
from otpy.variables.placement import with_registry
from otpy.wire.protocol import BoundInfo, ChildInfo
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.timeout(90)

ALPHA, BETA, BROKEN = "tests.bound_agents:Alpha", "tests.bound_agents:Beta", "tests.bound_agents:Broken"
VARIABLES = {
    "global": {
        "impl": {"type": "module", "modules": [ALPHA, BETA, BROKEN], "default": ALPHA},
        "extra": {"type": "bool", "default": False},
        "knob": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5},
    },
    "pool": {"workers": {"type": "integer", "low": 0, "high": 4, "default": 2}},
}


def node_spec(name: str) -> NodeSpec:
    root = SupervisorSpec(id="root", children=(
        ChildSpec(id="solver", program=Bound("global.impl")),
        ChildSpec(id="helper", program=BETA, enabled=Bound("global.extra")),
        DynamicSupervisorSpec(id="pool", templates={
            "w": ChildSpec(id="w", program=Bound("global.impl"), replicas=Bound("pool.workers"))}),
    ))
    return NodeSpec(name=name, root=with_registry(root, VARIABLES))


def runs(node: otpy.Node, agent: str) -> str:
    return node.call(agent, {}, timeout=10)["program"]


def child(node: otpy.Node, child_id: str, sup: str = "root") -> ChildInfo:
    return next(c for c in node.which_children(sup) if c.id == child_id)


@pytest.fixture
def node():
    with otpy.Node(node_spec(unique_name("bound"))) as running:
        yield running


def test_a_bound_child_runs_the_value_and_follows_a_write(node):
    assert runs(node, "solver") == "Alpha"
    before = child(node, "solver")
    assert before.program == ALPHA and before.bound == BoundInfo("global.impl", 0)
    outcome = node.set_variables("global", {"impl": BETA})
    assert outcome.ok, outcome
    assert runs(node, "solver") == "Beta"  # the write returned once the tree ran it
    after = child(node, "solver")
    assert after.pid != before.pid and after.program == BETA and after.bound.version > 0
    actions = {(c.action, c.child) for c in outcome.changes}
    assert ("reconfigure", "solver") in actions and ("set", "") in actions


def test_a_target_that_fails_leaves_the_old_program_and_the_old_value(node):
    solver = child(node, "solver")
    outcome = node.set_variables("global", {"impl": BROKEN})
    assert outcome.outcome == "start_failed"
    assert "solver" in outcome.detail and "Broken cannot start" in outcome.detail
    assert child(node, "solver").pid == solver.pid and runs(node, "solver") == "Alpha"
    with otpy.Caller(node.name) as caller:
        stored = caller.call("registry", {"op": "get", "scope": "global", "name": "impl"})
    assert stored["value"] == ALPHA and stored["reason"] == "default"


def test_writing_the_same_value_again_changes_no_process(node):
    assert node.set_variables("global", {"impl": BETA}).ok
    pid = child(node, "solver").pid
    again = node.set_variables("global", {"impl": BETA})
    assert again.ok and [c.action for c in again.changes] == ["set"]
    assert child(node, "solver").pid == pid


def test_enabled_starts_and_stops_the_child(node):
    assert child(node, "helper").state == "stopped"
    assert node.set_variables("global", {"extra": True}).ok
    assert child(node, "helper").state == "running" and runs(node, "helper") == "Beta"
    assert node.set_variables("global", {"extra": False}).ok
    assert child(node, "helper").state == "stopped"


def test_replicas_follow_the_count(node):
    def replicas():
        return sorted(c.id for c in node.which_children("pool") if c.state == "running")

    assert replicas() == ["w-1", "w-2"]
    kept = child(node, "w-1", "pool").pid
    assert node.set_variables("pool", {"workers": 3}).ok
    assert replicas() == ["w-1", "w-2", "w-3"]
    assert node.set_variables("pool", {"workers": 1}).ok
    assert replicas() == ["w-1"] and child(node, "w-1", "pool").pid == kept


def test_a_dry_run_plans_and_changes_nothing(node):
    pid = child(node, "solver").pid
    plan = node.set_variables("global", {"impl": BETA}, dry_run=True)
    assert plan.ok
    reconfigure = [c for c in plan.changes if c.action == "reconfigure"]
    assert {(c.child, c.before, c.after) for c in reconfigure} >= {("solver", ALPHA, BETA)}
    assert child(node, "solver").pid == pid and runs(node, "solver") == "Alpha"


def test_a_direct_registry_write_to_a_bound_variable_is_refused(node):
    with otpy.Caller(node.name) as caller:
        reply = caller.call("registry", {"op": "set", "scope": "global", "name": "impl", "value": BETA})
    assert reply["ok"] is False and reply["error"] == "bound"
    assert runs(node, "solver") == "Alpha"


def test_a_node_started_again_runs_the_stored_value():
    spec = node_spec(unique_name("bound"))
    with otpy.Node(spec) as node:
        assert node.set_variables("global", {"impl": BETA, "extra": True}).ok
    with otpy.Node(spec) as node:
        assert runs(node, "solver") == "Beta" and runs(node, "w-1") == "Beta"
        assert child(node, "helper").state == "running"
        assert child(node, "solver").bound.version > 0


def test_a_restart_runs_the_current_value(node):
    import os
    import signal

    assert node.set_variables("global", {"impl": BETA}).ok
    old = child(node, "solver").pid
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: (c := child(node, "solver")).state == "running" and c.pid != old, 10, "solver restarted")
    assert runs(node, "solver") == "Beta"


def test_terminate_child_of_a_bound_child_is_an_override(node):
    assert node.terminate_child("solver").ok
    info = child(node, "solver")
    assert info.state == "stopped" and info.override
    assert node.set_variables("global", {"impl": BETA}).ok
    assert child(node, "solver").state == "stopped"  # the operator's stop holds
    assert node.restart_child("solver").ok
    assert runs(node, "solver") == "Beta" and not child(node, "solver").override


def test_a_wire_spec_may_bind_only_what_the_topology_binds(node):
    outcome = node.start_child("root", ChildSpec(id="extra", program=Bound("global.knob")))
    assert outcome.outcome == "invalid" and "global.knob" in outcome.detail


class _Agent:
    context = None

    def __init__(self):
        self.delivered = []

    def new_config(self, config, done=None):
        self.delivered.append(config)


@pytest.mark.parametrize("hooked", [False, True])
def test_a_bound_variable_alone_never_restarts_a_program(monkeypatch, hooked):
    """The node reconciled the tree before the registry published the value: a program without
    on_config is not restarted for it (it would restart the very target just started); any other
    change still restarts it, and on_config gets every change."""
    from otpy.agent import registry_link

    program = type("P", (), {"on_config": lambda self, config: None} if hooked else {})()
    monkeypatch.setenv("OTPY_BOUND", "global.impl,pool.workers")
    monkeypatch.setenv("OTPY_SUPERVISORS", "root")
    restarts = []
    agent = _Agent()
    watcher = registry_link.ConfigWatcher(program, agent, {"impl": ALPHA, "knob": 0.5}, "n",
                                          restart=lambda: restarts.append(1))
    answers = iter([{"impl": BETA, "knob": 0.5}, {"impl": BETA, "knob": 0.7}])
    monkeypatch.setattr(registry_link, "resolve", lambda *args: next(answers))
    assert watcher._refresh() == ("applied" if hooked else "unchanged") and restarts == []
    assert watcher._refresh() == ("applied" if hooked else "restarting")
    assert restarts == ([] if hooked else [1])
    assert len(agent.delivered) == (2 if hooked else 0)


def test_a_python_spec_binding_an_undeclared_variable_is_refused_before_anything_starts():
    from otpy.node.errors import NodeStartError

    root = SupervisorSpec(id="root", children=(ChildSpec(id="s", program=Bound("global.nope")),))
    with pytest.raises(NodeStartError, match=r"children\[0\]\.program\.variable: global\.nope is not declared"):
        otpy.Node(NodeSpec(name=unique_name("bound"), root=root)).start()


def test_a_replica_id_is_kept_for_its_template(node):
    """pool keeps w-1..w-N: 'w-3' elsewhere would share a socket with the third replica."""
    outcome = node.start_child("root", ChildSpec(id="w-3", program=ALPHA))
    assert outcome.outcome == "invalid" and "replica id of the template 'w'" in outcome.detail
    assert node.start_child("root", ChildSpec(id="w-x", program=ALPHA)).ok


def test_a_topology_id_that_a_replica_takes_is_refused():
    from otpy.topology.load import TopologyError, parse_topology

    text = ('[supervisor]\n[[supervisor.children]]\nid = "w-2"\nprogram = "tests.bound_agents:Alpha"\n'
            '[[supervisor.children]]\nid = "pool"\ntype = "dynamic_supervisor"\n'
            '  [supervisor.children.templates.w]\n  program = "tests.bound_agents:Alpha"\n  replicas = 3\n')
    with pytest.raises(TopologyError, match=r"children\[0\]\.id: got 'w-2', a replica id of the template 'w'"):
        parse_topology(text, source="t.toml")


def test_a_write_returns_once_every_program_runs_the_new_knob():
    """Knobs are not bound, but a write still returns only when the programs run them: the
    next call (an optimizer's first example) never meets the old value."""
    root = SupervisorSpec(id="root", children=(
        ChildSpec(id="slow", program="tests.bound_agents:SlowKnob"),
        ChildSpec(id="plain", program="tests.bound_agents:KnobNoHook"),
    ))
    variables = {"global": {"knob": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}}}
    with otpy.Node(NodeSpec(name=unique_name("knob"), root=with_registry(root, variables))) as node:
        plain = node.call("plain", {})["pid"]
        for value in (0.1, 0.2, 0.3):
            outcome = node.set_variables("global", {"knob": value})
            assert outcome.ok and outcome.detail == "", outcome
            assert node.call("slow", {})["knob"] == value
            answer = node.call("plain", {}, retries=1)
            assert answer["knob"] == value and answer["pid"] != plain
            plain = answer["pid"]


def test_a_refused_write_stops_nothing_anywhere_in_the_tree():
    """One write disables a child under the root and asks a program that fails under a nested
    supervisor: every start is tried before anything stops, so the refused write leaves the
    disabled-to-be child running as it was (same pid)."""
    root = SupervisorSpec(id="root", children=(
        ChildSpec(id="helper", program=ALPHA, enabled=Bound("global.extra")),
        SupervisorSpec(id="team", children=(ChildSpec(id="solver", program=Bound("global.impl")),)),
    ))
    variables = {"global": {"impl": VARIABLES["global"]["impl"], "extra": {"type": "bool", "default": True}}}
    with otpy.Node(NodeSpec(name=unique_name("bound"), root=with_registry(root, variables))) as node:
        helper = child(node, "helper").pid
        outcome = node.set_variables("global", {"extra": False, "impl": BROKEN})
        assert outcome.outcome == "start_failed" and "solver" in outcome.detail
        assert child(node, "helper").pid == helper and child(node, "helper").state == "running"
        assert runs(node, "solver") == "Alpha"


def test_writes_from_python_are_one_at_a_time(node):
    """Writes through the Python API (not the control socket's lane) do not interleave: what is
    stored is what runs, whichever write came last."""
    import asyncio

    async def both():
        return await asyncio.gather(node.aio.set_variables("global", {"impl": BROKEN}),
                                    node.aio.set_variables("global", {"impl": BETA}),
                                    node.aio.set_variables("global", {"impl": BROKEN}))

    outcomes = node._run(both())
    assert [o.outcome for o in outcomes] == ["start_failed", "ok", "start_failed"]
    with otpy.Caller(node.name) as caller:
        stored = caller.call("registry", {"op": "get", "scope": "global", "name": "impl"})["value"]
    assert stored == BETA and runs(node, "solver") == "Beta" and runs(node, "w-1") == "Beta"


def test_an_announced_decision_is_a_node_event(node):
    from otpy.node.node import describe_event

    seen = []
    node.aio.listeners.append(seen.append)
    assert node.announce("watch_kept", "live 0.91 >= 0.90").ok
    event = next(e for e in seen if e.kind == "watch_kept")
    assert event.detail == "live 0.91 >= 0.90" and describe_event(event)[1] == "watch_kept: live 0.91 >= 0.90"
    refused = node.announce("Watch Kept!", "x")
    assert refused.outcome == "invalid" and "kind" in refused.detail


def test_restore_takes_away_a_value_update_added():
    from otpy.specs.bindings import BoundValues, UnboundValue, resolve

    live = BoundValues({"global.impl": ALPHA})
    live.restore(live.update({"global.extra": True}))
    assert live.values == {"global.impl": ALPHA} and "global.extra" not in live.versions
    with pytest.raises(UnboundValue):
        resolve(ChildSpec(id="c", program=ALPHA, enabled=Bound("global.extra")), live.values)


@pytest.mark.parametrize("high, refused", [(10 ** 20, True), (10 ** 6, False)])
def test_a_replicas_variable_is_checked_by_its_last_id_never_by_a_list_of_them(high, refused):
    """A huge high was a list of that many ids: validate ran out of memory (10**20) or took
    seconds and 750 MB (10**7). Now the last id alone is built, and high is capped like a
    plain replicas."""
    from otpy.topology.load import TopologyError, parse_topology

    text = ('[supervisor]\n[[supervisor.children]]\nid = "pool"\ntype = "dynamic_supervisor"\n'
            '  [supervisor.children.templates.w]\n  program = "tests.bound_agents:Alpha"\n'
            '  replicas = { variable = "global.big" }\n'
            f'[variables.global]\nbig = {{ type = "integer", low = 0, high = {high}, default = 1 }}\n')
    if refused:
        with pytest.raises(TopologyError, match=r"replicas\.variable: global\.big may be 1(0+) \(its high\); expected high <= 1000000"):
            parse_topology(text, source="t.toml")
    else:
        assert parse_topology(text, source="t.toml").node.root.children[1].templates["w"].replicas is not None


@pytest.mark.parametrize("writer", [None, "", "0" * 32])
def test_only_the_node_stores_a_bound_variable(node, writer):
    """A reconciled write must carry the node's secret: anyone else claiming it stored a value
    the tree did not run, and the next start of the node failed on it."""
    claim = {"reconciled": True} if writer is None else {"reconciled": True, "writer": writer}
    with otpy.Caller(node.name) as caller:
        reply = caller.call("registry", {"op": "set", "scope": "global", "name": "impl", "value": BROKEN, **claim})
        assert reply["ok"] is False and reply["error"] == "bound"
        many = caller.call("registry", {"op": "set_many", "values": {"global": {"impl": BROKEN}}, **claim})
        assert many["ok"] is False and many["error"] == "bound"
        assert caller.call("registry", {"op": "get", "scope": "global", "name": "impl"})["value"] == ALPHA
    assert node.set_variables("global", {"impl": BETA}).ok  # the node's own writes still go through


def test_a_stopped_bound_child_shows_what_it_would_run(node):
    """One rule for every child not running: program and bound say what it runs if started now."""
    info = child(node, "helper")  # disabled: enabled is bound to global.extra = false
    assert info.state == "stopped" and info.program == BETA and info.bound.variable == "global.extra"
    assert node.terminate_child("solver").ok
    assert node.set_variables("global", {"impl": BETA}).ok
    stopped = child(node, "solver")
    assert stopped.override and stopped.program == BETA and stopped.bound.version > 0


def test_several_scopes_are_one_all_or_nothing_write(node):
    """An optimizer's configuration spans scopes: a refused part leaves every scope as it was."""
    outcome = node.set_config({"global": {"impl": BETA}, "pool": {"workers": 9}})  # 9 > high 4
    assert outcome.outcome == "invalid" and "workers" in outcome.detail
    assert runs(node, "solver") == "Alpha"
    failed = node.set_config({"pool": {"workers": 3}, "global": {"impl": BROKEN}})
    assert failed.outcome == "start_failed"
    assert sorted(c.id for c in node.which_children("pool")) == ["w-1", "w-2"]
    ok = node.set_config({"global": {"impl": BETA}, "pool": {"workers": 3}})
    assert ok.ok and {(c.action, c.child) for c in ok.changes} >= {("reconfigure", "solver"), ("start", "w-3")}
    assert runs(node, "w-3") == "Beta"
    with otpy.Caller(node.name) as caller:
        versions = {e["name"]: e["version"] for e in caller.call("registry", {"op": "list"})["values"]}
    assert versions["impl"] == versions["workers"] > 0  # one write: one version


def test_a_flood_of_config_syncs_is_answered_overloaded_not_with_a_thread_each():
    """Any local caller can send ConfigSync to an agent: past its capacity (concurrency +
    max_queue) it is refused at once, as a call is; it never starts a thread per message."""
    import zmq

    from otpy.host.runtime_dir import agent_endpoint
    from otpy.wire.protocol import ENCODER, FROM_AGENT, CallFailed, ConfigSync, Reply

    root = SupervisorSpec(id="root", children=(
        ChildSpec(id="slow", program="tests.bound_agents:SlowKnob", args={"max_queue": 2}),))
    variables = {"global": {"knob": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}}}
    with otpy.Node(NodeSpec(name=unique_name("flood"), root=with_registry(root, variables))) as node:
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.connect(agent_endpoint(node.name, "slow"))
        for call_id in range(1, 401):
            dealer.send(ENCODER.encode(ConfigSync(call_id=call_id)))
        answers = []
        while len(answers) < 400 and dealer.poll(10_000):
            answers.append(FROM_AGENT.decode(dealer.recv()))
        dealer.close(0)
        context.term()
        assert len(answers) == 400
        overloaded = [a for a in answers if isinstance(a, CallFailed) and a.kind == "overloaded"]
        synced = [a for a in answers if isinstance(a, Reply) and a.outputs == {"config": "unchanged"}]
        assert overloaded and len(overloaded) + len(synced) == 400
        assert node.call("slow", {})["knob"] == 0.5  # still serving


@pytest.mark.timeout(120)
def test_a_commit_the_registry_answers_late_is_known_stored_and_the_tree_keeps_it(tmp_path, monkeypatch):
    """The registry stalls while the node commits: the commit times out, but the request still
    waits at the registry and is stored when it runs again. The node reads back what became of
    it: stored, so the tree keeps the new program (before, it said "nothing was stored", put the
    old program back, and the registry then stored the new one)."""
    import os
    import signal
    import threading

    slow = "tests.bound_agents:SlowStart"
    mark = tmp_path / "started"
    monkeypatch.setenv("BOUND_TEST_MARK", str(mark))
    variables = {"global": {"impl": {"type": "module", "modules": [ALPHA, slow], "default": ALPHA}}}
    root = SupervisorSpec(id="root", children=(ChildSpec(id="solver", program=Bound("global.impl")),))
    with otpy.Node(NodeSpec(name=unique_name("late"), root=with_registry(root, variables))) as node:
        registry = child(node, "registry").pid
        outcome = []
        writer = threading.Thread(target=lambda: outcome.append(node.set_variables("global", {"impl": slow})))
        writer.start()
        wait_until(mark.exists, 20, "the target's setup")
        os.kill(registry, signal.SIGSTOP)  # the commit comes while it is stopped: no answer in 5 s
        resume = threading.Timer(7.0, os.kill, (registry, signal.SIGCONT))
        resume.start()
        writer.join(60)
        resume.join()
        assert outcome and outcome[0].ok, outcome
        with otpy.Caller(node.name) as caller:
            assert caller.call("registry", {"op": "get", "scope": "global", "name": "impl"})["value"] == slow
        assert runs(node, "solver") == "SlowStart" and child(node, "solver").program == slow


def test_the_registry_is_neither_replaced_nor_added_over_the_wire(node):
    """A registry made over the wire would have neither the node's secret nor its bound list:
    anyone could then store a bound value (and the node's next start fail on it)."""
    from otpy.variables.placement import REGISTRY_PROGRAM

    args = {"variables": VARIABLES, "bound": []}
    swap = node.reconfigure("root", "registry", ChildSpec(id="registry", program=REGISTRY_PROGRAM, args=args))
    assert swap.outcome == "invalid" and "not replaced over the wire" in swap.detail
    extra = node.start_child("root", ChildSpec(id="registry2", program=REGISTRY_PROGRAM, args=args))
    assert extra.outcome == "invalid" and "registry2" in extra.detail
    assert [c.id for c in node.which_children("root")].count("registry") == 1


def test_a_registry_that_knows_bound_variables_but_no_secret_takes_no_reconciled_write(tmp_path, monkeypatch):
    from otpy.variables.placement import WRITER_ENV
    from otpy.variables.registry import Registry

    monkeypatch.delenv(WRITER_ENV, raising=False)
    registry = Registry()
    registry.setup({"variables": VARIABLES, "bound": ["global.impl"], "path": str(tmp_path / "r.db")}, {})
    try:
        reply = registry.forward(op="set", scope="global", name="impl", value=BETA, reconciled=True)
        assert reply["ok"] is False and reply["error"] == "bound"
        assert registry.forward(op="set", scope="global", name="knob", value=0.1)["ok"]  # others as ever
    finally:
        registry.teardown()


@pytest.mark.timeout(60)
def test_a_program_whose_on_config_raises_confirms_by_its_restart():
    """It never answers the sync (it crashed on it); its restart, which resolves the stored
    values, is the confirmation. Before, every knob write waited the whole sync timeout (30 s)
    and named it late."""
    root = SupervisorSpec(id="root", max_restarts=10, children=(
        ChildSpec(id="raises", program="tests.bound_agents:RaisesOnConfig"),))
    variables = {"global": {"knob": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}}}
    with otpy.Node(NodeSpec(name=unique_name("raises"), root=with_registry(root, variables))) as node:
        for value in (0.1, 0.2):
            outcome = node.set_variables("global", {"knob": value})
            assert outcome.ok and outcome.detail == "", outcome
            assert node.call("raises", {}, retries=1)["knob"] == value


def test_otpy_vars_set_makes_a_bound_child_follow_and_exits_1_naming_a_failed_target(node):
    from click.testing import CliRunner

    from otpy.cli.vars import vars_group

    runner = CliRunner()
    pid = child(node, "solver").pid
    done = runner.invoke(vars_group, ["set", "global.impl", BETA, "--node", node.name])
    assert done.exit_code == 0, done.output
    assert f"reconfigure root/solver {ALPHA} -> {BETA}" in done.output
    assert runs(node, "solver") == "Beta" and child(node, "solver").pid != pid
    failed = runner.invoke(vars_group, ["set", "global.impl", BROKEN, "--node", node.name])
    assert failed.exit_code == 1 and "child 'solver'" in failed.output and "Broken cannot start" in failed.output
    assert runs(node, "solver") == "Beta"
