"""Pipelines: a fixed plan of agent calls, sequential (each stage feeds the next) or parallel.

>>> Pipeline.from_table("team", {"strategy": "parallel", "stages": ["a", "b"]}).stages[1]
Stage(id='b', agent='b', timeout=None, retries=None)

``run(inputs, caller)`` returns a ``PipelineResult``; with ``fail_fast`` the first failed
stage ends the run (its error is in ``errors``), with ``continue_on_error`` the others run
anyway (sequential: a failed stage passes its inputs on), with ``retry`` each failing
stage is called again up to ``max_retries`` times (any ``CallError`` but ``NoSuchAgent``),
then the run fails fast. ``Stage(retries=...)`` sets a stage's own number of retries.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from ..wire.calls import Caller
from ..wire.errors import CallError, NoSuchAgent

PipelineStrategy = Literal["sequential", "parallel"]
ErrorHandling = Literal["fail_fast", "continue_on_error", "retry"]
_STRATEGIES = ("sequential", "parallel")
_ERROR_HANDLING = ("fail_fast", "continue_on_error", "retry")


class PipelineError(ValueError):
    """A pipeline definition is wrong; the message names the pipeline and the key."""


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


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise PipelineError(message)
