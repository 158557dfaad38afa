"""The example's data, DSPy's way: ``dspy.Example``s and a DSPy metric.

An example asks the team (through the manager) to write one small Python function: its inputs
(``with_inputs``) are the manager's ``goal`` ("code") and the ``task``; its label ``must`` lists
what correct code for it contains (the edge case handled). ``metric(example, prediction,
trace=None)`` passes when the reviewer approved the code and the code has every ``must``
snippet. Eight tasks are the trainset the optimizer's trials are scored on (``trainset``), four
others are held out (``devset``: the best configuration is scored on them).
"""

from __future__ import annotations

import dspy

from .script import TASKS

TRAIN = 8  # the first 8 tasks are the trainset, the other 4 the devset


def _example(task) -> dspy.Example:
    return dspy.Example(goal="code", task=task.text, must=list(task.must)).with_inputs("goal", "task")


def trainset() -> list[dspy.Example]:
    """What the optimizer's trials are scored on."""
    return [_example(task) for task in TASKS[:TRAIN]]


def devset() -> list[dspy.Example]:
    """Held out: the best configuration is scored on these (no trial sees them)."""
    return [_example(task) for task in TASKS[TRAIN:]]


def metric(example: dspy.Example, prediction: dspy.Prediction, trace=None) -> float | bool:
    """1 when the reviewer approved code that has every snippet the task's correct code has, else 0.
    With a ``trace`` (a demonstration-bootstrapping optimizer asking), a bool: keep the demo or not."""
    code = prediction.get("code") or ""
    passed = prediction.get("verdict") == "approve" and all(snippet in code for snippet in example.must)
    return passed if trace is not None else float(passed)
