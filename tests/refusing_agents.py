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


class Checked(Picky):
    """Says before a write is stored that it cannot run ``k`` < 1 (``check_config``), slowly
    (``args.check_s``: a window a reader polls through); counts its ``on_config`` calls."""

    def setup(self, args, config):
        super().setup(args, config)
        self.check_s, self.reconfigured = args.get("check_s", 0), 0

    def check_config(self, config):
        import time

        time.sleep(self.check_s)
        if config["k"] < 1:
            raise otpy.ConfigRefused(f"k: got {config['k']}; expected at least 1")

    def on_config(self, config):
        self.reconfigured += 1
        super().on_config(config)

    def forward(self, **inputs):
        return {**super().forward(**inputs), "reconfigured": self.reconfigured, "program": type(self).__name__}


class Lenient(Checked):
    """Runs any ``k``."""

    def check_config(self, config):
        pass


class Strict(Checked):
    """Runs ``k`` >= 3 only (a new target of a bound ``program`` that refuses the write's knob)."""

    def check_config(self, config):
        if config["k"] < 3:
            raise otpy.ConfigRefused(f"k: got {config['k']}; Strict runs at least 3")


class NoConfig(otpy.Program):
    """Follows ``k`` without ``on_config`` (restarted for a change): its pid says whether it was."""

    def setup(self, args, config):
        self.k = config["k"]

    def forward(self, **inputs):
        return {"k": self.k, "pid": os.getpid()}


class Stubborn(Easy):
    """Takes any ``k`` but 2 (the default) in ``on_config``: it refuses the undo back to it."""

    def on_config(self, config):
        if config["k"] == 2:
            raise otpy.ConfigRefused("k: 2 no more")
        self.config = dict(config)


class Slow(Easy):
    """Takes any ``k``, after ``args.slow_s`` seconds (a refused write's window stays open)."""

    def setup(self, args, config):
        super().setup(args, config)
        self.slow_s = args.get("slow_s", 0)

    def on_config(self, config):
        import time

        time.sleep(self.slow_s)
        super().on_config(config)
