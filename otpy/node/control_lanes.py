"""What the control server does with one message before the node answers it: receive it within
bounds, decode it, find its lane. (The answer is ``AsyncNode.handle``'s.)

Lanes: OTP gives every supervisor its own process, so a slow operation under one supervisor
(a ``terminate_child`` waiting out a shutdown timeout) never delays another supervisor's
requests. Here every request that concerns a supervisor goes into that supervisor's lane:
requests of one lane are carried out one after the other in arrival order (a
``which_children`` sent after a ``terminate_child`` of the same supervisor sees the child
stopped); different lanes proceed independently. ``GetStatus`` reads the whole tree and
waits for nobody (lane ``None``). ``SetVariables`` has a lane of its own (the registry).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import zmq
import zmq.asyncio

from ..wire.protocol import (
    TO_NODE, CountChildren, DeleteChild, GetStatus, Message, Reconfigure, Refused, Reload, RestartChild,
    SetVariables, StartChild, StartFromTemplate, TerminateChild, WhichChildren,
)
from ..wire.codec import Frames, WireError, decode
from .supervisor import Supervisor

Lane = tuple[str, str]


class Supervisors(Protocol):
    """What finding a lane needs of the node (``AsyncNode``)."""

    def supervisor(self, sup_id: str | None) -> Supervisor | None: ...

    def owner(self, child_id: str, sup_id: str | None) -> Supervisor | None: ...

MAX_CONTROL_ITEMS = 100_000  # containers a request may hold (past it, values of any kind too): a real one
# holds a few hundred; decoding costs ~1 us and ~80 bytes per container, on the node's loop
READ_CHUNK = 4096  # frames of one message read between two turns of the node's loop


async def receive_bounded(sock: zmq.asyncio.Socket, limit: int) -> Frames:
    """One message from a ROUTER: the identity and at most one more frame are kept, copied only
    while the frames after the identity total at most ``limit``; the rest are read and dropped
    at once, uncopied (``codec.Frames``), ``READ_CHUNK`` at a time, the loop turning between.

    ZeroMQ delivers a multipart message whole and limits only each frame (``ZMQ_MAXMSGSIZE``),
    so the frames are in memory before the first is read; what this bounds is otpy's copy of
    them, how long ZeroMQ holds them (they are freed as they are read), and the loop's time.
    """
    frames = Frames(await sock.recv(copy=False), max_frames=2, max_bytes=limit)
    if frames.more:
        shadow = zmq.Socket.shadow(sock.underlying)  # the same socket, read without awaiting each frame
        while not frames.read(shadow, READ_CHUNK):
            await asyncio.sleep(0)
    return frames


def parse_request(frames: Frames, limit: int) -> Message:
    """The request after the identity, or the ``bad_request`` to answer: over ``limit`` bytes,
    not one frame, undecodable, too deep, or holding more than ``MAX_CONTROL_ITEMS`` items
    (refused on its bytes, before it costs its decoding)."""
    if frames.size > limit:
        return Refused(0, "bad_request", f"the message is {frames.size} bytes, over the limit of {limit}")
    if frames.count != 2:
        return Refused(0, "bad_request", f"expected one frame after the identity, got {frames.count - 1}")
    try:
        return decode(TO_NODE, frames.kept[1].bytes, max_items=MAX_CONTROL_ITEMS)
    except WireError as exc:  # whatever failed: unknown tag, wrong type, too deep, RecursionError ...
        return Refused(0, "bad_request", f"undecodable request: {exc}")


def lane_of(node: Supervisors, request: Message) -> Lane | None:
    """The lane of ``request``: the supervisor it concerns (found now, at arrival); None: no lane.
    A request that names no supervisor here gets a lane of its own kind."""
    match request:
        case GetStatus():
            return None
        case SetVariables() | Reload():  # both make the whole tree match what is declared: one at a time
            return ("variables", "")
        case WhichChildren(supervisor=sup) | CountChildren(supervisor=sup) | StartChild(supervisor=sup) | \
                StartFromTemplate(supervisor=sup):
            found = node.supervisor(sup or None)
            return ("supervisor", found.spec.id if found is not None else sup)
        case TerminateChild(id=child, supervisor=sup) | RestartChild(id=child, supervisor=sup) | \
                DeleteChild(id=child, supervisor=sup) | Reconfigure(source=child, supervisor=sup):
            owner = node.owner(child, sup or None)
            return ("supervisor", owner.spec.id if owner is not None else sup or child)
    return ("other", type(request).__name__)
