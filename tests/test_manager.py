"""The manager program: plans by goal (declared or asked of a planner agent), steps that run a
program through a variable, agents started on demand under a dynamic supervisor, reused,
terminated when idle or with the manager, adopted by its next incarnation; parallel stages;
the trace."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from collections import Counter, defaultdict

import pytest

import otpy
from otpy.optimize.managed_agents import idle_agents, managed_id, next_check, owner_of, started_by
from otpy.optimize.manager import ManagerProgram, StageFailed, check_args, program_of, supervisor_problem
from otpy.optimize.pipeline import Group, PlanError, Step, declared_steps, parse_plan, parse_step
from otpy.specs.model import name_problem
from otpy.wire.protocol import Outcome, TreeEntry
from otpy.topology.load import parse_topology
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.timeout(60)

DOUBLE = "tests.manager_agents:Double"
ADD = "tests.manager_agents:AddOne"

# --- pure: plans, steps, ids, idle ----------------------------------------------------------


def test_declared_plans_by_goal_and_the_default_steps():
    args = {"plans": {"a": ["x"], "b": ["y", "z"]}, "steps": ["d"]}
    assert declared_steps("b", args) == ["y", "z"]
    assert declared_steps("other", args) == ["d"]


def test_an_unknown_goal_without_default_steps_names_the_goals_it_knows():
    with pytest.raises(PlanError, match=r"goal 'c'.*'a', 'b'"):
        declared_steps("c", {"plans": {"a": ["x"], "b": ["y"]}})


def test_steps_agent_ids_program_tables_and_parallel_groups():
    groups = parse_plan(["prep", {"parallel": [{"step": "code", "program": "code_program"},
                                               {"step": "lit", "program": DOUBLE, "args": {"k": 1}}]},
                         {"step": "check", "agent": "reviewer", "timeout": 2}])
    assert groups == [
        Group((Step("prep", agent="prep"),)),
        Group((Step("code", program="code_program"), Step("lit", program=DOUBLE, args={"k": 1})), parallel=True),
        Group((Step("check", agent="reviewer", timeout=2),)),
    ]


def test_the_older_programs_table_records_a_named_agents_program():
    assert parse_step("classifier", {"classifier": "classifier"}) == Step("classifier", agent="classifier",
                                                                          program="classifier")


@pytest.mark.parametrize("raw, words", [
    ([], "non-empty list"),
    (["a", "a"], "'a' is twice"),
    ([{"step": "a", "colour": 1}], "unknown key 'colour'"),
    ([{"program": DOUBLE}], "needs \"step\""),
    ([{"step": "a.b", "program": DOUBLE}], "step 'a.b' runs a program"),
    ([{"step": "../x"}], "step '../x'"),
    ([{"parallel": []}], "parallel group"),
    ([{"parallel": ["a"], "step": "b"}], "parallel group"),
    ([{"step": "a", "program": DOUBLE, "timeout": 0}], "timeout"),
    ([{"step": "a", "program": DOUBLE, "args": [1]}], "args is a table"),
    ([3], "agent id or a table"),
])
def test_a_wrong_plan_says_what_is_wrong(raw, words):
    with pytest.raises(PlanError) as caught:
        parse_plan(raw)
    assert words in str(caught.value)


def test_a_program_through_a_variable_or_literally():
    assert program_of(Step("s", program="p"), {"p": DOUBLE}) == DOUBLE
    assert program_of(Step("s", program=DOUBLE), {}) == DOUBLE
    assert program_of(Step("s", agent="s"), {}) is None
    with pytest.raises(PlanError, match=r"variable 'p' is not one of the manager's variables \(k\)"):
        program_of(Step("s", program="p"), {"k": 1})
    with pytest.raises(PlanError, match="'p' is 3, not a 'module:attr'"):
        program_of(Step("s", program="p"), {"p": 3})


def test_a_started_agents_id_is_stable_valid_and_names_its_manager_step_and_program():
    one = managed_id("manager", "code", DOUBLE)
    assert one == managed_id("manager", "code", DOUBLE, {}) and one.startswith("manager.code.Double-")
    assert len({one, managed_id("manager", "code", ADD), managed_id("manager", "code", DOUBLE, {"k": 2}),
                managed_id("other", "code", DOUBLE), managed_id("manager", "c2", DOUBLE)}) == 5
    long = managed_id("m" * 64, "s" * 40, "a" * 30 + ":" + "B" * 30)
    assert name_problem(long) is None and started_by("m" * 64, long) and len(owner_of("m" * 64)) == 30
    assert started_by("manager", one) and not started_by("man", one)
    assert not started_by("a", managed_id("a.x", "s", DOUBLE))  # a manager 'a' leaves 'a.x''s agents alone
    assert not started_by("manager", "manager.worker")


def test_idle_agents_and_when_to_look_next():
    used = {"a": 0.0, "b": 8.0, "busy": None}
    assert idle_agents(used, 10.0, 5.0) == ["a"]
    assert next_check({"b": 8.0, "busy": None}, 10.0, 5.0) == 3.0
    assert next_check({"busy": None}, 10.0, 5.0) is None


@pytest.mark.parametrize("args, words", [
    ({"idle_seconds": 0}, "args.idle_seconds"), ({"supervisor": "../x"}, "args.supervisor"),
    ({"plans": ["a"]}, "args.plans"), ({"plans": {"g": [{"step": "a", "bad": 1}]}}, "unknown key 'bad'"),
    ({"stage_timeout": True}, "args.stage_timeout"), ({"error_handling": "ignore"}, "args: error_handling"),
    ({"max_retries": -1}, "args.max_retries"),
])
def test_wrong_args_are_refused_at_setup(args, words):
    with pytest.raises(PlanError, match=words):
        check_args(args)
    with pytest.raises(PlanError, match=words):
        ManagerProgram().setup(args, {})


# --- the agents it starts, against an in-process node (its control calls, held at will) --------


class FakeNode:
    """The node's control socket as the manager uses it: a StartChild of an id in ``hold`` waits
    until the test sets its event; ids in ``present`` are there but not running (a failed
    restart waiting for its retry), and ``stuck`` ones stay so after a TerminateChild."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.present: set[str] = set()
        self.stuck: set[str] = set()
        self.hold: dict[str, threading.Event] = {}
        self.entered: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.calls: list[tuple[str, str]] = []
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self.pids = itertools.count(100)

    def connect(self, *args, **kwargs) -> "FakeClient":
        return FakeClient(self)


