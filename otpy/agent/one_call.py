"""One call, from bytes to bytes: decode it, run ``forward``, encode the reply or the failure.

Pure functions the agent's call loop (``call_server.CallServer``) uses; they hold no state.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping
from typing import Any

import msgspec

from .program import Program
from ..wire.protocol import ENCODER, TO_AGENT, Call, CallFailed, ConfigSync, Reply, first_unencodable
from ..wire.codec import MAX_CALL_BYTES, WireError, call_id_of, decode, describe, encode

DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_QUEUE = 1000
MAX_TEXT = 64 * 1024  # of an exception's message and traceback sent back to the caller
MAX_TRACE_FRAMES = 50  # frames of each exception's traceback that are formatted
MAX_CHAIN = 10  # exceptions of a ``__cause__``/``__context__`` chain that are formatted


def limits(program: Program, args: Mapping[str, Any]) -> tuple[int, int]:
    """``(concurrency, max_queue)``: from the child's args, else the program's class attributes."""
    concurrency = args.get("concurrency", getattr(program, "concurrency", DEFAULT_CONCURRENCY))
    max_queue = args.get("max_queue", getattr(program, "max_queue", DEFAULT_MAX_QUEUE))
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, not {concurrency!r}")
    if not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 0:
        raise ValueError(f"max_queue must be an integer >= 0, not {max_queue!r}")
    return concurrency, max_queue


_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mib() -> float:
    """This process's resident memory, from /proc (one read: cheap enough after every call)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE_MIB


def decode_call(payload) -> Call | ConfigSync | CallFailed:
    """The call, or the ``bad_request`` failure to send back: whatever the bytes (too deep,
    not msgpack, a decoder's RecursionError or MemoryError), the call loop goes on."""
    try:
        return decode(TO_AGENT, payload)
    except WireError as exc:
        return CallFailed(call_id=call_id_of(payload), kind="bad_request", message=str(exc))


def run_call(program: Program, call: Call) -> bytes:
    """``forward(**inputs)``, as the encoded Reply or CallFailed to send back. Raises nothing
    an output can cause: whatever the encoder (or a user object it meets) raises, the caller
    gets ``unencodable`` and the call thread lives."""
    try:
        run = program if callable(program) else program.forward  # a plain class with forward: as validate accepts
        outputs = as_outputs(run(**call.inputs))
    except BaseException as exc:
        return _raised(call.call_id, exc)
    try:
        data = encode(ENCODER, Reply(call_id=call.call_id, outputs=outputs))
    except BaseException as exc:  # WireError, or a BaseException out of a user's property
        return _unencodable(call.call_id, f"output {_first_unencodable(outputs)} cannot be sent: {describe(exc)}")
    if len(data) > MAX_CALL_BYTES:
        return _unencodable(call.call_id, f"the reply is {len(data)} bytes, over the limit of {MAX_CALL_BYTES}")
    return data


def _unencodable(call_id: int, message: str) -> bytes:
    return ENCODER.encode(CallFailed(call_id=call_id, kind="unencodable", error_type="WireError", message=message))


def _first_unencodable(outputs: dict[str, Any]) -> str:
    """The name of the first output that will not encode, quoted; its search may meet the same
    evil object again, so it is guarded too."""
    try:
        return repr(first_unencodable(outputs))[:200]
    except BaseException:
        return "(unknown)"


def _raised(call_id: int, exc: BaseException) -> bytes:
    """The ``raised`` failure; its text is cut so that a huge or odd exception still goes out."""
    try:
        message = str(exc)[:MAX_TEXT]
    except BaseException as inner:  # str() of the exception raised too
        message = f"(str() of the exception failed: {describe(inner)})"
    return ENCODER.encode(CallFailed(call_id=call_id, kind="raised", error_type=_type_name(exc),
                                     message=message, traceback=format_bounded(exc)[-MAX_TEXT:]))


def _type_name(exc: BaseException) -> str:
    name = type(exc).__name__
    return name if type(name) is str else "exception"


def format_bounded(exc: BaseException) -> str:
    """``exc``'s traceback as ``traceback.format_exc`` would print it, but over at most
    ``MAX_CHAIN`` chained exceptions of ``MAX_TRACE_FRAMES`` frames each: an exception with
    100k chained causes took 5.6 s to format whole. Never raises (cycles, raising ``__str__``)."""
    chain, seen, current = [], set(), exc
    while current is not None and id(current) not in seen and len(chain) < MAX_CHAIN:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    note = f"({len(chain)} chained exceptions shown, more left out)\n\n" if current is not None \
        and id(current) not in seen else ""
    parts = []
    for item in reversed(chain):  # not traceback.format_exception: it walks the whole chain first
        try:
            frames = "".join(traceback.format_tb(item.__traceback__, -MAX_TRACE_FRAMES))
        except BaseException:
            frames = ""
        parts.append(f"Traceback (most recent call last):\n{frames}{describe(item, MAX_TEXT)}\n")
    return note + "\nThe above exception led to the following one:\n\n".join(parts)


def as_outputs(result: Any) -> dict[str, Any]:
    """A mapping, a msgspec Struct, a DSPy-like ``Prediction`` (``toDict``) or an object's
    public ``__dict__``, as a dict of outputs. Raises TypeError for anything else."""
    if type(result) is dict:
        return result  # the usual case: encoded at once, so not copied
    match result:
        case None:
            return {}
        case Mapping():
            return dict(result)
        case msgspec.Struct():
            return msgspec.structs.asdict(result)
        case _ if callable(getattr(result, "toDict", None)):
            return dict(result.toDict())
        case _ if hasattr(result, "__dict__") and not isinstance(result, type):
            return {k: v for k, v in vars(result).items() if not k.startswith("_")}
    raise TypeError(f"forward must return a mapping of outputs, not {type(result).__name__}")
