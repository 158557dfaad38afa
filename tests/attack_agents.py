"""Programs for tests/test_cross_node_attacks.py."""

from __future__ import annotations

import otpy


class Big(otpy.Program):
    """Answers ``n`` bytes of text: a reply as big as a client asks."""

    def forward(self, n: int = 0, **inputs):
        return {"data": "x" * n}
