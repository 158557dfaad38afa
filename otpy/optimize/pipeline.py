"""Pipelines: a fixed plan of agent calls, sequential (each stage feeds the next) or parallel.

>>> Pipeline.from_table("team", {"strategy": "parallel", "stages": ["a", "b"]}).stages[1]
Stage(id='b', agent='b', timeout=None, retries=None)

``run(inputs, caller)`` returns a ``PipelineResult``; with ``fail_fast`` the first failed
stage ends the run (its error is in ``errors``), with ``continue_on_error`` the others run
anyway (sequential: a failed stage passes its inputs on), with ``retry`` each failing
stage is called again up to ``max_retries`` times (any ``CallError`` but ``NoSuchAgent``),
then the run fails fast. ``Stage(retries=...)`` sets a stage's own number of retries.

Plans (``parse_plan``): what a manager (``optimize.manager``) runs per call, a list of steps
(an agent id, or a table naming a program) and ``{parallel = [...]}`` groups; each group
runs as one ``Pipeline``.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from ..specs.model import name_problem
from ..wire.calls import Caller
from ..wire.errors import CallError, NoSuchAgent

PipelineStrategy = Literal["sequential", "parallel"]
ErrorHandling = Literal["fail_fast", "continue_on_error", "retry"]
_STRATEGIES = ("sequential", "parallel")
_ERROR_HANDLING = ("fail_fast", "continue_on_error", "retry")


class PipelineError(ValueError):
    """A pipeline definition is wrong; the message names the pipeline and the key."""


class PlanError(PipelineError):
    """A plan (a manager's steps) is wrong; the message names the step or the field."""


STEP_KEYS = ("step", "agent", "program", "args", "timeout")
PROGRAM_STEP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")  # part of an agent's id, no '.' (managed_agents.managed_id)


@dataclass(frozen=True)
class Stage:
    """One step: call ``agent``; ``id`` names the stage in the results (default: the agent id)."""

    id: str
    agent: str = ""
    timeout: float | None = None
    retries: int | None = None

    def __post_init__(self) -> None:
        if not self.agent:
            object.__setattr__(self, "agent", self.id)


@dataclass
class PipelineResult:
    """``outputs``: the last stage's (sequential) or every stage's by id (parallel).

    ``stage_results`` and ``errors`` are keyed by stage id; ``trace`` lists
    ``(stage, agent, ok, ms)`` in the order the stages ended.
    """

    outputs: dict[str, Any]
    stage_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, CallError] = field(default_factory=dict)
    trace: list[tuple[str, str, bool, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]
    strategy: PipelineStrategy = "sequential"
    error_handling: ErrorHandling = "fail_fast"
    max_retries: int = 1
    stage_timeout: float = 5.0

    def __init__(self, stages, strategy: PipelineStrategy = "sequential", error_handling: ErrorHandling = "fail_fast",
                 max_retries: int = 1, stage_timeout: float = 5.0) -> None:
        stages = tuple(s if isinstance(s, Stage) else Stage(str(s)) for s in stages)
        _check(strategy in _STRATEGIES, f"strategy must be one of {_STRATEGIES}, not {strategy!r}")
        _check(error_handling in _ERROR_HANDLING, f"error_handling must be one of {_ERROR_HANDLING}, not {error_handling!r}")
        _check(len({s.id for s in stages}) == len(stages), "stage ids must be unique")
        _check(bool(stages), "a pipeline needs at least one stage")
        for name, value in (("stages", stages), ("strategy", strategy), ("error_handling", error_handling),
                            ("max_retries", max_retries), ("stage_timeout", stage_timeout)):
            object.__setattr__(self, name, value)

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any]) -> "Pipeline":
        """From a topology's ``[pipelines.NAME]`` table; ``PipelineError`` names the bad key."""
        known = {"strategy", "error_handling", "max_retries", "stage_timeout", "stages"}
        if unknown := sorted(set(table) - known):
            raise PipelineError(f"pipelines.{name}: unknown key {unknown[0]!r}")
        stages = table.get("stages")
        if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
            raise PipelineError(f"pipelines.{name}.stages: must be a list of agent ids")
        try:
            return cls(stages, **{k: v for k, v in table.items() if k != "stages"})
        except (PipelineError, TypeError) as exc:
            raise PipelineError(f"pipelines.{name}: {exc}") from None

    def run(self, inputs: Mapping[str, Any], caller: Caller) -> PipelineResult:
        match self.strategy:
            case "sequential":
                return self._run_sequential(dict(inputs), caller)
            case "parallel":
                return self._run_parallel(dict(inputs), caller)
        raise AssertionError(self.strategy)

    # --- the two strategies -----------------------------------------------------------------

    def _run_sequential(self, inputs: dict[str, Any], caller: Caller) -> PipelineResult:
        result = PipelineResult(outputs=inputs)
        for stage in self.stages:
            start = time.monotonic()
            attempts = self._attempts(stage)
            while True:
                attempts -= 1
                try:
                    outputs = caller.call(stage.agent, result.outputs, timeout=self._timeout(stage))
                    break
                except CallError as error:
                    if attempts > 0 and not isinstance(error, NoSuchAgent):
                        continue
                    self._record(result, stage, start, error=error)
                    if self.error_handling != "continue_on_error":
                        return result
                    outputs = None  # the failed stage passes its inputs on
                    break
            if outputs is not None:
                self._record(result, stage, start, outputs=outputs)
                result.outputs = outputs
        return result

    def _run_parallel(self, inputs: dict[str, Any], caller: Caller) -> PipelineResult:
        start = time.monotonic()
        result = PipelineResult(outputs={})
        attempts = {stage: self._attempts(stage) for stage in self.stages}
        running = {self._submit(caller, stage, inputs, attempts): stage for stage in self.stages}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                try:
                    result.stage_results[stage.id] = future.result()
                except CallError as error:
                    if attempts[stage] > 0 and not isinstance(error, NoSuchAgent):
                        running[self._submit(caller, stage, inputs, attempts)] = stage
                        continue
                    self._record(result, stage, start, error=error)
                    if self.error_handling != "continue_on_error":
                        self._abandon(running, result)
                        return result
                    continue
                self._record(result, stage, start, outputs=result.stage_results[stage.id])
                result.outputs[stage.id] = result.stage_results[stage.id]
        return result

    # --- helpers ----------------------------------------------------------------------------

    def _submit(self, caller: Caller, stage: Stage, inputs: dict[str, Any], attempts: dict) -> Future:
        attempts[stage] -= 1
        return caller.submit(stage.agent, inputs, timeout=self._timeout(stage))

    @staticmethod
    def _abandon(running: dict[Future, Stage], result: PipelineResult) -> None:
        """Fail fast: stop waiting for the other stages (their calls may still run)."""
        for future, stage in running.items():
            future.cancel()
            result.trace.append((stage.id, stage.agent, False, 0.0))

    def _timeout(self, stage: Stage) -> float:
        return stage.timeout if stage.timeout is not None else self.stage_timeout

    def _attempts(self, stage: Stage) -> int:
        if stage.retries is not None:
            return 1 + stage.retries
        return 1 + (self.max_retries if self.error_handling == "retry" else 0)

    @staticmethod
    def _record(result: PipelineResult, stage: Stage, start: float, *, outputs=None, error=None) -> None:
        ms = (time.monotonic() - start) * 1000
        if error is None:
            result.stage_results[stage.id] = outputs
        else:
            result.errors[stage.id] = error
        result.trace.append((stage.id, stage.agent, error is None, round(ms, 3)))


