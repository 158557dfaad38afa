"""The agents a manager starts for its program steps: their ids, and when they are idle.

Pure functions: ``ManagerProgram`` asks them; the ids are stable (a later call, a restarted
manager find the same agent) and fit the node's socket paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Mapping

from ..specs.rules import SUN_PATH_MAX, id_problem

OWNER_MAX = 30  # characters of the manager's id kept in its agents' ids


def managed_id(manager: str, step: str, program: str, args: Mapping[str, Any] | None = None,
               node_folder: str | None = None) -> str:
    """The id of the agent ``manager`` starts for ``step`` running ``program`` with ``args``:
    ``MANAGER.STEP.ATTR-HASH`` (HASH: 8 hex digits of all four), or ``MANAGER.HASH`` when that is
    longer than an id may be, or (``node_folder`` given) when its socket there would not fit
    AF_UNIX's limit. The same inputs give the same id (a later call, a restarted manager find
    it); other args or another program give another agent.

    >>> managed_id("manager", "code", "examples.hello.agents:Worker")
    'manager.code.Worker-889bc10f'
    """
    digest = _digest(manager, step, program, json.dumps(dict(args or {}), sort_keys=True, default=str))[:8]
    attr = program.rpartition(":")[2].rpartition(".")[2]
    readable = f"{owner_of(manager)}.{step}.{attr}-{digest}"
    return readable if id_problem(readable, node_folder) is None else f"{owner_of(manager)}.{digest}"


def room_problem(agent: str, manager: str, node: str, node_folder: str) -> str | None:
    """Why the manager cannot start ``agent`` (its short id, see ``managed_id``) in node ``node``:
    its socket would not fit AF_UNIX's limit, and what to shorten; None when it fits."""
    if id_problem(agent, node_folder) is None:
        return None
    socket = f"{node_folder}/agents/{agent}.sock"
    return (f"its socket {socket} would be {len(socket.encode())} bytes long, over AF_UNIX's {SUN_PATH_MAX} "
            f"even with the manager's short id for it: shorten the node name {node!r}, the runtime folder "
            f"{os.path.dirname(node_folder)} (OTPY_RUNTIME_DIR), or the manager's id {manager!r}")


def owner_of(manager: str) -> str:
    """The part of its agents' ids that names the manager (its id, or a short form of a long one)."""
    return manager if len(manager) <= OWNER_MAX else f"{manager[:OWNER_MAX - 9]}-{_digest(manager)[:8]}"


def started_by(manager: str, child_id: str) -> bool:
    """``child_id`` is one that ``managed_id(manager, ...)`` makes (a previous incarnation's).
    Step names hold no '.', so a manager ``a`` does not take ``a.x``'s agents for its own."""
    prefix = owner_of(manager) + "."
    rest = child_id[len(prefix):] if child_id.startswith(prefix) else ""
    return bool(re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z_][A-Za-z0-9_]*-[0-9a-f]{8}|[0-9a-f]{8}", rest))


def idle_agents(last_used: Mapping[str, float | None], now: float, idle_seconds: float) -> list[str]:
    """The agents unused for ``idle_seconds`` (``None``: in use now).

    >>> idle_agents({"a": 0.0, "b": 9.0, "c": None}, now=10.0, idle_seconds=5.0)
    ['a']
    """
    return [agent for agent, used in last_used.items() if used is not None and now - used >= idle_seconds]


def next_check(last_used: Mapping[str, float | None], now: float, idle_seconds: float) -> float | None:
    """Seconds until the next agent becomes idle; None when no agent waits to (nothing to time)."""
    waiting = [used + idle_seconds - now for used in last_used.values() if used is not None]
    return max(0.0, min(waiting)) if waiting else None


def _digest(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()
