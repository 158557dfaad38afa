"""The team's programs: DSPy modules (signatures, ``dspy.Predict`` / ``dspy.ChainOfThought``), each
served by an ``otpy.dspy.ModuleAgent`` subclass: one OS process per agent under the supervisor
``team``.

Every module takes the previous stage's outputs as its inputs and passes the task on, so the
manager's stages compose: planner ``{task} -> {task, plan}``, coder ``{task, plan} -> {task,
plan, code}`` (the careful one also gives its ``reasoning``), reviewer ``{task, code} -> {task,
code, verdict, feedback}``.

Which coder runs is the variable ``global.coder``: ``CarefulCoder`` (chain of thought, told to
handle edge cases) or ``QuickCoder`` (a plain prediction). Without ``OTPY_DSPY_LM``, each agent
answers from its ``script`` (``examples/dspy_team/script.py``): scripted answers, not a model.
"""

from __future__ import annotations

from typing import Literal

import dspy

from otpy.dspy import ModuleAgent

from . import script


# --- signatures ----------------------------------------------------------------------------


class PlanTask(dspy.Signature):
    """Plan how to write the Python function the task asks for, in one or two sentences."""

    task: str = dspy.InputField()
    plan: str = dspy.OutputField(desc="the steps, and the edge case to handle")


class WriteCode(dspy.Signature):
    """Write the Python function the task asks for, following the plan."""

    task: str = dspy.InputField()
    plan: str = dspy.InputField()
    code: str = dspy.OutputField(desc="the function's source code only")


class WriteCodeCarefully(WriteCode):
    """Write the Python function the task asks for, following the plan. Handle every edge case the
    task or the plan names (empty inputs, zero, small numbers) before the general case."""


class ReviewCode(dspy.Signature):
    """Review the code against the task: approve it only if it does what the task says, edge cases included."""

    task: str = dspy.InputField()
    code: str = dspy.InputField()
    verdict: Literal["approve", "reject"] = dspy.OutputField()
    feedback: str = dspy.OutputField(desc="one sentence")


# --- modules -------------------------------------------------------------------------------


class Plan(dspy.Module):
    def __init__(self):
        super().__init__()
        self.plan = dspy.Predict(PlanTask)

    def forward(self, task, **_):
        return dspy.Prediction(task=task, plan=self.plan(task=task).plan)


class CodeCarefully(dspy.Module):
    def __init__(self):
        super().__init__()
        self.write = dspy.ChainOfThought(WriteCodeCarefully)

    def forward(self, task, plan="", **_):
        written = self.write(task=task, plan=plan)
        return dspy.Prediction(task=task, plan=plan, reasoning=written.reasoning, code=written.code)


class CodeQuickly(dspy.Module):
    def __init__(self):
        super().__init__()
        self.write = dspy.Predict(WriteCode)

    def forward(self, task, plan="", **_):
        return dspy.Prediction(task=task, plan=plan, code=self.write(task=task, plan=plan).code)


class Review(dspy.Module):
    def __init__(self):
        super().__init__()
        self.review = dspy.Predict(ReviewCode)

    def forward(self, task, code, **_):
        review = self.review(task=task, code=code)
        return dspy.Prediction(task=task, code=code, verdict=review.verdict, feedback=review.feedback)


# --- the agents (ModuleAgent: an otpy program serving a module) ----------------------------

P = "examples.dspy_team.programs:"


class Planner(ModuleAgent):
    module = P + "Plan"
    script = staticmethod(script.planner_script)


class CarefulCoder(ModuleAgent):
    module = P + "CodeCarefully"
    script = staticmethod(script.careful_script)  # called with the LM settings: hot, it gets careless


class QuickCoder(ModuleAgent):
    module = P + "CodeQuickly"
    script = staticmethod(script.quick_script)


class Reviewer(ModuleAgent):
    module = P + "Review"
    script = staticmethod(script.reviewer_script)
