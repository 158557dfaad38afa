"""Programs for the manager tests: small steps to chain, a planner that plans by goal."""

import otpy


class Double(otpy.Program):
    def forward(self, x: float = 0.0):
        return {"x": 2 * x}


class AddOne(otpy.Program):
    def forward(self, x: float = 0.0):
        return {"x": x + 1}


class Combine(otpy.Program):
    """After a parallel group: its inputs are the outputs of each step, by step."""

    def forward(self, double: dict, add: dict):
        return {"x": double["x"] + add["x"]}


class Fails(otpy.Program):
    def forward(self, **inputs):
        raise ValueError("no good")


class Planner(otpy.Program):
    """The steps for a goal: a program per step, named literally or through a variable."""

    PLANS = {
        "double": [{"step": "double", "program": "double_program"}],
        "inc": [{"step": "add", "program": "tests.manager_agents:AddOne"}],
        "both": [{"step": "double", "program": "double_program"},
                 {"step": "add", "program": "tests.manager_agents:AddOne"}],
    }

    def forward(self, goal: str = ""):
        return {"steps": self.PLANS.get(goal, [])}
