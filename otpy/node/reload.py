"""A reload: the running tree made to match its topology file again (``otpy reload``, SIGHUP).

(To be built: read the file, diff it against the running tree, apply the difference.)
"""

from __future__ import annotations

from typing import Any

from ..wire.protocol import Outcome, Reload


async def reload_topology(node: Any, request: Reload) -> Outcome:
    """The reply to ``request`` on ``node`` (an ``AsyncNode``)."""
    return Outcome("not_supported", detail="reload is not built yet")


def reload_summary(outcome: Outcome) -> str:
    """One line for a log: what a reload did, or why it did nothing."""
    if not outcome.ok:
        return f"{outcome.outcome}: {outcome.detail}"
    return f"{len(outcome.changes)} change(s)" if outcome.changes else "no changes"