class FakeClient:
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def which_children(self, sup=None):
        return []

    def start_child(self, sup, spec):
        node = self.node
        with node.lock:
            node.calls.append(("start", spec.id))
            node.in_flight[spec.id] += 1
            node.most_in_flight[spec.id] = max(node.most_in_flight[spec.id], node.in_flight[spec.id])
        node.entered[spec.id].set()
        if spec.id in node.hold:
            assert node.hold[spec.id].wait(20), "the test never let the start go"
        with node.lock:
            node.in_flight[spec.id] -= 1
            if spec.id in node.running:
                return Outcome("already_started", pid=node.running[spec.id])
            if spec.id in node.present:
                return Outcome("already_present")
            node.running[spec.id] = next(node.pids)
            return Outcome("ok", pid=node.running[spec.id])

    def terminate_child(self, child_id, sup=None):
        with self.node.lock:
            self.node.calls.append(("terminate", child_id))
            if child_id not in self.node.stuck:
                self.node.present.discard(child_id)
            return Outcome("ok" if self.node.running.pop(child_id, None) else "not_found")

    def close(self):
        pass


@pytest.fixture
def fake(monkeypatch):
    node = FakeNode()
    monkeypatch.setattr("otpy.wire.client.connect", node.connect)
    monkeypatch.setenv("OTPY_NODE", "fake")
    monkeypatch.delenv("OTPY_CHILD_ID", raising=False)
    return node


