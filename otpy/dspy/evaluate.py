"""DSPy's conventions for otpy's optimizer: datasets of ``dspy.Example``, metrics
``metric(example, prediction, trace=None)``, and ``Evaluate``-style parallel scoring.

otpy's core (``otpy.optimize``) never imports dspy: it scores ``otpy.Example``s with a metric
``metric(example, reply)`` where ``reply`` is the program's JSON reply. This module adapts DSPy's
shapes to it, at the edge:

- ``examples(dataset)``: each ``dspy.Example`` becomes an ``otpy.Example`` whose ``inputs`` are the
  example's ``.inputs()`` (what the agent is called with: mark them with ``with_inputs``) and
  whose ``label`` is the ``dspy.Example`` itself;
- ``metric(dspy_metric)``: a core metric that calls ``dspy_metric(dspy_example, prediction)``, the
  prediction a ``dspy.Prediction`` of the agent's reply (its fields; a manager's ``trace`` too), as
  DSPy's ``Evaluate`` does (no ``trace`` argument: it keeps its default, None);
- ``adapt(dataset, metric)`` both; ``adapt_table(table)`` a topology's ``[optimizer]`` table
  (``otpy optimize`` does it when the dataset holds DSPy examples);
- ``Evaluate(devset=..., metric=..., num_threads=N)(program)``: DSPy's ``Evaluate`` on an otpy
  program (e.g. ``caller_program(caller, "manager")``): the examples scored on ``N`` threads
  (otpy's ``Caller`` is thread-safe), with each example's prediction and score kept
  (``results``), for ``traces`` (``otpy.dspy.traces``) to turn into demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import dspy

from ..optimize.evaluation import Evaluation, Example, as_example, dspy_shaped, metric_score
from ..optimize.evaluation import evaluate as evaluate_examples
from ..optimize.optimizer import OptimizeError

__all__ = ["Evaluate", "EvaluationResult", "adapt", "adapt_table", "caller_program", "examples", "metric",
           "prediction"]


def example(item: Any) -> Example:
    """An ``otpy.Example`` from a ``dspy.Example`` (its ``inputs()``; the example itself as the
    label); an ``otpy.Example``, or a mapping with ``inputs`` (and ``label``), as the core takes it."""
    if isinstance(item, (Example, Mapping)):
        return as_example(item)
    if not isinstance(item, dspy.Example):
        raise TypeError(f"an example is a dspy.Example, an otpy.Example or a mapping with 'inputs' (and 'label'); "
                        f"got {_clip(repr(item))}")
    if item._input_keys is None:
        raise ValueError(f"a dspy.Example without its inputs marked: {_clip(repr(item))}; call "
                         ".with_inputs('field', ...) (the fields the agent is called with)")
    return Example(inputs=dict(item.inputs().toDict()), label=item)


def _clip(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def examples(dataset: Iterable[Any]) -> list[Example]:
    """Every item of ``dataset`` as an ``otpy.Example`` (see ``example``)."""
    return [example(item) for item in dataset]


def prediction(reply: Mapping[str, Any]) -> dspy.Prediction:
    """An agent's reply (a JSON object) as a ``dspy.Prediction`` of its fields."""
    if not isinstance(reply, Mapping):
        raise TypeError(f"the agent's reply is not an object of fields: {reply!r}")
    return dspy.Prediction(**reply)


def gold(item: Example) -> dspy.Example:
    """The ``dspy.Example`` a metric compares with: the label of an adapted example, else one made
    of the example's inputs (marked as inputs) and its ``label``."""
    if isinstance(item.label, dspy.Example):
        return item.label
    return dspy.Example(**item.inputs, label=item.label).with_inputs(*item.inputs)


