"""DSPy modules served by otpy agents in tests/test_dspy_agent.py (DummyLM only: no network)."""

from __future__ import annotations

import os

import dspy

from otpy.dspy import ModuleAgent

# The dummy LM's answers (ModuleAgent: the factory's Python module's SCRIPT): the first key the
# call's inputs contain answers; "" matches anything, last.
SCRIPT = {
    "sky": {"answer": "blue"},
    "grass": {"answer": "green"},
    "": {"answer": "unsure"},
}


class QA(dspy.Signature):
    """Answer the question in one word."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Answerer(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict(QA)

    def forward(self, question: str) -> dspy.Prediction:
        return self.respond(question=question)


def make_answerer() -> dspy.Module:
    return Answerer()


class Agent(ModuleAgent):
    """The answerer, named by the class attribute."""

    module = "tests.dspy_agents:make_answerer"


class ShowsLM(dspy.Module):
    """Answers, and says which LM answered: its model, its kwargs, the process."""

    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict(QA)

    def forward(self, question: str) -> dspy.Prediction:
        lm = dspy.settings.lm
        answer = self.respond(question=question).answer
        return dspy.Prediction(answer=answer, model=lm.model, kwargs=dict(lm.kwargs), pid=os.getpid(),
                               demos=len(self.respond.demos))


ShowsLM.SCRIPT = [{"answer": "first"}, {"answer": "second"}, {"answer": "third"}]  # a list: one per request


class LMAgent(ModuleAgent):
    module = "tests.dspy_agents:ShowsLM"  # the Module subclass itself is the factory


class Raises(dspy.Module):
    def forward(self, question: str) -> dspy.Prediction:
        raise LookupError(f"no answer for {question!r}")


def hot_or_cold(settings: dict) -> dict:
    """A script made each time the LM is: the temperature chooses the answers."""
    return {"": {"answer": "wild" if settings.get("temperature", 0.0) > 1.0 else "tame"}}


class KnobAgent(ModuleAgent):
    module = "tests.dspy_agents:make_answerer"
    script = hot_or_cold  # a plain function as class attribute: called with the settings, not bound


def make_shows_lm() -> dspy.Module:
    return ShowsLM()  # a function factory: the script is the class attribute ShowsLM.SCRIPT
