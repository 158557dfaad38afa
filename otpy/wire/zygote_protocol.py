"""Wire messages between the node and its zygote (``processes.zygote``): one AF_UNIX
SOCK_SEQPACKET socket, one datagram a message; the rules of ``wire.protocol`` apply (tagged,
frozen Structs; a tag is its class name, unique across both modules).

>>> msg = Spawned(request_id=7, pid=1234)
>>> FROM_ZYGOTE.decode(ENCODER.encode(msg)) == msg
True
"""

from __future__ import annotations

from typing import Union

import msgspec

from ..specs.model import ChildSpec
from .protocol import ENCODER, Message

__all__ = ["ENCODER"]


# --- node <-> zygote ----------------------------------------------------------------------
# One AF_UNIX SOCK_SEQPACKET socket: one datagram is one message. A Spawn carries three fds
# (SCM_RIGHTS): the write ends of the child's notify, stdout and stderr pipes, in that order.


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
    standby: bool = False  # a hot standby of ``spec`` (a program): set up, then it waits to be handed the name


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


class Stale(Message):
    """zygote -> node: no child forked: a source file this zygote imported changed on disk
    (``reason`` names it). The node starts a new zygote generation and sends the spawn there."""

    request_id: int
    reason: str


class Retire(Message):
    """node -> zygote, last message before the node closes the socket: the node lives on, so
    kill only what descends from this zygote (its generation), not every process of the run.
    An EOF without it means the node is gone: the whole run goes."""


class Ping(Message):
    """node -> zygote: the heartbeat (``processes.heartbeat``); answered by a Pong between two messages."""


class Pong(Message):
    """zygote -> node: alive, and not stuck."""


ToZygote = Union[Init, Spawn, Ping, Retire]
FromZygote = Union[Hello, Spawned, SpawnFailed, Stale, Exited, Pong]

TO_ZYGOTE = msgspec.msgpack.Decoder(ToZygote)
FROM_ZYGOTE = msgspec.msgpack.Decoder(FromZygote)