@pytest.fixture
def manager(fake):
    program = ManagerProgram()
    program.setup({"supervisor": "workers", "idle_seconds": 600}, {})
    yield program
    for event in fake.hold.values():
        event.set()
    program.teardown()


def ensure(manager, step: str, program: str = ADD):
    """The pid of the manager's agent for ``step`` (started if need be), as a forward places it."""
    agent = managed_id("manager", step, program)
    return agent, manager._ensure(Step(step, program=program), program, agent, None)


def in_thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_an_agent_present_but_not_running_is_terminated_and_started_again(fake, manager):
    """``already_present``: the id is in the supervisor, stopped, with no pid (its restart
    failed and waits for a retry). A dynamic supervisor restarts no child on request: the
    manager drops it and starts it, and the stage calls a running agent."""
    agent = managed_id("manager", "add", ADD)
    fake.present.add(agent)
    assert ensure(manager, "add") == (agent, fake.running[agent])
    assert fake.calls == [("start", agent), ("terminate", agent), ("start", agent)]


def test_an_agent_that_stays_present_fails_its_stage_naming_it(fake, manager):
    agent = managed_id("manager", "add", ADD)
    fake.present.add(agent)
    fake.stuck.add(agent)
    with pytest.raises(StageFailed, match=rf"step 'add' \(program {ADD}, agent '{agent}'\) failed: cannot start it "
                                          r"under 'workers': already_present"):
        ensure(manager, "add")


def test_a_slow_start_holds_up_neither_other_agents_nor_the_idle_timer(fake, manager):
    """A StartChild waits for the agent's READY (its setup may train a model): meanwhile a
    call that needs another agent starts it, and an agent gone idle is terminated."""
    manager.idle_seconds = 0.05
    idle, _ = ensure(manager, "idle")
    slow = managed_id("manager", "slow", ADD)
    fake.hold[slow] = threading.Event()
    in_thread(ensure, manager, "slow")
    assert fake.entered[slow].wait(10)
    other = in_thread(ensure, manager, "other")
    in_thread(manager._release, [idle])
    wait_until(lambda: managed_id("manager", "other", ADD) in fake.running, timeout=5,
               what="another agent started while the slow one starts")
    wait_until(lambda: ("terminate", idle) in fake.calls, timeout=5, what="the idle agent terminated meanwhile")
    other.join(5)
    assert slow not in fake.running
    fake.hold[slow].set()
    wait_until(lambda: slow in fake.running, timeout=5, what="the slow agent started")


def test_two_calls_for_one_agent_start_it_once(fake, manager):
    """The second call waits for the first one's start (it does not send a StartChild of its
    own meanwhile) and calls the same agent."""
    agent = managed_id("manager", "add", ADD)
    fake.hold[agent] = threading.Event()
    first, second = [], []
    one = in_thread(lambda: first.append(ensure(manager, "add")))
    assert fake.entered[agent].wait(10)
    waiting = threading.Event()
    lock = manager._lock

    class Watched(type(lock)):
        def wait(self, timeout=None):
            if threading.current_thread() is two:
                waiting.set()
            return super().wait(timeout)

    manager._lock = watched = Watched(lock._lock)  # the same lock, its waits seen
    two = threading.Thread(target=lambda: second.append(ensure(manager, "add")), daemon=True)
    two.start()
    wait_until(lambda: waiting.is_set() or fake.calls.count(("start", agent)) > 1, timeout=5,
               what="the second call waits, or starts the agent again")
    fake.hold[agent].set()
    one.join(10), two.join(10)
    assert first == second == [(agent, fake.running[agent])] and fake.most_in_flight[agent] == 1
    assert watched is manager._lock


