"""What the control server does with one message: receive it within bounds, decode it, find
its lane, carry it out.

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
from typing import TYPE_CHECKING

import msgspec
import zmq
import zmq.asyncio

from ..supervision.effects import Result
from ..wire.protocol import (
    TO_NODE, Children, ControlError, CountChildren, Counts, DeleteChild, GetStatus, Message,
    Outcome, Reconfigure, RestartChild, SetVariables, StartChild, StartFromTemplate,
    TerminateChild, WhichChildren,
)
from ..wire.codec import Frames, WireError, clip, decode

if TYPE_CHECKING:
    from .node import AsyncNode

Lane = tuple[str, str]

MAX_CONTROL_ITEMS = 100_000  # containers a request may hold (past it, values of any kind too): a real one
# holds a few hundred; decoding costs ~1 us and ~80 bytes per container, on the node's loop
READ_CHUNK = 4096  # frames of one message read between two turns of the node's loop


async def receive_bounded(sock: zmq.asyncio.Socket, limit: int) -> Frames:
    """One message from a ROUTER: the identity and at most one more frame are kept, copied only
    while the frames after the identity total at most ``limit``; the rest are read and dropped
    at once, uncopied (``_wire.Frames``), ``READ_CHUNK`` at a time, the loop turning between.

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
        return ControlError(0, "bad_request", f"the message is {frames.size} bytes, over the limit of {limit}")
    if frames.count != 2:
        return ControlError(0, "bad_request", f"expected one frame after the identity, got {frames.count - 1}")
    try:
        return decode(TO_NODE, frames.kept[1].bytes, max_items=MAX_CONTROL_ITEMS)
    except WireError as exc:  # whatever failed: unknown tag, wrong type, too deep, RecursionError ...
        return ControlError(0, "bad_request", f"undecodable request: {exc}")


def lane_of(node: "AsyncNode", request: Message) -> Lane | None:
    """The lane of ``request``: the supervisor it concerns (found now, at arrival); None: no lane."""
    match request:
        case GetStatus():
            return None
        case SetVariables():
            return ("variables", "")
        case WhichChildren(supervisor=sup) | CountChildren(supervisor=sup) | StartChild(supervisor=sup) | \
                StartFromTemplate(supervisor=sup):
            found = node.supervisor(sup or None)
            return ("supervisor", found.spec.id if found is not None else sup)
        case TerminateChild(id=child, supervisor=sup) | RestartChild(id=child, supervisor=sup) | \
                DeleteChild(id=child, supervisor=sup) | Reconfigure(source=child, supervisor=sup):
            owner = node._owner(child, sup or None)
            return ("supervisor", sup or child if isinstance(owner, Result) else owner.spec.id)
    return ("other", type(request).__name__)


async def dispatch(node: "AsyncNode", request: Message) -> Message:
    match request:
        case WhichChildren(request_id=rid, supervisor=sup):
            return Children(rid, node.which_children(sup or None))
        case CountChildren(request_id=rid, supervisor=sup):
            return Counts(rid, **node.count_children(sup or None))
        case StartChild(request_id=rid, supervisor=sup, spec=spec):
            return _outcome(rid, await node.start_child(sup or None, spec))
        case StartFromTemplate(request_id=rid, supervisor=sup, template=template, id=child_id, args=args):
            return _outcome(rid, await node.start_from_template(sup or None, template, child_id, args))
        case TerminateChild(request_id=rid, id=child_id, supervisor=sup):
            return _outcome(rid, await node.terminate_child(child_id, sup or None))
        case RestartChild(request_id=rid, id=child_id, supervisor=sup):
            return _outcome(rid, await node.restart_child(child_id, sup or None))
        case DeleteChild(request_id=rid, id=child_id, supervisor=sup):
            return _outcome(rid, await node.delete_child(child_id, sup or None))
        case Reconfigure(request_id=rid, supervisor=sup, source=source, target=target):
            return _outcome(rid, await node.reconfigure(sup or None, source, target))
        case SetVariables(request_id=rid, scope=scope, values=values):
            return _outcome(rid, await node.set_variables(scope, values))
        case GetStatus(request_id=rid):
            return msgspec.structs.replace(node.status(), request_id=rid)
    raise AssertionError(f"unhandled request {request!r}")


MAX_DETAIL = 4096  # characters of an outcome's detail: room for a FAILED line, not for an echoed 100k-char id


def _outcome(request_id: int, result: Result) -> Outcome:
    detail = clip(result.detail, MAX_DETAIL) if isinstance(result.detail, str) else result.detail
    return Outcome(request_id, result.outcome, pid=result.pid, detail=detail)
