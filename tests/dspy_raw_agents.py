"""A raw ``dspy.Module`` subclass as an otpy program (no otpy.Program, no setup): its LM is
DSPy's global one, configured when this module is imported (in the zygote, before the fork)."""

from __future__ import annotations

import dspy
from dspy.utils import DummyLM

dspy.configure(lm=DummyLM({"sky": {"answer": "blue"}, "": {"answer": "raw"}}))


class RawModule(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.respond(question=question)
