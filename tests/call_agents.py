"""Programs for the call tests: each one does a single thing the tests check."""

from __future__ import annotations

import os
import time

import otpy


class Echo(otpy.Program):
    """Returns its inputs, plus its pid so that a test can tell incarnations apart."""

    def forward(self, **inputs):
        return {**inputs, "pid": os.getpid()}


class Raises(otpy.Program):
    def forward(self, **inputs):
        if inputs.get("ok"):
            return {"ok": True}
        raise ValueError(f"bad input {inputs.get('x')!r}")


class Slow(otpy.Program):
    """Sleeps ``seconds``, then answers with the inputs and when it started and ended."""

    def forward(self, seconds: float = 0.1, mark: str = "", **inputs):
        start = time.monotonic()
        if mark:  # tells the test that the call is running
            with open(mark, "w") as file:
                file.write(str(os.getpid()))
        time.sleep(seconds)
        return {**inputs, "seconds": seconds, "start": start, "end": time.monotonic()}


class Unencodable(otpy.Program):
    def forward(self, **inputs):
        return {"fine": 1, "handle": object()}


class CallsOther(otpy.Program):
    """Calls the agent named in its inputs (``self.call``) and wraps the answer."""

    def forward(self, target: str = "echo", **inputs):
        return {"via": os.environ["OTPY_CHILD_ID"], "answer": self.call(target, inputs, timeout=3.0)}


def upper(text: str = ""):
    """A plain function agent."""
    return {"text": text.upper()}


class Append(otpy.Program):
    """Appends its child id to the ``path`` input: shows the order of a sequential pipeline."""

    def forward(self, path=(), **inputs):
        return {**inputs, "path": [*path, os.environ["OTPY_CHILD_ID"]]}


class FailsFirst(otpy.Program):
    """Raises on the first call with a given ``key``, answers the next ones."""

    def setup(self, args, config):
        self.seen = set()

    def forward(self, key: str = "", **inputs):
        if key not in self.seen:
            self.seen.add(key)
            raise RuntimeError(f"first try of {key!r} fails")
        return {"key": key, "second_try": True}


class SlowTeardown(otpy.Program):
    """Echoes; its teardown (after the drain, when nothing reads its socket) writes ``mark``
    and then takes ``seconds``."""

    def setup(self, args, config):
        self.mark, self.seconds = args.get("mark", ""), args.get("seconds", 0.5)

    def forward(self, **inputs):
        return {**inputs, "pid": os.getpid()}

    def teardown(self):
        if self.mark:
            with open(self.mark, "w") as file:
                file.write(str(os.getpid()))
        time.sleep(self.seconds)


class Awkward(otpy.Program):
    """Outputs msgpack carries but JSON has no word for: NaN, inf, a nested tuple key."""

    def forward(self, **inputs):
        return {"x": float("nan"), "y": {"z": {(1, 2): "b"}}, "w": float("-inf")}
