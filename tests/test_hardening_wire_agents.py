"""Programs for tests/test_hardening_wire.py (no tests here): agents that answer badly on purpose."""

from __future__ import annotations

import os

import otpy


def nested(depth: int, leaf=0):
    """``leaf`` inside ``depth`` lists."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


class Nest(otpy.Program):
    """Returns its pid, and a value nested ``depth`` lists deep."""

    def forward(self, depth: int = 0, **inputs):
        return {"deep": nested(depth), "pid": os.getpid()}