# --- live: a node with a dynamic supervisor, a planner and managers -------------------------

TOPOLOGY = """
[node]
name = "{name}"
[supervisor]
[[supervisor.children]]
id = "workers"
type = "dynamic_supervisor"
[[supervisor.children]]
id = "planner"
program = "tests.manager_agents:Planner"
[[supervisor.children]]
id = "m"
program = "otpy.optimize.manager:ManagerProgram"
  [supervisor.children.args]
  supervisor = "workers"
  idle_seconds = 600
  steps = [{{ step = "double", program = "double_program" }}]
    [supervisor.children.args.plans]
    fanout = [{{ parallel = [{{ step = "double", program = "double_program" }},
                             {{ step = "add", program = "tests.manager_agents:AddOne" }}] }},
              {{ step = "combine", program = "tests.manager_agents:Combine" }}]
    fails = [{{ step = "add", program = "tests.manager_agents:AddOne" }},
             {{ step = "broken", program = "tests.manager_agents:Fails" }}]
    named = ["planner"]
[[supervisor.children]]
id = "planned"
program = "otpy.optimize.manager:ManagerProgram"
args = {{ supervisor = "workers", planner = "planner" }}
[[supervisor.children]]
id = "brief"
program = "otpy.optimize.manager:ManagerProgram"
  [supervisor.children.args]
  supervisor = "workers"
  idle_seconds = 0.3
  steps = [{{ step = "add", program = "tests.manager_agents:AddOne" }}]
  plans = {{ unplaceable = [{{ parallel = [{{ step = "add", program = "tests.manager_agents:AddOne" }},
                                          {{ step = "other", program = "no_such_variable" }}] }}] }}
[[supervisor.children]]
id = "owner"
program = "otpy.optimize.manager:ManagerProgram"
args = {{ supervisor = "workers", steps = [{{ step = "add", program = "tests.manager_agents:AddOne" }}] }}
[[supervisor.children]]
id = "lost"
program = "otpy.optimize.manager:ManagerProgram"
args = {{ supervisor = "nowhere", steps = [{{ step = "add", program = "tests.manager_agents:AddOne" }}] }}
[variables.global]
double_program = {{ type = "module", modules = ["tests.manager_agents:Double", "tests.manager_agents:AddOne"], default = "tests.manager_agents:Double" }}
"""


@pytest.fixture(scope="module")
def node():
    topology = parse_topology(TOPOLOGY.format(name=unique_name("manager")), check_imports=True)
    with otpy.Node(topology.node) as node:
        yield node


def workers(node) -> dict[str, int | None]:
    return {c.id: c.pid for c in node.which_children("workers")}


def test_the_manager_starts_an_agent_for_a_program_on_demand_and_reuses_it(node):
    agent = managed_id("m", "double", DOUBLE)
    assert agent not in workers(node)
    first = node.call("m", {"x": 2.0}, timeout=30)
    assert first["x"] == 4.0
    pid = workers(node)[agent]
    assert first["trace"] == [{"step": "double", "program": DOUBLE, "agent": agent, "pid": pid,
                               "inputs": {"x": 2.0}, "outputs": {"x": 4.0}, "ms": first["trace"][0]["ms"],
                               "error": None}]
    assert first["trace"][0]["ms"] > 0
    second = node.call("m", {"x": 5.0}, timeout=30)
    assert second["x"] == 10.0 and second["trace"][0]["pid"] == pid and workers(node)[agent] == pid


def test_parallel_groups_get_the_same_inputs_and_the_next_stage_gets_their_outputs_by_step(node):
    answer = node.call("m", {"goal": "fanout", "x": 3.0}, timeout=30)
    assert answer["x"] == 6.0 + 4.0
    trace = {t["step"]: t for t in answer["trace"]}
    assert [t["step"] for t in answer["trace"]] == ["double", "add", "combine"]
    assert trace["double"]["inputs"] == trace["add"]["inputs"] == {"x": 3.0}
    assert trace["combine"]["inputs"] == {"double": {"x": 6.0}, "add": {"x": 4.0}}
    assert trace["add"]["program"] == ADD and trace["add"]["agent"] == managed_id("m", "add", ADD)
    assert all(t["pid"] == workers(node)[t["agent"]] and t["error"] is None for t in answer["trace"])


