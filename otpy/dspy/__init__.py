"""DSPy programs as supervised agents (``pip install 'otpy[dspy]'``): a ``dspy.Module`` served by
a program child, its LM settings and its saved state (instructions, demonstrations) as
variables. ``import otpy`` never imports this package, nor dspy; see docs/dspy.md."""

try:
    import dspy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("otpy.dspy needs DSPy: pip install 'otpy[dspy]'") from exc
