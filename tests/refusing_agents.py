"""Programs for tests/test_config_refused.py: one refuses values it cannot run, one takes any."""

import os

import otpy


class Picky(otpy.Program):
    """Runs ``k`` >= 1 only: a smaller one is refused (``ConfigRefused``), the old one kept."""

    def setup(self, args, config):
        self.config = dict(config)

    def on_config(self, config):
        if config["k"] < 1:
            raise otpy.ConfigRefused(f"k: got {config['k']}; expected at least 1")
        self.config = dict(config)

    def forward(self, **inputs):
        return {"k": self.config["k"], "pid": os.getpid()}


class Easy(Picky):
    """Takes any ``k``."""

    def on_config(self, config):
        self.config = dict(config)
