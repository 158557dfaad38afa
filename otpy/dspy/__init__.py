"""DSPy programs as supervised agents (``pip install 'otpy[dspy]'``): a ``dspy.Module`` served by
a program child, its LM settings and its saved state (instructions, demonstrations) as
variables. ``import otpy`` never imports this package, nor dspy; see docs/dspy.md.

``ModuleAgent`` (``otpy.dspy.agent``): the program that serves a module made by a factory, its
LM from the ``lm_*`` variables, its saved program from ``program_state``.

``otpy.dspy.evaluate``: DSPy's conventions for the optimizer (``dspy.Example`` datasets, metrics
``metric(example, prediction, trace=None)``, ``Evaluate`` on several threads); ``otpy.dspy.traces``:
a manager's trace as DSPy-style traces ``(stage, inputs, dspy.Prediction)``, demos, and a
``program_state`` made of them."""

try:
    import dspy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("otpy.dspy needs DSPy: pip install 'otpy[dspy]'") from exc

from .agent import ModuleAgent  # noqa: E402

__all__ = ["ModuleAgent"]
