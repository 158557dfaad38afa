"""The manager program: its forward pass plans the steps for a goal, finds or starts the agent
serving each one, and runs them as stages, sequential or in parallel groups.

``forward(goal=..., **inputs)``:

1. resolves the manager's variables from the registry (when the node has one),
2. plans the steps: ``plan(goal, config)`` asks the planner agent (``args.planner``), else takes
   the declared steps (``args.plans[goal]``, else ``args.steps``),
3. finds the agent of each step: a named agent, or, for a step that runs a **program** (through
   a ``module`` variable of the manager, or literally), the manager's own agent for it, started
   under its dynamic supervisor (``args.supervisor``) with a ``StartChild`` on first use,
   reused after, terminated once idle for ``args.idle_seconds``,
4. runs the stages (each a ``Pipeline``: one step, or a parallel group) and returns the last
   stage's outputs with a ``trace``: per step ``step, program, agent, pid, inputs, outputs, ms,
   error`` (what a demonstration-bootstrapping optimizer learns from).

A step is an agent id (``"prep"``), or a table: ``{step = "code", program = "code_program"}``
(the program the manager's variable ``code_program`` names; ``program = "pkg.mod:Attr"`` names it
literally), with optional ``agent`` (call that agent instead of starting one), ``args`` (the
started agent's args) and ``timeout``. ``{parallel = [step, ...]}`` is a group whose steps get
the same inputs at once; the next stage gets ``{step: outputs}`` of the group.

>>> class Team(ManagerProgram):
...     def plan(self, goal, config):
...         return ["writer", "critic"] if goal == "review" else ["writer"]
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from .pipeline import (ErrorHandling, Group, Pipeline, PipelineError, PlanError, Stage, Step, agent_ref_problem,
                       declared_steps, parse_plan, shown)
from ..agent.program import Program
from .managed_agents import idle_agents, managed_id, next_check, room_problem, started_by
from ..agent.registry_link import chain, has_registry
from ..host.runtime_dir import node_folder_path
from ..specs.model import ChildSpec, is_import_target, name_problem
from ..variables.client import RegistryClient, RegistryRefused
from ..wire.protocol import TreeEntry

log = logging.getLogger("otpy.manager")

DEFAULT_IDLE_SECONDS = 300.0  # a started agent unused this long is terminated
CONTROL_TIMEOUT = 60.0  # a StartChild waits for the agent's READY (its setup may train a model)
RUNS = ("ok", "already_started")  # a StartChild answered so: the agent runs (``already_present`` does not)


class StageFailed(RuntimeError):
    """A stage failed: which step, which program, which agent, and why."""

    def __init__(self, step: str, program: str | None, agent: str, reason: str) -> None:
        super().__init__(f"step {step!r} (program {program or 'unknown'}, agent {agent!r}) failed: {reason}")
        self.step, self.program, self.agent, self.reason = step, program, agent, reason


# --- programs, ids, idle agents (pure) ---------------------------------------------------


def program_of(step: Step, config: Mapping[str, Any]) -> str | None:
    """The ``module:attr`` the step runs: its literal program, or the value of the manager's
    variable it names; None for a named agent with no program given."""
    if step.program is None:
        return None
    if ":" in step.program:
        if not is_import_target(step.program):
            raise PlanError(f"step {step.name!r}: program {step.program!r} is not 'module:attr'")
        return step.program
    if step.program not in config:
        known = ", ".join(sorted(config)) or "none"
        raise PlanError(f"step {step.name!r}: program variable {step.program!r} is not one of the manager's "
                        f"variables ({known}): declare it (type module) in a scope of the manager")
    value = config[step.program]
    if not is_import_target(value):
        raise PlanError(f"step {step.name!r}: variable {step.program!r} is {shown(value)}, not a 'module:attr' program")
    return value


def start_problem(outcome: str, detail: str) -> str | None:
    """Why a StartChild answered ``outcome`` left no running agent; None when it runs.
    ``already_present``: the id is in the supervisor but stopped, with no pid (a restart that
    failed and waits for its retry)."""
    if outcome in RUNS:
        return None
    if outcome == "already_present":
        return "already_present: it is there but not running, and did not start again"
    return f"{outcome}: {detail}"


def check_args(args: Mapping[str, Any]) -> None:
    """The manager's args, checked at setup: the agent does not start with a wrong one."""
    for key in ("plans", "programs"):
        if key in args and not isinstance(args[key], Mapping):
            raise PlanError(f"args.{key}: a table, got {shown(args[key])}")
    for key, check in (("planner", agent_ref_problem), ("supervisor", name_problem)):  # a planner may be AGENT@NODE
        if args.get(key) is not None:
            if (problem := check(args[key], f"args.{key}")) is not None:
                raise PlanError(problem)
    for key in ("idle_seconds", "stage_timeout"):
        if key in args and not (isinstance(args[key], (int, float)) and not isinstance(args[key], bool)
                                and args[key] > 0):
            raise PlanError(f"args.{key}: a number of seconds > 0, got {shown(args[key])}")
    try:
        Pipeline(["check"], error_handling=args.get("error_handling", "fail_fast"),
                 max_retries=args.get("max_retries", 1))
    except PipelineError as exc:
        raise PlanError(f"args: {exc}") from None
    if not (isinstance(args.get("max_retries", 1), int) and args.get("max_retries", 1) >= 0):
        raise PlanError(f"args.max_retries: an integer >= 0, got {shown(args['max_retries'])}")
    for steps in dict(args.get("plans") or {}).values():
        parse_plan(steps, args.get("programs"))
    if "steps" in args:
        parse_plan(args["steps"], args.get("programs"))


