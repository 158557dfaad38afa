"""One call, from bytes to bytes: decode it, run ``forward``, encode the reply or the failure.

Pure functions the agent's call loop (``_worker.AgentServer``) uses; they hold no state.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping
from typing import Any

import msgspec

from ._program import Program
from ._protocol import ENCODER, TO_AGENT, Call, CallFailed, Reply, first_unencodable
from ._wire import WireError, call_id_of, decode, encode

DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_QUEUE = 1000
MAX_TEXT = 64 * 1024  # of an exception's message and traceback sent back to the caller


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


def decode_call(payload) -> Call | CallFailed:
    """The call, or the ``bad_request`` failure to send back: whatever the bytes (too deep,
    not msgpack, a decoder's RecursionError or MemoryError), the call loop goes on."""
    try:
        return decode(TO_AGENT, payload)
    except WireError as exc:
        return CallFailed(call_id=call_id_of(payload), kind="bad_request", message=str(exc))


def run_call(program: Program, call: Call) -> bytes:
    """``forward(**inputs)``, as the encoded Reply or CallFailed to send back."""
    try:
        outputs = as_outputs(program(**call.inputs))
    except BaseException as exc:
        return _raised(call.call_id, exc)
    try:
        return encode(ENCODER, Reply(call_id=call.call_id, outputs=outputs))
    except WireError as exc:  # any failure (RecursionError too): the caller is told, the call thread lives
        name = first_unencodable(outputs)
        return ENCODER.encode(CallFailed(call_id=call.call_id, kind="unencodable", error_type="WireError",
                                         message=f"output {name!r} cannot be sent: {exc}"))


def _raised(call_id: int, exc: BaseException) -> bytes:
    """The ``raised`` failure; its text is cut so that a huge or odd exception still goes out."""
    try:
        message, trace = str(exc)[:MAX_TEXT], traceback.format_exc()[-MAX_TEXT:]
    except Exception as inner:  # str() of the exception raised too
        message, trace = f"(str() of the exception failed: {type(inner).__name__})", ""
    return ENCODER.encode(CallFailed(call_id=call_id, kind="raised", error_type=type(exc).__name__,
                                     message=message, traceback=trace))


def as_outputs(result: Any) -> dict[str, Any]:
    """A mapping, a msgspec Struct, a DSPy-like ``Prediction`` (``toDict``) or an object's
    public ``__dict__``, as a dict of outputs. Raises TypeError for anything else."""
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
