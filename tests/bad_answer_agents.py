"""Programs for tests/test_wire_hostile.py (no tests here): agents that answer badly on purpose."""

from __future__ import annotations

import dataclasses
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


class EvilError(Exception):
    """An exception whose message cannot even be read."""

    def __str__(self):
        raise EvilError()


@dataclasses.dataclass
class Plain:
    x: int = 0


class EvilField(Plain):
    """A dataclass whose field raises ``EvilError`` when the encoder reads it."""

    @property
    def x(self):
        raise EvilError()


class Evil(otpy.Program):
    """Answers badly on purpose, by ``kind``; ``ok`` answers its pid."""

    def forward(self, kind: str = "ok", **inputs):
        if kind == "evil_output":
            return {"v": EvilField.__new__(EvilField)}
        if kind == "evil_raise":
            raise EvilError()
        if kind == "long_chain":
            error = None
            for i in range(int(inputs.get("n", 100_000))):
                try:
                    raise ValueError(i) from error
                except ValueError as exc:
                    error = exc
            raise error
        if kind == "big":
            return {"v": b"x" * int(inputs["n"])}
        return {"pid": os.getpid()}
