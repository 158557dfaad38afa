"""The DSPy team example: planner -> coder -> reviewer as DSPy modules served by otpy agents (see docs/dspy.md)."""
