"""Scoring a program on examples: ``Example`` (inputs and a label), ``evaluate`` (the mean
metric, failures counted, examples on several threads at once), ``Evaluation`` (what it found).
DSPy's examples are told apart by their shape (``dspy_shaped``): this layer never imports dspy;
``otpy.dspy.evaluate`` adapts them."""

from __future__ import annotations

import math
import numbers
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Example:
    """One item of a dataset: what the program is called with, and what a metric compares to."""

    inputs: dict[str, Any]
    label: Any = None


@dataclass(frozen=True)
class Evaluation:
    """A program scored on a dataset: ``score`` is the mean metric over all ``count`` examples
    (a failed call counts 0 in it), None when every call failed; ``failures`` calls raised (or
    their metric raised, or returned no score), the first one's traceback (or why) is
    ``first_error``."""

    score: float | None
    count: int
    failures: int = 0
    first_error: str | None = None

    @property
    def failed(self) -> bool:
        """Every call raised: nothing was measured."""
        return self.score is None


def evaluate(program, examples: list[Example], metric, threads: int = 1) -> Evaluation:
    """The mean metric over ``examples``; a call (or the metric on its prediction) that raises,
    or a metric that returns no score (``metric_score``: NaN, inf, a string, None...), counts 0
    and is reported, not hidden. ``threads`` > 1 scores that many examples at once
    (DSPy's ``Evaluate(num_threads=N)``): ``program`` and ``metric`` are then called from several
    threads (otpy's ``Caller`` is thread-safe). The first error is the first failed example's, in
    the dataset's order, however the threads ran."""
    if not examples:
        raise ValueError("the dataset is empty")
    if threads < 1:
        raise ValueError(f"threads: got {threads}; expected an integer >= 1")
    results = _map(lambda example: _score_one(program, example, metric), examples, threads)
    errors = [error for _, error in results if error is not None]
    failures = len(errors)
    total = sum(value for value, error in results if error is None)
    score = None if failures == len(examples) else total / len(examples)
    return Evaluation(score=score, count=len(examples), failures=failures, first_error=errors[0] if errors else None)


def _score_one(program, example: Example, metric) -> tuple[float, str | None]:
    """One example's metric, or 0 and why not: the traceback of what raised (the call, or the
    metric on its prediction), or what the metric returned that is no score (``metric_score``)."""
    try:
        prediction = program(**example.inputs)
        return metric_score(metric(example, prediction)), None
    except _NoScore as exc:
        return 0.0, f"{exc} (example inputs: {_clip(repr(example.inputs))})"
    except Exception as exc:
        return 0.0, _traceback(exc)


class _NoScore(ValueError):
    """A metric returned something that is no score: a failed metric, as one that raises."""


def metric_score(value: Any) -> float:
    """What a metric returned, as a score: a finite number (an int, a float, any ``numbers.Real``
    such as a numpy scalar), or a bool (DSPy's convention: True counts 1, False 0). ``_NoScore``
    for anything else: NaN, an infinity, None, a string (even ``"1.0"``), an object that only
    converts to a number; the metric failed on that example, it did not score 0."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy scalar or 0-d array
        value = value.item()
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        try:
            score = float(value)
        except (OverflowError, ValueError):  # an int too big for a float
            raise _NoScore(f"the metric returned {_clip(repr(value))}, not a finite number") from None
        if math.isfinite(score):
            return score
    raise _NoScore(f"the metric returned {_clip(repr(value))} ({type(value).__name__}); expected a finite number "
                  "or a bool")


def _clip(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _map(function, items: list, threads: int) -> list:
    """``function`` over ``items``, in order; on up to ``threads`` threads at once. An interrupt
    (Ctrl-C) cancels the examples not started and does not wait for the calls in flight (each
    has its timeout)."""
    if threads == 1 or len(items) == 1:
        return [function(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="otpy-evaluate")
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _traceback(exc: BaseException) -> str:
    """The exception's traceback; an agent's (a RemoteError's) is the remote one."""
    remote = getattr(exc, "remote_traceback", "")
    return remote or "".join(traceback.format_exception(exc)).rstrip()


def dspy_shaped(dataset: Iterable[Any]) -> bool:
    """Whether ``dataset`` holds DSPy examples (``dspy.Example``: ``inputs()`` and ``labels()``
    methods), told apart by their shape: the core never imports dspy. ``otpy.dspy.evaluate``
    adapts such a dataset, and its metric, before they reach the optimizer."""
    return any(callable(getattr(item, "inputs", None)) and callable(getattr(item, "labels", None)) for item in dataset)


def as_example(item) -> Example:
    """An item of a dataset as an ``Example``: one already, or a mapping with ``inputs`` (and ``label``)."""
    if isinstance(item, Example):
        return item
    if isinstance(item, Mapping) and "inputs" in item:
        if not isinstance(item["inputs"], Mapping):
            raise TypeError(f"an example's 'inputs' is a mapping of what the program is called with; got "
                            f"{_clip(repr(item['inputs']))}")
        return Example(inputs=dict(item["inputs"]), label=item.get("label"))
    if dspy_shaped([item]):
        raise TypeError(f"a DSPy example ({type(item).__name__}): adapt the dataset and the metric with "
                        "otpy.dspy.evaluate.adapt(dataset, metric) first (`otpy optimize` does it)")
    raise TypeError(f"an example is an otpy.Example or a mapping with 'inputs' (and 'label'); got "
                    f"{_clip(repr(item))}")