# --- plans: a manager's steps and parallel groups (pure) ------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a plan: call ``agent``, or (``agent`` None) the manager's agent running
    ``program`` (a variable's name, or ``module:attr``)."""

    name: str
    agent: str | None = None
    program: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict, hash=False)
    timeout: float | None = None


@dataclass(frozen=True)
class Group:
    """A stage: one step, or steps run at once (``parallel``)."""

    steps: tuple[Step, ...]
    parallel: bool = False


def declared_steps(goal: str, args: Mapping[str, Any]) -> list[Any]:
    """The declared plan for ``goal``: ``args.plans[goal]``, else ``args.steps``.

    >>> declared_steps("b", {"plans": {"a": ["x"]}, "steps": ["y"]})
    ['y']
    """
    plans = args.get("plans") or {}
    if goal in plans:
        return list(plans[goal])
    if "steps" in args:
        return list(args["steps"])
    known = ", ".join(repr(g) for g in sorted(plans)) or "none"
    raise PlanError(f"no plan for goal {goal!r}: args.plans has goals {known} and there is no args.steps "
                    "(the plan of any other goal)")


def parse_plan(raw: Any, programs: Mapping[str, str] | None = None) -> list[Group]:
    """The stages of a plan (a list of steps and ``{parallel = [...]}`` groups). ``programs``
    (step -> variable) is the older form of a named agent's program, recorded in the trace."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PlanError(f"a plan is a non-empty list of steps, got {shown(raw)}")
    groups = [_group(item, programs or {}) for item in raw]
    names = [step.name for group in groups for step in group.steps]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise PlanError(f"step {twice[0]!r} is twice in the plan: name each step once (\"step\" of a table)")
    return groups


def _group(item: Any, programs: Mapping[str, str]) -> Group:
    if isinstance(item, Mapping) and "parallel" in item:
        if set(item) != {"parallel"} or not isinstance(item["parallel"], (list, tuple)) or not item["parallel"]:
            raise PlanError(f"a parallel group is {{parallel = [step, ...]}} and nothing else, got {shown(item)}")
        return Group(tuple(parse_step(s, programs) for s in item["parallel"]), parallel=True)
    return Group((parse_step(item, programs),))


def parse_step(raw: Any, programs: Mapping[str, str] | None = None) -> Step:
    """A step from its plan form: an agent id, or a table with ``step`` and ``agent`` or ``program``.

    >>> parse_step({"step": "code", "program": "code_program"})
    Step(name='code', agent=None, program='code_program', args={}, timeout=None)
    """
    if isinstance(raw, str):
        _check_agent_ref(raw, f"step {raw!r}")
        return Step(raw, agent=raw, program=(programs or {}).get(raw))
    if not isinstance(raw, Mapping):
        raise PlanError(f"a step is an agent id or a table {{step = ..., program = ...}}, got {shown(raw)}")
    name = raw.get("step")
    if unknown := sorted(set(raw) - set(STEP_KEYS)):
        raise PlanError(f"step {name!r}: unknown key {unknown[0]!r} (keys: {', '.join(STEP_KEYS)})")
    if not isinstance(name, str):
        raise PlanError(f"a step table needs \"step\", its name: got {shown(raw)}")
    _check_step_name(name, f"step {name!r}")
    agent, program, args, timeout = raw.get("agent"), raw.get("program"), raw.get("args", {}), raw.get("timeout")
    if agent is not None:
        _check_agent_ref(agent, f"step {name!r}: agent")
    if program is not None and not (isinstance(program, str) and program):
        raise PlanError(f"step {name!r}: program is a variable's name or 'module:attr', got {shown(program)}")
    if agent is None and program is None:
        agent = name
    if agent is None and not PROGRAM_STEP_NAME.match(name):
        raise PlanError(f"step {name!r} runs a program: its name is 1 to 40 letters, digits, '_' or '-' "
                        "(it is part of the agent's id)")
    if not isinstance(args, Mapping):
        raise PlanError(f"step {name!r}: args is a table, got {shown(args)}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
        raise PlanError(f"step {name!r}: timeout is a number of seconds > 0, got {shown(timeout)}")
    return Step(name, agent=agent, program=program, args=dict(args), timeout=timeout)


def _check_step_name(value: Any, what: str) -> None:
    if (problem := name_problem(value, what)) is not None:
        raise PlanError(problem)


def agent_ref_problem(value: Any, what: str) -> str | None:
    """Why ``value`` names no agent, or None: an agent's id (a name: it becomes a socket's path),
    or ``AGENT@NODE``, an agent of another node of the cluster (each part a name).

    >>> agent_ref_problem("echo@b", "agent") is None, agent_ref_problem("../x@b", "agent") is not None
    (True, True)
    """
    if isinstance(value, str) and "@" in value:
        agent, _, node = value.partition("@")
        if name_problem(agent, "x") is None and name_problem(node, "x") is None:
            return None
        return f"{what}: got {shown(value)}; expected an agent id, or AGENT@NODE (an agent of a node of the cluster)"
    return name_problem(value, what)


def _check_agent_ref(value: Any, what: str) -> None:
    if (problem := agent_ref_problem(value, what)) is not None:
        raise PlanError(problem)


def shown(value: Any) -> str:
    """``value``'s repr for an error message, cut at 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise PipelineError(message)
