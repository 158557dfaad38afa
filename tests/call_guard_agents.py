"""Programs for tests/test_call_guard.py."""

from __future__ import annotations

import os
import time

import otpy


class Gate(otpy.Program):
    """Answers at once, or (given ``mark`` and ``release``) writes ``mark`` and runs until the
    file ``release`` exists (at most 20 s)."""

    def forward(self, mark: str = "", release: str = "", **inputs):
        if mark:
            with open(mark, "w") as file:
                file.write(str(os.getpid()))
            deadline = time.monotonic() + 20
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.01)
        return {**inputs, "pid": os.getpid()}


class Timed(otpy.Program):
    """Sleeps ``seconds``; answers with ``i``, when it ran and on which thread."""

    def forward(self, seconds: float = 0.0, i: int = 0):
        import threading

        start = time.monotonic()
        time.sleep(seconds)
        return {"i": i, "start": start, "end": time.monotonic(), "thread": threading.current_thread().name}
