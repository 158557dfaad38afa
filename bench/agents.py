"""Programs the benchmarks run."""

import otpy


class Idle(otpy.Program):
    """Does nothing; ready as soon as it is set up."""

    def forward(self, **inputs):
        return inputs