def entries(tree: TreeEntry) -> dict[str, TreeEntry]:
    """Every supervisor and worker of a status tree, by id (ids are unique in a node)."""
    found: dict[str, TreeEntry] = {}
    stack = [tree]
    while stack:
        entry = stack.pop()
        found[entry.id] = entry
        stack.extend(entry.children or ())
    return found


def supervisor_problem(supervisor: str, live: Mapping[str, TreeEntry]) -> str | None:
    """Why the manager cannot start agents under ``supervisor`` (the node's tree now): only a
    dynamic supervisor forgets a terminated child, so that starting it again starts it."""
    entry = live.get(supervisor)
    if entry is None:
        return f"args.supervisor {supervisor!r}: the node has no such supervisor running"
    if entry.kind != "dynamic_supervisor":
        return f"args.supervisor {supervisor!r} is a {entry.kind}, not a dynamic_supervisor"
    return None


# --- the program ----------------------------------------------------------------------------


@dataclass
class _Placed:
    """A step with the agent that serves it in this call."""

    step: Step
    program: str | None
    agent: str
    pid: int | None
    managed: bool = False


class ManagerProgram(Program):
    """A program that plans per goal and runs other agents as the stages of each call.

    Args (from the child spec): ``steps`` (the plan of any goal), ``plans`` (goal -> steps),
    ``planner`` (an agent asked ``{"goal": goal}`` for ``{"steps": [...]}``), ``programs`` (step
    -> a ``module`` variable: the program recorded for a named agent), ``supervisor`` (the
    dynamic supervisor where the manager starts agents for program steps), ``idle_seconds``
    (default 300), ``stage_timeout`` (seconds, default 5), ``error_handling``, ``max_retries``.

    Override ``plan`` to plan otherwise, ``agent_for`` to pick another agent for a step.
    """

    def setup(self, args: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        check_args(args)
        self.args = dict(args)
        self.config = dict(config)
        self.supervisor: str | None = self.args.get("supervisor")
        self.idle_seconds = float(self.args.get("idle_seconds", DEFAULT_IDLE_SECONDS))
        # The lock guards the bookkeeping only: no control call (a start waits for READY, up to
        # a minute) is made under it, so a slow start holds up neither other calls nor the reaper.
        self._lock = threading.Condition()
        self._last_used: dict[str, float | None] = {}  # the agents it started: last use, None while used
        self._users: dict[str, int] = {}
        self._busy: set[str] = set()  # agents with a start or terminate in flight: others wait for it
        self._clients: list = []  # idle control clients (one socket each, one thread at a time)
        self._closing = False
        self._reaper: threading.Thread | None = None
        if self.supervisor is not None:
            self.adopt()

    def on_config(self, config: Mapping[str, Any]) -> None:
        """Variables are resolved again at every forward: a change needs no restart (which would
        stop the agents it started)."""
        self.config = dict(config)

    # --- the hooks ------------------------------------------------------------------------

    def plan(self, goal: str, config: Mapping[str, Any]) -> list[Any]:
        """The steps for ``goal``: the planner agent's, else the declared ones. Override to plan otherwise."""
        planner = self.args.get("planner")
        if planner is None:
            return declared_steps(goal, self.args)
        reply = self.call(planner, {"goal": goal}, timeout=float(self.args.get("stage_timeout", 5.0)))
        steps = reply.get("steps") if isinstance(reply, Mapping) else None
        if not isinstance(steps, list):
            raise PlanError(f"planner {planner!r} answered {shown(reply)} for goal {goal!r}; expected {{\"steps\": [...]}}")
        return steps

    def agent_for(self, step: Step, config: Mapping[str, Any]) -> str | None:
        """The agent to call for ``step``; None: the manager's own agent for the step's program."""
        return step.agent

    # --- a call ---------------------------------------------------------------------------

    def forward(self, goal: str = "", **inputs: Any) -> dict[str, Any]:
        config = self.resolve_config()
        steps = self.plan(goal, config)
        if not steps:
            raise PlanError(f"no steps planned for goal {goal!r}")
        groups = parse_plan(steps, self.args.get("programs"))
        placed: list[list[_Placed]] = []
        try:
            live = self._live()
            for group in groups:
                placed.append([])
                for step in group.steps:  # one at a time: an agent placed before a failure is released
                    placed[-1].append(self._place(step, config, live))
            outputs, trace = self._run(groups, placed, inputs)
        finally:
            self._release([p.agent for stage in placed for p in stage if p.managed])
        return {**outputs, "trace": trace}

    def _place(self, step: Step, config: Mapping[str, Any], live: dict[str, TreeEntry] | None) -> _Placed:
        program = program_of(step, config)
        agent = self.agent_for(step, config)
        if agent is not None:
            entry = (live or {}).get(agent)
            running = entry.program if entry is not None and entry.program else program
            return _Placed(step, running, agent, entry.pid if entry is not None else None)
        if program is None:
            raise PlanError(f"step {step.name!r} names neither an agent nor a program")
        if self.supervisor is None:
            raise PlanError(f"step {step.name!r} runs program {program}: give args.supervisor, the dynamic "
                            "supervisor where the manager starts an agent for it")
        if live is not None and (problem := supervisor_problem(self.supervisor, live)):
            raise PlanError(f"step {step.name!r} runs program {program}: {problem}")
        folder = node_folder_path(node) if (node := os.environ.get("OTPY_NODE")) else None  # where its socket goes
        agent = managed_id(self._manager_id(), step.name, program, step.args, folder)
        if folder is not None and (problem := room_problem(agent, self._manager_id(), node, folder)):
            raise StageFailed(step.name, program, agent, f"cannot start it under {self.supervisor!r}: {problem}")
        return _Placed(step, program, agent, self._ensure(step, program, agent, live), managed=True)

    def _run(self, groups: list[Group], placed: list[list[_Placed]], inputs: Mapping[str, Any]):
        handling: ErrorHandling = self.args.get("error_handling", "fail_fast")
        caller = self.node_caller()
        current, trace = dict(inputs), []
        for group, stage in zip(groups, placed):
            pipeline = Pipeline([Stage(p.step.name, p.agent, timeout=p.step.timeout) for p in stage],
                                strategy="parallel" if group.parallel else "sequential", error_handling=handling,
                                max_retries=int(self.args.get("max_retries", 1)),
                                stage_timeout=float(self.args.get("stage_timeout", 5.0)))
            result = pipeline.run(current, caller)
            ms = {name: ms for name, _, _, ms in result.trace}
            for p in stage:
                done = p.step.name in result.stage_results
                trace.append({"step": p.step.name, "program": p.program, "agent": p.agent, "pid": p.pid,
                              "inputs": current, "outputs": result.stage_results.get(p.step.name),
                              "ms": ms.get(p.step.name, 0.0),
                              "error": None if done else _describe(result.errors.get(p.step.name))})
            if result.errors and handling != "continue_on_error":
                failed = next(p for p in stage if p.step.name in result.errors)
                raise StageFailed(failed.step.name, failed.program, failed.agent,
                                  _describe(result.errors[failed.step.name]))
            current = result.outputs
        return current, trace

    def resolve_config(self) -> dict[str, Any]:
        """This manager's variables as the registry resolves them now (setup's, without a registry)."""
        if has_registry() is None or os.environ.get("OTPY_CHILD_ID") is None:
            return self.config  # not a child of a node with a registry (a stale socket file is none)
        try:
            self.config = RegistryClient(self.node_caller()).resolve(os.environ["OTPY_CHILD_ID"], chain())
        except RegistryRefused:
            pass  # unresolvable now: the last configuration stands
        return self.config

    # --- the agents it starts -------------------------------------------------------------

    @contextmanager
    def control(self) -> Iterator[Any]:
        """A client of the node's control socket (``otpy.connect``) for one call, made outside
        the lock. A client is one socket for one thread at a time: calls at once borrow
        different ones from a pool, made on demand; one that failed is closed, not reused."""
        with self._lock:
            client = self._clients.pop() if self._clients else None
        if client is None:
            from ..wire.client import connect

            node = os.environ.get("OTPY_NODE")
            if not node:
                raise RuntimeError("a manager starts agents in an agent run by an otpy node (no OTPY_NODE)")
            client = connect(node, timeout=CONTROL_TIMEOUT)
        try:
            yield client
        except BaseException:
            client.close()
            raise
        with self._lock:
            if self._closing:
                client.close()
            else:
                self._clients.append(client)

    def adopt(self) -> list[str]:
        """Take over the agents a previous incarnation of this manager started (it crashed, or
        was killed, before its teardown): they are reused, and terminated once idle like the
        ones it starts itself. A supervisor not running yet has none."""
        from ..wire.operations import ControlError

        try:
            with self.control() as client:
                children = client.which_children(self.supervisor)
        except (ControlError, LookupError, TimeoutError, RuntimeError) as exc:
            log.info("manager %s: nothing to adopt under %r (%s)", self._manager_id(), self.supervisor, exc)
            return []
        adopted = [c.id for c in children if started_by(self._manager_id(), c.id)]
        with self._lock:
            for agent in adopted:
                self._last_used.setdefault(agent, time.monotonic())
            self._wake_reaper()
        return adopted

    def _ensure(self, step: Step, program: str, agent: str, live: dict[str, TreeEntry] | None) -> int | None:
        """The pid of the running agent ``agent`` for ``step``, started now if it is not running;
        marked in use until ``_release``. A start or terminate of the same agent in flight (another
        call's, the reaper's) is waited for; other agents' are not."""
        with self._lock:
            self._lock.wait_for(lambda: agent not in self._busy)
            if self._closing:
                raise StageFailed(step.name, program, agent, "the manager is stopping: it starts no agent")
            entry = (live or {}).get(agent)
            known = agent in self._last_used
            self._users[agent] = self._users.get(agent, 0) + 1
            self._last_used[agent] = None  # in use: the reaper leaves it
            if known and entry is not None and entry.state == "running":
                return entry.pid
            self._busy.add(agent)
        try:
            return self._start(step, program, agent)
        except BaseException:
            self._release([agent])  # idle: terminated in time should the start have half-happened
            raise
        finally:
            with self._lock:
                self._busy.discard(agent)
                self._wake_reaper()

    def _start(self, step: Step, program: str, agent: str) -> int | None:
        """Start ``agent`` under the supervisor (outside the lock), and its pid. An agent there
        but not running (``already_present``) is terminated and started again: a dynamic
        supervisor restarts no child on request."""
        spec = ChildSpec(id=agent, program=program, args=dict(step.args))
        try:
            with self.control() as client:
                outcome = client.start_child(self.supervisor, spec)
                if outcome.outcome == "already_present":
                    client.terminate_child(agent, self.supervisor)
                    outcome = client.start_child(self.supervisor, spec)
        except Exception as exc:  # the node did not answer, or refused: say which step
            raise StageFailed(step.name, program, agent, f"cannot start it under {self.supervisor!r}: {exc}") from None
        if (problem := start_problem(outcome.outcome, outcome.detail)) is not None:
            raise StageFailed(step.name, program, agent, f"cannot start it under {self.supervisor!r}: {problem}")
        return outcome.pid

    def _release(self, agents: list[str]) -> None:
        with self._lock:
            for agent in agents:
                self._users[agent] -= 1
                if not self._users[agent]:
                    del self._users[agent]
                    self._last_used[agent] = time.monotonic()
            self._lock.notify_all()

    def _live(self) -> dict[str, TreeEntry] | None:
        """The node's tree now, by id (pids and programs for the trace; which started agents
        still run); None outside a node."""
        if not os.environ.get("OTPY_NODE"):
            return None
        with self.control() as client:
            return entries(client.status().tree)

    def _wake_reaper(self) -> None:
        """Under the lock: start the thread that terminates idle agents, or have it look again."""
        if self._reaper is None and not self._closing:
            self._reaper = threading.Thread(target=self._reap, name="otpy-manager-idle", daemon=True)
            self._reaper.start()
        self._lock.notify_all()

    def _reap(self) -> None:
        """Sleeps until the next agent becomes idle (or a change wakes it), then terminates it
        (the terminates outside the lock)."""
        while True:
            with self._lock:
                while not self._closing and not (idle := self._take(idle_agents(self._last_used, time.monotonic(),
                                                                                    self.idle_seconds))):
                    self._lock.wait(next_check(self._last_used, time.monotonic(), self.idle_seconds))
                if self._closing:
                    return  # teardown terminates what is left
            self._terminate(idle)

    def _take(self, agents: list[str]) -> list[str]:
        """Under the lock: ``agents`` are no longer its own, and busy until terminated."""
        for agent in agents:
            del self._last_used[agent]
        self._busy.update(agents)
        return agents

    def _terminate(self, agents: list[str]) -> None:
        """Stop agents it started (taken with ``_take``); gone already is fine."""
        for agent in agents:
            try:
                with self.control() as client:
                    outcome = client.terminate_child(agent, self.supervisor)
                if not outcome.ok and outcome.outcome != "not_found":
                    log.warning("manager %s: terminate %s: %s %s", self._manager_id(), agent, outcome.outcome, outcome.detail)
            except Exception as exc:  # the node stops (it stops every agent) or is gone
                log.info("manager %s: terminate %s: %s", self._manager_id(), agent, exc)
            finally:
                with self._lock:
                    self._busy.discard(agent)
                    self._lock.notify_all()

    def teardown(self) -> None:
        """Terminate the agents it started: another manager, or its own next incarnation, must
        not find them running for nobody. Starts in flight end first (their agents are then
        terminated too)."""
        if not hasattr(self, "_lock"):
            return  # its setup failed: it started nothing
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            self._lock.wait_for(lambda: not self._busy, timeout=2 * CONTROL_TIMEOUT)
            agents = self._take(list(self._last_used))
        self._terminate(agents)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def _manager_id(self) -> str:
        return os.environ.get("OTPY_CHILD_ID", "manager")


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "not finished: another stage of its group failed first"
    return f"{type(error).__name__}: {error}"
