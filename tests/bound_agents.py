"""Programs for the bound-variable tests: each says which program it is and its pid."""

from __future__ import annotations

import os

import otpy


class _Says(otpy.Program):
    def on_config(self, config):
        """Knobs arrive here; which program runs is the node's business."""

    def forward(self, **inputs):
        return {"program": type(self).__name__, "pid": os.getpid()}


class Alpha(_Says):
    pass


class Beta(_Says):
    pass


class Broken(_Says):
    """Fails its setup: a target that cannot start."""

    def setup(self, args, config):
        raise RuntimeError("Broken cannot start")


class SlowKnob(otpy.Program):
    """Takes its time to apply a knob: a write must not return before it did."""

    def setup(self, args, config):
        self.knob = config.get("knob")

    def on_config(self, config):
        import time

        time.sleep(0.3)
        self.knob = config.get("knob")

    def forward(self, **inputs):
        return {"knob": self.knob, "pid": os.getpid()}


class KnobNoHook(otpy.Program):
    """No on_config: a new knob restarts it."""

    def setup(self, args, config):
        self.knob = config.get("knob")

    def forward(self, **inputs):
        return {"knob": self.knob, "pid": os.getpid()}


class SlowStart(_Says):
    """Marks that its setup began (its configuration resolved), then takes a while."""

    def setup(self, args, config):
        import pathlib
        import time

        if mark := os.environ.get("BOUND_TEST_MARK"):
            pathlib.Path(mark).write_text(str(os.getpid()))
        time.sleep(1.0)


class RaisesOnConfig(KnobNoHook):
    """on_config raises: the child crashes and its next incarnation runs the new knob."""

    def on_config(self, config):
        raise RuntimeError("cannot take a new knob")
