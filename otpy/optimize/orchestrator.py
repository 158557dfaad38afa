"""The watch loop: score the live system now and then, search when it falls, apply only what beats it.

Every ``interval`` seconds a round scores the live node on a sample of the validation data.
When the score falls below ``threshold`` (or every ``every`` rounds, on schedule) it runs a
bounded search (``trials``) on a scratch node, starting from the values the live node runs
(its trials keep the live node's documents, the variables no trial searches, as they are),
and applies the best configuration found only if its validation score beats the live node's,
on the same validation data, by more than ``margin``. Every decision is announced on the live
node's events (``otpy events``): ``watch_scored``, ``watch_search``, ``watch_applied``,
``watch_kept``, ``watch_failed``.

The decisions are pure functions (``search_verdict``, ``apply_verdict``) and the timing a
``Schedule`` over an injected clock; ``Orchestrator`` takes its collaborators (how to score the
live node, how to search, the live system, how to announce) so a test can give it fakes.
``watch_topology`` builds the real ones from a topology's ``[optimizer]`` table.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .live_system import LiveSystem, OptimizeError, OptimizerTable, format_plan, spaces_of
from ..wire.errors import CallError
from .optimizer import CompileResult, Config, Evaluation, Example, Optimizer, evaluate

# What a search or an apply may fail with and the loop outlives: a refused or impossible search
# (OptimizeError, ValueError), an agent or node that does not answer (CallError, TimeoutError),
# a node whose socket went away (OSError). The round announces it; the next round runs.
ROUND_ERRORS = (OptimizeError, ValueError, CallError, OSError)


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, OptimizeError) else f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class WatchPolicy:
    """When to search and when to apply (see the module's docstring). ``sample``: how many
    validation examples a round scores the live node on (None: all of them)."""

    interval: float = 60.0
    sample: int | None = None
    threshold: float | None = None
    every: int | None = None
    trials: int = 10
    margin: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not self.interval > 0:
            problems.append(f"interval: got {self.interval}; expected seconds > 0")
        if self.sample is not None and self.sample < 1:
            problems.append(f"sample: got {self.sample}; expected an integer >= 1 (or none: all)")
        if self.every is not None and self.every < 1:
            problems.append(f"every: got {self.every}; expected an integer >= 1 (or none: never on schedule)")
        if self.trials < 1:
            problems.append(f"trials: got {self.trials}; expected an integer >= 1")
        if self.margin < 0:
            problems.append(f"margin: got {self.margin}; expected a score difference >= 0")
        if self.threshold is None and self.every is None:
            problems.append("threshold or every: give at least one, else the loop never searches")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Verdict:
    act: bool
    reason: str


def _score(value: float | None) -> str:
    return "failed" if value is None else f"{value:.4f}"


def search_verdict(policy: WatchPolicy, round_number: int, score: float | None) -> Verdict:
    """Whether round ``round_number`` (from 1) searches, given the live ``score`` (None: every
    call failed, which is below any threshold)."""
    if policy.threshold is not None and (score is None or score < policy.threshold):
        return Verdict(True, f"score {_score(score)} below threshold {policy.threshold}")
    if policy.every is not None and round_number % policy.every == 0:
        return Verdict(True, f"scheduled: every {policy.every} rounds")
    if policy.threshold is not None:
        return Verdict(False, f"score {_score(score)} at or above threshold {policy.threshold}")
    return Verdict(False, f"next scheduled search at round {(round_number // policy.every + 1) * policy.every}")


def apply_verdict(policy: WatchPolicy, live: float | None, candidate: float | None) -> Verdict:
    """Whether to apply a candidate: its validation score must beat the live one's by more than
    the margin (a live node whose every call fails is beaten by any candidate that works)."""
    if candidate is None:
        return Verdict(False, f"the candidate failed on every validation call; live {_score(live)} kept")
    if live is None:
        return Verdict(True, f"candidate {candidate:.4f} works where every live call failed")
    if candidate > live + policy.margin:
        return Verdict(True, f"candidate {candidate:.4f} beats live {live:.4f} by more than {policy.margin}")
    return Verdict(False, f"candidate {candidate:.4f} does not beat live {live:.4f} by more than {policy.margin}")


class Schedule:
    """When the next round is due, on ``clock`` (seconds): the first at once, then every
    ``interval`` after the last one was due; a round that ran late does not make a burst."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval, self.clock = interval, clock
        self.due = clock()

    def delay(self) -> float:
        """Seconds until the next round is due (0: now)."""
        return max(0.0, self.due - self.clock())

    def ran(self) -> None:
        """A round ran: the next is due ``interval`` after this one was, or now if that passed."""
        self.due = max(self.due + self.interval, self.clock())


class Live(Protocol):
    def current(self) -> Config: ...
    def apply(self, config: Config) -> list: ...


@dataclass(frozen=True)
class RoundReport:
    """What one round saw and decided."""

    number: int
    live: Evaluation
    search: Verdict
    result: CompileResult | None = None
    live_validation: float | None = None
    applied: Verdict | None = None
    changes: tuple = ()


class Orchestrator:
    """The watch loop over injected collaborators (see the module's docstring).

    ``score_live(examples) -> Evaluation`` scores the live node; ``search(baseline, trials) ->
    CompileResult`` runs a bounded search (scored on the validation data: its ``val_score``);
    ``live`` has ``current()`` and ``apply(config)``; ``announce(kind, detail)`` publishes."""

    def __init__(self, policy: WatchPolicy, *, valset: list[Example], score_live: Callable[[list[Example]], Evaluation],
                 search: Callable[[Config, int], CompileResult], live: Live,
                 announce: Callable[[str, str], Any], clock: Callable[[], float] = time.monotonic,
                 seed: int = 0) -> None:
        if not valset:
            raise ValueError("valset: empty; the watch loop scores the live node on held-out examples")
        self.policy, self.valset = policy, list(valset)
        self.score_live, self.search, self.live, self.announce = score_live, search, live, announce
        self.schedule = Schedule(policy.interval, clock)
        self.rounds = 0
        self.seed = seed

    def sample(self, round_number: int) -> list[Example]:
        """The validation examples round ``round_number`` scores (seeded: the same run, the same samples)."""
        if self.policy.sample is None or self.policy.sample >= len(self.valset):
            return self.valset
        return random.Random(self.seed * 1_000_003 + round_number).sample(self.valset, self.policy.sample)

    def run(self, rounds: int | None = None, stop: threading.Event | None = None) -> list[RoundReport]:
        """Rounds at the schedule's times until ``rounds`` ran or ``stop`` is set."""
        stop = stop or threading.Event()
        reports = []
        while (rounds is None or len(reports) < rounds) and not stop.wait(self.schedule.delay()):
            reports.append(self.round())
            self.schedule.ran()
        return reports

    def round(self) -> RoundReport:
        """One round: score, maybe search, maybe apply; each decision announced."""
        self.rounds += 1
        n = self.rounds
        sample = self.sample(n)
        scored = self.score_live(sample)
        failed = f" ({scored.failures} calls failed)" if scored.failures else ""
        self.announce("watch_scored", f"round {n}: live score {_score(scored.score)} on {scored.count} "
                                      f"validation examples{failed}")
        verdict = search_verdict(self.policy, n, scored.score)
        if not verdict.act:
            return RoundReport(n, scored, verdict)
        self.announce("watch_search", f"round {n}: {verdict.reason}; searching {self.policy.trials} trials "
                                      f"on a scratch node")
        try:
            result = self.search(self.live.current(), self.policy.trials)
        except ROUND_ERRORS as exc:
            self.announce("watch_failed", f"round {n}: the search failed: {_why(exc)}")
            return RoundReport(n, scored, verdict)
        live_val = scored.score if sample is self.valset else self.score_live(self.valset).score
        decision = apply_verdict(self.policy, live_val, result.val_score)
        if not decision.act:
            why = f" ({result.val_error})" if result.val_score is None and result.val_error else ""
            self.announce("watch_kept", f"round {n}: {decision.reason}{why}")
            return RoundReport(n, scored, verdict, result, live_val, decision)
        try:
            changes = tuple(self.live.apply(result.config))
        except ROUND_ERRORS as exc:
            self.announce("watch_failed", f"round {n}: {decision.reason}, but applying it failed: {_why(exc)}")
            return RoundReport(n, scored, verdict, result, live_val, decision)
        self.announce("watch_applied", f"round {n}: {decision.reason}; " + "; ".join(format_plan(list(changes))))
        return RoundReport(n, scored, verdict, result, live_val, decision, changes)


@contextlib.contextmanager
def watch_topology(topology, policy: WatchPolicy, *, seed: int | None = None,
                   clock: Callable[[], float] = time.monotonic, table: OptimizerTable | None = None):
    """An ``Orchestrator`` watching the running node of ``topology`` (which must be up), with
    searches on a scratch node ``<node>-optimize`` started for the loop's life. ``table``: the
    topology's ``[optimizer]`` already read (e.g. adapted to DSPy's conventions), else read here."""
    from ..wire.calls import Caller
    from ..wire.client import connect
    from .scratch import scratch_node, scratch_spec

    table = table or OptimizerTable(topology)
    if table.valset is None:
        raise OptimizeError("optimizer.valset is missing: the watch loop scores the live node on held-out examples; "
                            "give [optimizer] valset = 'module:attr' (a list, or a function returning one)", usage=True)
    name = topology.node.name
    seed = int(table.table.get("seed", 0)) if seed is None else seed
    spaces = spaces_of(topology)
    scratch = scratch_spec(topology)
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(connect(name))
        caller = stack.enter_context(Caller(name))
        live = LiveSystem(client, caller, spaces)
        live_program = table.caller_program(caller)
        searches = iter(range(1, 1 << 30))
        started: dict[str, Any] = {}

        def scratch_system():
            if not started:
                stack.enter_context(scratch_node(topology))  # a start failure: one line (OptimizeError)
                started["client"] = stack.enter_context(connect(scratch.name))
                started["caller"] = stack.enter_context(Caller(scratch.name))
            return (LiveSystem(started["client"], started["caller"], spaces, every_value=True),  # documents too
                    table.caller_program(started["caller"]))

        def search(baseline: Config, trials: int) -> CompileResult:
            system, program = scratch_system()
            optimizer = Optimizer(spaces, seed=seed + next(searches), study_name=f"{name}-watch", progress=False)
            return optimizer.compile(program, table.trainset, table.metric, valset=table.valset, trials=trials,
                                     apply=system.apply, current=baseline, baseline=baseline, threads=table.threads)

        yield Orchestrator(policy, valset=table.valset, live=live, search=search, clock=clock, seed=seed,
                           score_live=lambda examples: evaluate(live_program, examples, table.metric, table.threads),
                           announce=lambda kind, detail: client.announce(kind, detail))
