"""DSPy programs as supervised agents (``pip install 'otpy[dspy]'``): a ``dspy.Module`` served by
a program child, its LM settings and its saved state (instructions, demonstrations) as
variables. ``import otpy`` never imports this package, nor dspy; see docs/dspy.md.

``ModuleAgent`` (``otpy.dspy.agent``): the program that serves a module made by a factory, its
LM from the ``lm_*`` variables, its saved program from ``program_state``."""

try:
    import dspy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("otpy.dspy needs DSPy: pip install 'otpy[dspy]'") from exc

from .agent import ModuleAgent  # noqa: E402

__all__ = ["ModuleAgent"]
