"""The manager program: its forward pass plans the steps and picks, from its own variables,
which agent program runs each one.

``forward(goal=..., **inputs)``:

1. resolves the manager's variables from the registry (when the node has one),
2. plans the steps: ``plan(goal, config)``, by default the ``steps`` of its args,
3. picks the agent serving each step: ``agent_for(step, config)``, by default the agent with
   the step's name, and records which program its ``module`` variable names for that step,
4. builds a ``Pipeline`` of those agents at run time and runs it, returning the last stage's
   outputs and a ``trace`` of which agent (and program) served which step.

>>> class Team(ManagerProgram):
...     def plan(self, goal, config):
...         return ["writer", "critic"] if goal == "review" else ["writer"]
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from .pipeline import Pipeline, Stage
from ..agent.program import Program
from ..agent.registry_link import chain, has_registry
from ..variables.client import RegistryClient, RegistryRefused


class ManagerProgram(Program):
    """A program that runs other agents as a pipeline it builds per call.

    Args (from the child spec): ``steps`` (list of step names; default plan), ``programs``
    (step -> the ``module`` variable naming the program for it, e.g. ``{"classifier":
    "classifier"}``), ``stage_timeout`` (seconds, default 5), ``error_handling``.
    """

    def setup(self, args: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        self.args = dict(args)
        self.config = dict(config)

    def plan(self, goal: str, config: Mapping[str, Any]) -> list[str]:
        """The steps for ``goal``; override to plan with a function or by calling a planner agent."""
        return list(self.args.get("steps", []))

    def agent_for(self, step: str, config: Mapping[str, Any]) -> str:
        """The agent that serves ``step``; by default the agent named like the step."""
        return step

    def forward(self, goal: str = "", **inputs: Any) -> dict[str, Any]:
        config = self.resolve_config()
        steps = self.plan(goal, config)
        if not steps:
            raise ValueError(f"no steps planned for goal {goal!r}: give args.steps or override plan()")
        stages = [Stage(id=step, agent=self.agent_for(step, config)) for step in steps]
        pipeline = Pipeline(stages, strategy="sequential",
                            error_handling=self.args.get("error_handling", "fail_fast"),
                            stage_timeout=float(self.args.get("stage_timeout", 5.0)))
        result = pipeline.run(inputs, self.node_caller())
        if not result.ok:
            stage, error = next(iter(result.errors.items()))
            raise RuntimeError(f"step {stage!r} failed: {error}")
        programs = self.args.get("programs", {})
        trace = [{"step": stage, "agent": agent, "program": config.get(programs.get(stage, ""), ""),
                  "ms": round(ms, 3)} for stage, agent, ok, ms in result.trace]
        return {**result.outputs, "trace": trace}

    def resolve_config(self) -> dict[str, Any]:
        """This manager's variables as the registry resolves them now (setup's, without a registry)."""
        if has_registry() is None or os.environ.get("OTPY_CHILD_ID") is None:
            return self.config  # not a child of a node with a registry (a stale socket file is none)
        try:
            self.config = RegistryClient(self.node_caller()).resolve(os.environ["OTPY_CHILD_ID"], chain())
        except RegistryRefused:
            pass  # unresolvable now: the last configuration stands
        return self.config
