"""A caller's side of the call messages: the bytes it sends, what it makes of the bytes it gets.

Kept apart from ``call_engine`` (sockets) and ``call_book`` (deadlines, what each answer
does) so that every failure of the wire is decided in one place: inputs that cannot be sent
raise ``Unencodable`` at once, whatever the encoder raised (a ``RecursionError`` too); a reply
that cannot be read fails its own call with ``Unencodable`` when its ``call_id`` can be found,
and is dropped otherwise, so the thread that reads it never dies of it.
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import BadRequest, CallError, Overloaded, RemoteError, Unencodable
from .protocol import ENCODER, FROM_AGENT, Call, CallFailed, Reply, first_unencodable
from .codec import MAX_CALL_BYTES, WireError, call_id_of, decode, encode


def encode_call(call_id: int, inputs: Mapping[str, Any]) -> bytes:
    """The wire form of a call; ``Unencodable`` names the input that cannot be sent."""
    try:
        for name in inputs:
            if type(name) is not str and not isinstance(name, str):
                raise WireError("input names must be str")
        data = encode(ENCODER, Call(call_id=call_id, inputs=inputs if type(inputs) is dict else dict(inputs)))
    except WireError as exc:
        raise Unencodable(f"input {first_unencodable(inputs)!r} cannot be sent: {exc}") from None
    if len(data) > MAX_CALL_BYTES:  # the agent's socket would drop it and disconnect us
        raise Unencodable(f"the call is {len(data)} bytes, over the limit of {MAX_CALL_BYTES}")
    return data


def read_reply(payload) -> Reply | CallFailed | None:
    """The agent's message; one that cannot be read becomes the ``unencodable`` failure of its
    call (None when not even its call id can be read: nobody waits for it then)."""
    try:
        return decode(FROM_AGENT, payload)
    except WireError as exc:
        call_id = call_id_of(payload)
        if not call_id:
            return None
        return CallFailed(call_id=call_id, kind="unencodable", error_type="WireError",
                          message=f"its reply could not be read: {exc}")


class AgentDraining(CallError):
    """The agent is shutting down and did not run the call (``error_of`` of a ``draining``
    answer, for a client that speaks to an agent by hand; a ``Caller`` sends such a call again
    on a new connection, to the next holder of the name, and never raises it)."""


def error_of(failed: CallFailed, agent: str) -> CallError:
    match failed.kind:
        case "draining":
            return AgentDraining(failed.message, agent=agent)
        case "raised":
            return RemoteError(failed.message, agent=agent, error_type=failed.error_type,
                               remote_traceback=failed.traceback)
        case "overloaded":
            return Overloaded(f"agent {agent!r} is overloaded: {failed.message}", agent=agent)
        case "unencodable":
            return Unencodable(f"agent {agent!r}: {failed.message}", agent=agent)
        case "bad_request":
            return BadRequest(f"agent {agent!r} could not read the call: {failed.message}", agent=agent)
        case other:
            return CallError(f"agent {agent!r} failed the call ({other}): {failed.message}", agent=agent)
