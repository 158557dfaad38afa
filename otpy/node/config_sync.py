"""After a variable write: wait until the running programs run the new values.

The registry publishes a committed write to every child's config watcher, which hands it to
``on_config`` (or restarts a program without one) on its own time. A write that returned
then would let a caller reach a program with the old knobs: an optimizer's trial scored on the
previous trial's values. So the node asks each running program child whose scope chain holds
the written scope (``ConfigSync`` on the agent's own socket) to resolve again and answer once
it runs the result; a child that restarts for it is waited for until it is started again.
Each child is asked at once and the write waits for all, up to ``SYNC_TIMEOUT``; the ones that
did not confirm in time are named in the reply, never silently dropped. A program whose
``on_config`` raised ``otpy.ConfigRefused`` keeps running its old values and answers why: the
write is then undone (``node.variable_writes``).

Before a write is stored, the same children are asked whether they would run it
(``check_configs``: ``ConfigCheck`` with the write as an overlay; the program's
``check_config`` answers, changing nothing): a refusal there refuses the write, nothing stored.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Callable, Iterator, NamedTuple

import msgspec
import zmq
import zmq.asyncio

from ..host.runtime_dir import agent_endpoint
from ..specs.model import ChildSpec
from ..variables.placement import REGISTRY_ID
from ..wire.protocol import ENCODER, FROM_AGENT, ConfigCheck, ConfigSync, NodeEvent, Reply
from .supervisor import Supervisor

SYNC_TIMEOUT = 30.0  # seconds a write waits for its programs to run it

Listeners = list[Callable[[NodeEvent], None]]


def followers(root: Supervisor, scope: str) -> Iterator[str]:
    """The running program children whose configuration ``scope`` is part of: a child's
    chain is its own id, its supervisors up to the root, and ``global``."""
    yield from (child_id for child_id, _ in _followers(root, scope, ("global",)))


def follower_pids(root: Supervisor, scope: str) -> Iterator[tuple[str, int | None]]:
    """``followers``, each with its pid."""
    yield from _followers(root, scope, ("global",))


def _followers(sup: Supervisor, scope: str, above: tuple[str, ...]) -> Iterator[tuple[str, int | None]]:
    chain = (sup.spec.id, *above)
    for child_id in sup.machine.order:
        child = sup.machine.children.get(child_id)
        if child is None or child.state != "running":
            continue
        if child.spec.kind != "worker":
            if (found := sup.find_supervisor(child_id)) is not None and found is not sup:
                yield from _followers(found, scope, chain)
        elif child_id != REGISTRY_ID and isinstance(child.running, ChildSpec) and child.running.program:
            if scope == child_id or scope in chain:
                yield child_id, child.pid


REFUSED = "refused: "  # an agent's answer when its on_config refused the values: REFUSED + why


class Synced(NamedTuple):
    """What a sync found: the ids that did not confirm in time, and those that refused (id -> why)."""

    late: list[str]
    refused: dict[str, str]


async def sync_configs(node: str, ids: list[str], listeners: Listeners, timeout: float = SYNC_TIMEOUT) -> Synced:
    """Ask each of ``ids`` to run the registry's values now: the ids that did not confirm within
    ``timeout`` (a restarting one confirms when it is started again), and those whose program
    refused them (``otpy.ConfigRefused``: it runs its old values)."""
    if not ids:
        return Synced([], {})
    started: dict[str, asyncio.Future] = {}
    loop = asyncio.get_running_loop()

    def hear(event: NodeEvent) -> None:
        if event.kind == "started" and (waiting := started.get(event.child)) is not None and not waiting.done():
            waiting.set_result(event.pid)

    listeners.append(hear)
    context = zmq.asyncio.Context.instance()
    try:
        results = await asyncio.gather(*(_sync_one(context, node, child, started, loop, timeout) for child in ids))
    finally:
        listeners.remove(hear)
    late = [child for child, state in zip(ids, results) if state is None]
    refused = {child: state[len(REFUSED):] for child, state in zip(ids, results)
               if state is not None and state.startswith(REFUSED)}
    return Synced(late, refused)


_call_ids = itertools.count(1)


UNCHECKED = "unchecked"  # an agent's answer to ConfigCheck when its program has no check_config


async def check_configs(node: str, ids: list[str], overlay: dict[str, dict], timeout: float = SYNC_TIMEOUT
                        ) -> tuple[dict[str, str], list[str]]:
    """Ask each of ``ids`` whether its program would run the configuration it would have with
    ``overlay`` written (``ConfigCheck``): those that refuse (id -> why), and those whose
    program has no ``check_config`` (``UNCHECKED``: the node need not ask that process again).
    A child that does not answer within ``timeout`` (or cannot: it is restarting) does not
    refuse; the write's sync hears of it again."""
    if not ids:
        return {}, []
    context = zmq.asyncio.Context.instance()
    states = await asyncio.gather(*(asyncio.wait_for(_check_one(context, node, child, overlay), timeout)
                                    for child in ids), return_exceptions=True)
    refused = {child: state[len(REFUSED):] for child, state in zip(ids, states)
               if isinstance(state, str) and state.startswith(REFUSED)}
    return refused, [child for child, state in zip(ids, states) if state == UNCHECKED]


async def _check_one(context, node: str, child: str, overlay: dict[str, dict]) -> str | None:
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(agent_endpoint(node, child))
        call_id = next(_call_ids)
        await dealer.send(ENCODER.encode(ConfigCheck(call_id=call_id, overlay=overlay)))
        while True:
            reply = FROM_AGENT.decode(await dealer.recv())
            if reply.call_id == call_id:
                break
        return reply.outputs.get("config") if isinstance(reply, Reply) else None
    except (zmq.ZMQError, msgspec.DecodeError):
        return None
    finally:
        dealer.close(linger=0)


async def _sync_one(context, node: str, child: str, started: dict[str, asyncio.Future], loop,
                    timeout: float) -> str | None:
    """``child``'s answer within ``timeout`` (``applied``, ``REFUSED`` + why, ...), ``started`` if a
    new incarnation of it started meanwhile (it resolved the stored values at setup: a program
    whose ``on_config`` raised, or one without it, restarts so), None if it did not confirm."""
    restarted = started[child] = loop.create_future()  # before asking: the restart may be quick
    asked = asyncio.ensure_future(_ask(context, node, child, restarted))
    try:
        done, _ = await asyncio.wait({asked, restarted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        asked.cancel()
    if restarted in done:
        return "started"
    return asked.result() if asked in done and not asked.cancelled() else None


async def _ask(context, node: str, child: str, restarted: asyncio.Future) -> str | None:
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(agent_endpoint(node, child))
        call_id = next(_call_ids)
        await dealer.send(ENCODER.encode(ConfigSync(call_id=call_id)))
        while True:
            reply = FROM_AGENT.decode(await dealer.recv())
            if reply.call_id == call_id:
                break
        state = reply.outputs.get("config") if isinstance(reply, Reply) else reply.kind
        if state == "restarting":
            await restarted  # its next incarnation resolves the stored values at setup
        if state in ("unchanged", "applied", "restarting", "draining") or (
                isinstance(state, str) and state.startswith(REFUSED)):
            return state
        return None
    except (zmq.ZMQError, msgspec.DecodeError):
        return None
    finally:
        dealer.close(linger=0)
