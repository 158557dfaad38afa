"""A manager's trace as DSPy-style traces, and demonstrations made of them.

otpy's manager (``otpy.ManagerProgram``) answers with a ``trace``: per step ``step, program,
agent, pid, inputs, outputs, ms, error``. ``traces(reply)`` turns it into what DSPy's own
``dspy.settings.trace`` holds, with the stage's name where DSPy has the predictor: a list of
``(stage, inputs, dspy.Prediction)``, one per step that answered. A demonstration-bootstrapping
optimizer (``BootstrapFewShot``'s loop) keeps the traces of the examples its metric passes and
makes demos of a stage's entries: ``demos(traces, "coder")``; ``program_state(module, demos)``
puts them on a module's predictors and returns its saved state (``module.dump_state()``): the
value of a ``program_state`` variable, which a running ``ModuleAgent`` applies (see docs/dspy.md).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import dspy

__all__ = ["Trace", "demos", "program_state", "traces"]

Trace = tuple[str, dict[str, Any], dspy.Prediction]  # (stage, inputs, outputs)


def traces(reply: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[Trace]:
    """``(stage, inputs, dspy.Prediction)`` for each step of a manager's trace that answered (a
    failed step, with no outputs, is left out), in the order they ran. ``reply``: the manager's
    reply, or its ``trace`` list, or a ``dspy.Prediction`` of the reply."""
    steps = _steps(reply)
    found: list[Trace] = []
    for entry in steps:
        if not isinstance(entry, Mapping) or "step" not in entry:
            raise TypeError(f"a trace entry is an object with step, inputs and outputs; got {entry!r}")
        outputs = entry.get("outputs")
        if entry.get("error") or not isinstance(outputs, Mapping):
            continue
        found.append((str(entry["step"]), dict(entry.get("inputs") or {}), dspy.Prediction(**outputs)))
    return found


def _steps(reply: Any) -> list:
    if isinstance(reply, dspy.Prediction):
        reply = reply.toDict()
    if isinstance(reply, Mapping):
        if "trace" not in reply:
            raise TypeError("the reply has no trace: traces come from a manager's reply (otpy.ManagerProgram)")
        return list(reply["trace"])
    return list(reply)


def demos(found: Iterable[Trace], stage: str) -> list[dspy.Example]:
    """The demonstrations of ``stage``: one ``dspy.Example`` per trace entry of that stage, its
    inputs and outputs together (its inputs marked as such)."""
    made = []
    for name, inputs, outputs in found:
        if name == stage:
            made.append(dspy.Example({**inputs, **outputs.toDict()}).with_inputs(*inputs))
    return made


def program_state(module: dspy.Module, examples: Iterable[dspy.Example], predictor: str | None = None) -> dict:
    """``module``'s saved state (``dump_state()``: JSON) with ``examples`` as the demos of its
    predictors (of the one named ``predictor`` only, e.g. ``"write.predict"``), each demo cut to
    the predictor's signature fields (a stage's outputs may carry more, e.g. the task passed on);
    ``module`` itself is not changed."""
    copy = module.deepcopy()
    names = [name for name, _ in copy.named_predictors()]
    if predictor is not None and predictor not in names:
        raise ValueError(f"predictor {predictor!r}: the module's predictors are {', '.join(names) or 'none'}")
    for name, each in copy.named_predictors():
        if predictor is None or name == predictor:
            fields = set(each.signature.fields)
            each.demos = [_cut(example, fields) for example in examples]
    return copy.dump_state()


def _cut(example: dspy.Example, fields: set[str]) -> dspy.Example:
    kept = dspy.Example({key: value for key, value in example.items() if key in fields})
    inputs = [key for key in (example._input_keys or ()) if key in fields]
    return kept.with_inputs(*inputs) if inputs else kept
