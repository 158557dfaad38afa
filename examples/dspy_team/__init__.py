"""The DSPy team example: planner -> coder -> reviewer as DSPy modules served by otpy agents (see docs/dspy.md)."""

import otpy.dspy  # noqa: F401  first, for every module of the example: without DSPy it says "pip install 'otpy[dspy]'"
