"""Programs for the live optimization tests: two solvers, and a manager that runs one."""

import otpy


class Doubler(otpy.Program):
    def forward(self, x: float = 0.0):
        return {"y": 2 * x}


class Tripler(otpy.Program):
    def setup(self, args, config):
        self.bias = float(args.get("bias", 0.0))

    def forward(self, x: float = 0.0):
        return {"y": 3 * x + self.bias}


class Manager(otpy.ManagerProgram):
    def on_config(self, config):
        self.config = dict(config)


def dataset():
    return [otpy.Example(inputs={"x": float(x)}, label=3.0 * x) for x in range(1, 6)]


def exact(example, prediction):
    return -abs(prediction["y"] - example.label)
