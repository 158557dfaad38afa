"""A program for the document variable tests: it tells the types of the configuration it got."""

from __future__ import annotations

import otpy


def kinds(value):
    """``value`` with each part replaced by its exact type's name (dicts and lists kept as such)."""
    if type(value) is dict:
        return {"dict": {name: kinds(item) for name, item in value.items()}}
    if type(value) is list:
        return {"list": [kinds(item) for item in value]}
    return type(value).__name__


class ShowsKinds(otpy.Program):
    """``forward`` returns the configuration of setup or of the last ``on_config``, and its types."""

    def setup(self, args, config):
        self.config, self.via = config, "setup"

    def on_config(self, config):
        self.config, self.via = config, "on_config"

    def forward(self, **inputs):
        return {"config": self.config, "kinds": kinds(self.config), "via": self.via}
