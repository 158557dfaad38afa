"""Programs for the live registry tests: they show the configuration they were given."""

from __future__ import annotations

import os
import time

import otpy


class Shows(otpy.Program):
    """Keeps the configuration of setup and of each ``on_config``; ``forward`` tells them."""

    def setup(self, args, config):
        self.config = dict(config)
        self.changes = 0
        self.changed_at = None  # time.time() of the last on_config

    def on_config(self, config):
        self.config = dict(config)
        self.changes += 1
        self.changed_at = time.time()

    def forward(self, **inputs):
        return {"config": self.config, "changes": self.changes, "changed_at": self.changed_at,
                "pid": os.getpid()}


class ShowsNoHook(otpy.Program):
    """No ``on_config``: a change of its configuration restarts it."""

    def setup(self, args, config):
        self.config = dict(config)

    def forward(self, **inputs):
        return {"config": self.config, "pid": os.getpid()}


def broken_registry(**inputs):
    """Answers every request as the registry answers its own failure (an unwritable file, a bug)."""
    return {"ok": False, "error": "internal", "problems": ["set_many: OperationalError: disk I/O error"]}
