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
    return (WARNING if e.kind in WARNINGS else INFO), _text(e)


WARNINGS = frozenset({"exited", "start_failed", "gave_up"})
WARNING, INFO = logging.WARNING, logging.INFO


def _text(e: NodeEvent) -> str:
    """The text of ``e``'s line (only its kind's wording is made: a restart words three events)."""
    who = e.child or e.supervisor
    detail = f": {e.detail}" if e.detail else ""
    match e.kind:
        case "started":
            return f"{who} started{_pid(e)} (under {e.supervisor})"
        case "exited":
            return f"{who} exited{detail}"
        case "stopped":
            return f"{who} stopped{_pid(e)}{detail}"
        case "restarting":
            return f"{who} restarting (under {e.supervisor})"
        case "restart_delayed":
            return f"{who} restarting later (under {e.supervisor}){detail}"
        case "start_failed":
            return f"{who} failed to start{detail}"
        case "gave_up":
            return f"supervisor {e.supervisor} gave up{detail}"
        case "auto_shutdown":
            return f"supervisor {e.supervisor} shuts down: significant child {who} ended"
        case "node_stopping":
            return "stopping in order"
        case "reloaded":
            return f"reloaded {e.detail}"
    return " ".join(filter(None, (e.kind, who))) + detail  # an Announce's has no child


def _pid(e: NodeEvent) -> str:
    return f" pid {e.pid}" if e.pid else ""