def test_a_named_agent_step_reports_the_agent_its_pid_and_the_program_it_runs(node):
    answer = node.call("m", {"goal": "named"}, timeout=30)
    [step] = answer["trace"]
    pid = {c.id: c.pid for c in node.which_children()}["planner"]
    assert (step["agent"], step["pid"], step["program"]) == ("planner", pid, "tests.manager_agents:Planner")


def test_a_failed_stage_names_its_step_program_and_agent_and_why(node):
    with pytest.raises(otpy.RemoteError) as caught:
        node.call("m", {"goal": "fails", "x": 1.0}, timeout=30)
    message = str(caught.value)
    assert "step 'broken'" in message and "tests.manager_agents:Fails" in message
    assert repr(managed_id("m", "broken", "tests.manager_agents:Fails")) in message and "no good" in message


def test_a_manager_without_its_dynamic_supervisor_says_so(node):
    with pytest.raises(otpy.RemoteError, match="step 'add' runs program tests.manager_agents:AddOne: "
                                               "args.supervisor 'nowhere': the node has no such supervisor"):
        node.call("lost", {"x": 1.0}, timeout=30)


def test_agents_are_started_only_under_a_dynamic_supervisor():
    live = {"pool": TreeEntry("pool", "dynamic_supervisor", "running"), "team": TreeEntry("team", "supervisor", "running")}
    assert supervisor_problem("pool", live) is None
    assert supervisor_problem("team", live) == "args.supervisor 'team' is a supervisor, not a dynamic_supervisor"
    assert "no such supervisor" in supervisor_problem("gone", live)


def test_a_planner_agent_decides_the_steps_by_goal(node):
    doubled = node.call("planned", {"goal": "double", "x": 4.0}, timeout=30)
    assert doubled["x"] == 8.0 and [t["program"] for t in doubled["trace"]] == [DOUBLE]
    both = node.call("planned", {"goal": "both", "x": 4.0}, timeout=30)
    assert both["x"] == 9.0 and [t["step"] for t in both["trace"]] == ["double", "add"]
    assert both["trace"][1]["inputs"] == {"x": 8.0}
    with pytest.raises(otpy.RemoteError, match="no steps planned for goal 'cook'"):
        node.call("planned", {"goal": "cook"}, timeout=30)


def test_an_idle_agent_is_terminated_after_idle_seconds(node):
    agent = managed_id("brief", "add", ADD)
    assert node.call("brief", {"x": 1.0}, timeout=30)["x"] == 2.0
    wait_until(lambda: agent not in workers(node), timeout=20, what=f"{agent} terminated when idle")
    assert node.call("brief", {"x": 2.0}, timeout=30)["x"] == 3.0  # started again on demand


def test_an_agent_placed_before_a_step_that_cannot_be_placed_is_idle_again(node):
    agent = managed_id("brief", "add", ADD)
    with pytest.raises(otpy.RemoteError, match="step 'other': program variable 'no_such_variable'"):
        node.call("brief", {"goal": "unplaceable", "x": 1.0}, timeout=30)
    assert agent in workers(node)  # started for the group, then released with it
    wait_until(lambda: agent not in workers(node), timeout=20, what=f"{agent} terminated when idle")


