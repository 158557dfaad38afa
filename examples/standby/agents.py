"""A program with an expensive setup, for docs/supervision.md's "Hot standby"."""

import os
import time

import otpy


class Model(otpy.Program):
    """Loads a "model" in setup (a second here); a hot standby has done it before it is needed."""

    def setup(self, args, config):
        time.sleep(args.get("load_seconds", 1.0))
        self.set_up_at = time.time()

    def forward(self, **inputs):
        return {"pid": os.getpid(), "set_up_at": self.set_up_at}
