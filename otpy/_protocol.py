"""Wire messages between otpy's processes: tagged, frozen msgspec Structs, one union per channel.

Each channel has a section below with its messages, a union per direction and one decoder
per direction, built once. A message's tag is its class name, so names are unique across
the whole file. Rules for changing a message (msgspec's schema evolution): new fields get
defaults, field types never change.

>>> msg = Spawned(request_id=7, pid=1234)
>>> FROM_ZYGOTE.decode(ENCODER.encode(msg)) == msg
True
"""

from __future__ import annotations

from typing import Union

import msgspec

from ._specs import ChildSpec

ENCODER = msgspec.msgpack.Encoder()


class Message(msgspec.Struct, frozen=True, tag=True):
    """Base of every wire message: frozen, tagged with the class name."""


# --- node <-> zygote ----------------------------------------------------------------------
# One AF_UNIX SOCK_SEQPACKET socket: one datagram is one message. A Spawn carries two fds
# (SCM_RIGHTS): the write ends of the child's notify pipe and output pipe, in that order.


class Init(Message):
    """node -> zygote, first message: where the node imports from and runs in."""

    sys_path: list[str]
    cwd: str
    env: dict[str, str]


class Spawn(Message):
    """node -> zygote: fork a child for ``spec``, with ``env`` added to its environment."""

    request_id: int
    spec: ChildSpec
    env: dict[str, str] = {}


class Hello(Message):
    """zygote -> node: Init done, ready for spawn requests."""

    pid: int


class Spawned(Message):
    """zygote -> node: the child is forked (a command: exec succeeded)."""

    request_id: int
    pid: int


class SpawnFailed(Message):
    """zygote -> node: no child was left running (import or exec failed)."""

    request_id: int
    reason: str


class Exited(Message):
    """zygote -> node: a child the zygote spawned was reaped; ``status`` is waitpid's."""

    pid: int
    status: int


ToZygote = Union[Init, Spawn]
FromZygote = Union[Hello, Spawned, SpawnFailed, Exited]
ZygoteMessage = Union[ToZygote, FromZygote]

TO_ZYGOTE = msgspec.msgpack.Decoder(ToZygote)
FROM_ZYGOTE = msgspec.msgpack.Decoder(FromZygote)


# --- caller <-> agent (calls) -------------------------------------------------------------
# The agent binds a ROUTER at its call endpoint; callers connect DEALERs. Frames: one
# message per ZeroMQ message (after the ROUTER's identity frame). ``call_id`` is unique per
# caller socket; a reply whose call_id is no longer awaited is dropped.


class Call(Message):
    """caller -> agent: run ``forward(**inputs)``."""

    call_id: int
    inputs: dict[str, object] = {}


class Reply(Message):
    """agent -> caller: ``forward`` returned ``outputs``."""

    call_id: int
    outputs: dict[str, object] = {}


class CallFailed(Message):
    """agent -> caller: the call did not produce outputs.

    ``kind``: ``raised`` (forward raised: ``error_type``, ``message`` and ``traceback`` are the
    remote exception's), ``overloaded`` (the agent's queue is full), ``bad_request`` (the
    message could not be decoded), ``unencodable`` (an output cannot be encoded; ``message``
    names the field).
    """

    call_id: int
    kind: str
    error_type: str = ""
    message: str = ""
    traceback: str = ""


ToAgent = Call
FromAgent = Union[Reply, CallFailed]

TO_AGENT = msgspec.msgpack.Decoder(ToAgent)
FROM_AGENT = msgspec.msgpack.Decoder(FromAgent)