def test_a_managers_agents_end_with_it_and_its_next_incarnation_adopts_them(node):
    agent = managed_id("owner", "add", ADD)
    node.call("owner", {"x": 1.0}, timeout=30)
    pid = workers(node)[agent]
    manager = {c.id: c.pid for c in node.which_children()}["owner"]
    os.kill(manager, signal.SIGKILL)  # no teardown: its agent is left, for the next incarnation
    wait_until(lambda: (p := {c.id: c.pid for c in node.which_children()}["owner"]) and p != manager,
               timeout=20, what="owner restarted")
    assert workers(node)[agent] == pid
    assert node.terminate_child("owner").ok  # teardown: what it adopted at setup goes with it
    assert agent not in workers(node)
    assert node.restart_child("owner").ok
    answer = node.call("owner", {"x": 1.0}, timeout=30)
    assert answer["trace"][0]["pid"] == workers(node)[agent] != pid



# --- ids that fit the node: an agent's socket path within AF_UNIX's limit ---------------------


def test_the_readable_id_gives_way_to_the_short_one_when_its_socket_would_not_fit():
    """``<node folder>/agents/<id>.sock`` must fit AF_UNIX's 107 bytes: for a long node name or
    runtime folder the manager names its agent ``MANAGER.HASH8`` (same digest: still its own)."""
    readable = managed_id("manager", "model", "pkg.models:RandomForestClassifier")
    roomy, tight = "/run/otpy/node", "/" + "f" * (106 - len("/agents/.sock") - len(readable))
    assert managed_id("manager", "model", "pkg.models:RandomForestClassifier", node_folder=roomy) == readable
    assert managed_id("manager", "model", "pkg.models:RandomForestClassifier", node_folder=tight + "f") == \
        f"manager.{readable[-8:]}"
    assert managed_id("manager", "model", "pkg.models:RandomForestClassifier", node_folder=tight) == readable


TIGHT = """
[node]
name = "{name}"
[supervisor]
[[supervisor.children]]
id = "workers"
type = "dynamic_supervisor"
[[supervisor.children]]
id = "m"
program = "otpy.optimize.manager:ManagerProgram"
args = {{ supervisor = "workers", steps = [{{ step = "add", program = "tests.manager_agents:AddOne" }}] }}
[[supervisor.children]]
id = "manager-10"
program = "otpy.optimize.manager:ManagerProgram"
args = {{ supervisor = "workers", steps = [{{ step = "add", program = "tests.manager_agents:AddOne" }}] }}
"""


@pytest.fixture(scope="module")
def tight_node():
    """A node whose name leaves room for agent ids of 14 characters, no more (its own longest
    socket, the zygote's spare ``agents/.spare-4194304.sock``, fits exactly)."""
    from otpy.host.runtime_dir import node_folder_path

    room = 107 - len(node_folder_path("")) - len("/agents/.spare-4194304.sock")  # the folder's "/" counted
    name = unique_name("tight")
    if room < len(name):
        pytest.skip(f"the runtime folder is too long for a node name of {len(name)} characters")
    topology = parse_topology(TIGHT.format(name=name.ljust(room, "x")), check_imports=True)
    with otpy.Node(topology.node) as node:
        yield node


def test_a_long_node_name_gets_the_managers_short_ids(tight_node):
    readable = managed_id("m", "add", ADD)
    answer = tight_node.call("m", {"x": 1.0}, timeout=30)
    assert answer["x"] == 2.0 and answer["trace"][0]["agent"] == f"m.{readable[-8:]}" in workers(tight_node)


def test_an_id_that_fits_in_no_form_fails_the_stage_naming_what_to_shorten(tight_node):
    from otpy.host.runtime_dir import runtime_root

    with pytest.raises(otpy.RemoteError) as caught:
        tight_node.call("manager-10", {"x": 1.0}, timeout=30)
    message = str(caught.value)
    assert "step 'add'" in message and "AF_UNIX" in message and repr(tight_node.name) in message
    assert str(runtime_root()) in message and "OTPY_RUNTIME_DIR" in message and "manager-10" in message
    assert not [c for c in tight_node.which_children("workers") if c.id.startswith("manager-10.")]
