"""Programs for the optimizer's live tests: two solvers whose knob comes from the registry, a
manager that runs the one a variable names, and the data (trials and held-out)."""

import otpy


class Doubler(otpy.Program):
    def on_config(self, config):
        """The knob (``bias``) is Tripler's: nothing to do. Without on_config every trial's new
        bias would restart it (exit 75), and a few trials in a row made ``pool`` give up."""

    def forward(self, x: float = 0.0):
        return {"y": 2 * x}


class Tripler(otpy.Program):
    """``y = 3x + bias``; ``bias`` is its configuration's (scope ``pool``), changed in place."""

    def setup(self, args, config):
        self.bias = float(config.get("bias", 0.0))

    def on_config(self, config):
        self.bias = float(config.get("bias", 0.0))

    def forward(self, x: float = 0.0):
        return {"y": 3 * x + self.bias}


class Manager(otpy.ManagerProgram):
    def on_config(self, config):
        self.config = dict(config)


def dataset():
    return [otpy.Example(inputs={"x": float(x)}, label=3.0 * x) for x in range(1, 6)]


def validation():
    return [otpy.Example(inputs={"x": float(x)}, label=3.0 * x) for x in range(6, 9)]


def exact(example, prediction):
    return -abs(prediction["y"] - example.label)


class Picky(otpy.Program):
    """Fails on x == 3: a program whose failures the optimizer must report, not hide."""

    def forward(self, x: float = 0.0):
        if x == 3:
            raise ValueError("Picky does not do threes")
        return {"y": 3 * x}


def small_bias(config):
    """A ``[constraints]`` check: the bias stays below 0.2."""
    return config["bias"] < 0.2
