"""DSPy datasets and metrics an ``[optimizer]`` table may name by mistake, and one it may mix
(dspy.Examples with the core's mappings)."""

import dspy

from examples.dspy_team import data


def mixed():
    """dspy.Examples and a core mapping (``inputs``/``label``): both are examples."""
    examples = data.trainset()
    return examples[:2] + [{"inputs": {"goal": "code", "task": examples[2].task}, "label": None}]


def no_inputs():
    return [dspy.Example(goal="code", task=example.task) for example in data.trainset()[:2]]


def stray():
    return data.trainset()[:2] + ["write mean(xs)"]


def nan(example, prediction, trace=None):
    return float("nan")


def number_text(example, prediction, trace=None):
    return "1.0"
