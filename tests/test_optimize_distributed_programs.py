"""Programs for the distributed optimization tests and bench/optimize_workers.py (no tests here):
a solver whose forward takes a fixed time (simulated work), so that trials, not the study's
database, bound the search."""

import time

import otpy

TOPOLOGY = """
[node]
name = "{name}"
[supervisor]
[[supervisor.children]]
id = "solver"
program = "tests.test_optimize_distributed_programs:Sleeper"
args = {{ delay = {delay} }}
[variables.global]
bias = {{ type = "float", low = -1.0, high = 1.0, default = 0.5 }}
[optimizer]
program = "solver"
dataset = "tests.test_optimize_distributed_programs:dataset"
valset = "tests.test_optimize_distributed_programs:dataset"
metric = "tests.test_optimize_distributed_programs:exact"
trials = 8
seed = 0
"""


class Sleeper(otpy.Program):
    """``y = 3x + bias`` after ``delay`` seconds (its args): one call's simulated work."""

    def setup(self, args, config):
        self.delay = float(args.get("delay", 0.0))
        self.bias = float(config.get("bias", 0.0))

    def on_config(self, config):
        self.bias = float(config.get("bias", 0.0))

    def forward(self, x: float = 0.0):
        time.sleep(self.delay)
        return {"y": 3 * x + self.bias}


def dataset():
    return [otpy.Example(inputs={"x": 1.0}, label=3.0)]


def exact(example, prediction):
    return -abs(prediction["y"] - example.label)