def metric(dspy_metric: Callable[..., Any]) -> Callable[[Example, Mapping[str, Any]], Any]:
    """A core metric from a DSPy one: ``dspy_metric(dspy_example, dspy.Prediction)`` (its third
    argument, ``trace``, keeps its default, as in DSPy's ``Evaluate``). A bool counts 1 or 0;
    NaN, an infinity or what is no number is a failed metric (``evaluation.metric_score``)."""

    def scored(item: Example, reply: Mapping[str, Any]) -> Any:
        return dspy_metric(gold(item), prediction(reply))

    scored.__name__ = getattr(dspy_metric, "__name__", "metric")
    scored.__wrapped__ = dspy_metric  # type: ignore[attr-defined]
    return scored


def adapt(dataset: Iterable[Any], dspy_metric: Callable[..., Any]) -> tuple[list[Example], Callable]:
    """A DSPy dataset and metric as the optimizer takes them: ``Optimizer.compile(program,
    *adapt(trainset, metric), valset=examples(devset))``."""
    return examples(dataset), metric(dspy_metric)


def adapt_table(table):
    """A topology's ``[optimizer]`` table (``OptimizerTable``) whose dataset holds DSPy examples,
    adapted in place (its trainset, valset and metric); a table of ``otpy.Example``s as it is.
    An item that is no example: ``OptimizeError`` (a usage error) naming the set and the item."""
    if not (dspy_shaped(table.trainset) or dspy_shaped(table.valset or [])):
        return table
    table.trainset = _table_examples(table, "dataset", table.trainset)
    table.valset = None if table.valset is None else _table_examples(table, "valset", table.valset)
    table.metric = metric(table.metric)
    return table


def _table_examples(table, key: str, items: Iterable[Any]) -> list[Example]:
    adapted = []
    for index, item in enumerate(items):
        try:
            adapted.append(example(item))
        except (TypeError, ValueError) as exc:
            raise OptimizeError(f"optimizer.{key} ({table.table[key]!r}): item {index}: {exc}", usage=True) from None
    return adapted


def caller_program(caller, agent: str, timeout: float = 30.0) -> Callable[..., Mapping[str, Any]]:
    """A program that calls ``agent`` through ``caller`` (an ``otpy.Caller``) with an example's inputs."""
    return lambda **inputs: caller.call(agent, inputs, timeout=timeout)


@dataclass(frozen=True)
class EvaluationResult:
    """``score``: the mean metric in percent (DSPy's ``Evaluate``), None when every call failed;
    ``results``: per example ``(dspy_example, prediction, score)``, ``prediction`` None (and the
    score 0) where the call or the metric raised, or the metric returned no score;
    ``evaluation``: otpy's ``Evaluation`` (mean 0..1, failures, the first traceback)."""

    score: float | None
    results: list[tuple[Any, dspy.Prediction | None, float]] = field(default_factory=list)
    evaluation: Evaluation | None = None


class Evaluate:
    """DSPy's ``Evaluate`` for otpy programs: ``Evaluate(devset=..., metric=...,
    num_threads=N)(program)`` calls ``program(**example.inputs())`` for every example, ``N`` at
    once, and scores each with ``metric(example, prediction)``."""

    def __init__(self, *, devset: Iterable[Any], metric: Callable[..., Any], num_threads: int = 1) -> None:
        self.devset = examples(devset)
        self.metric = metric
        self.num_threads = num_threads

    def __call__(self, program: Callable[..., Mapping[str, Any]]) -> EvaluationResult:
        kept: dict[int, tuple[dspy.Prediction, float]] = {}

        def scored(item: Example, reply: Mapping[str, Any]) -> float:
            predicted = prediction(reply)
            value = metric_score(self.metric(gold(item), predicted))
            kept[id(item)] = (predicted, value)
            return value

        evaluation = evaluate_examples(program, self.devset, scored, self.num_threads)
        results = [(gold(item), *kept.get(id(item), (None, 0.0))) for item in self.devset]
        score = None if evaluation.score is None else round(100 * evaluation.score, 2)
        return EvaluationResult(score, results, evaluation)
