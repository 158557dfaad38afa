"""How the node's log words a supervision event: one line, one level."""

from __future__ import annotations

import logging

from ..wire.protocol import NodeEvent


def log_line(e: NodeEvent) -> tuple[int, str, str, str]:
    """``log.log(*log_line(e))``: the node's log line of ``e``."""
    level, text = describe_event(e)
    return level, "otpy[%s]: %s", e.node, text


def describe_event(e: NodeEvent) -> tuple[int, str]:
    """An event as the node's log shows it: (logging level, text)."""
    who = e.child or e.supervisor
    pid = f" pid {e.pid}" if e.pid else ""
    detail = f": {e.detail}" if e.detail else ""
    text = {
        "started": f"{who} started{pid} (under {e.supervisor})",
        "exited": f"{who} exited{detail}",
        "stopped": f"{who} stopped{pid}{detail}",
        "restarting": f"{who} restarting (under {e.supervisor})",
        "restart_delayed": f"{who} restarting later (under {e.supervisor}){detail}",
        "start_failed": f"{who} failed to start{detail}",
        "gave_up": f"supervisor {e.supervisor} gave up{detail}",
        "auto_shutdown": f"supervisor {e.supervisor} shuts down: significant child {who} ended",
        "node_stopping": "stopping in order",
        "reloaded": f"reloaded {e.detail}",
    }.get(e.kind, " ".join(filter(None, (e.kind, who))) + detail)  # an Announce's has no child
    level = logging.WARNING if e.kind in ("exited", "start_failed", "gave_up") else logging.INFO
    return level, text
