"""Wire messages of cross-node calls: a client (``remote_calls.RemoteCaller``) and a node's call
gateway (``node.call_gateway``), over TCP with CURVE. Tagged, frozen msgspec Structs, one union
per direction and one decoder per direction, built once (as in ``protocol``).

The gateway serves the port after the node's ``control_tcp`` (``calls_endpoint``), with the
same keys and the same allow-list. A client's DEALER sends ``RemoteCall``; the gateway's ROUTER
answers each with one ``RemoteReply`` or ``RemoteFailed`` of the same ``call_id`` (unique per
client socket). ``inputs`` travel as the msgpack bytes of the inputs' map (``msgspec.Raw``):
the gateway hands them to the agent as they are, without decoding them.

>>> call = RemoteCall(call_id=1, agent="greeter", inputs=msgspec.Raw(ENCODER.encode({"a": 1})), timeout=5.0)
>>> TO_GATEWAY.decode(ENCODER.encode(call)).agent
'greeter'
"""

from __future__ import annotations

import re
from typing import Union

import msgspec

from .protocol import ENCODER, Message

__all__ = ["ENCODER", "FAILURE_KINDS", "FROM_GATEWAY", "TO_GATEWAY", "RemoteCall", "RemoteFailed", "RemoteReply",
           "calls_endpoint"]


class RemoteCall(Message):
    """client -> gateway: call ``agent`` of the gateway's node with ``inputs`` (a msgpack map),
    waiting at most ``timeout`` seconds for its reply."""

    call_id: int
    agent: str
    inputs: msgspec.Raw
    timeout: float


class RemoteReply(Message):
    """gateway -> client: the agent returned ``outputs``."""

    call_id: int
    outputs: dict[str, object] = {}


FAILURE_KINDS = ("no_such_agent", "crashed", "timeout", "overloaded", "raised", "unencodable", "bad_request",
                 "stopping", "error")


class RemoteFailed(Message):
    """gateway -> client: the call did not produce outputs. ``kind`` is one of ``FAILURE_KINDS``:
    the local call's typed error on the agent's node (``no_such_agent``: ``NoSuchAgent``,
    ``crashed``: ``AgentCrashed``, ``timeout``: ``CallTimeout``, ``overloaded``: ``Overloaded``,
    ``raised``: ``RemoteError`` with ``error_type`` and ``traceback``, ``unencodable``,
    ``bad_request``), ``stopping`` (the node stopped before an answer) or ``error``."""

    call_id: int
    kind: str
    message: str = ""
    error_type: str = ""
    traceback: str = ""


ToGateway = RemoteCall
FromGateway = Union[RemoteReply, RemoteFailed]
TO_GATEWAY = msgspec.msgpack.Decoder(ToGateway)
FROM_GATEWAY = msgspec.msgpack.Decoder(FromGateway)


def calls_endpoint(control_tcp: str) -> str:
    """The call gateway's endpoint of a node whose ``control_tcp`` is ``control_tcp``: the same host,
    the next port (``tcp://10.0.0.2:7000`` -> ``tcp://10.0.0.2:7001``). ValueError for an endpoint
    that is not ``tcp://HOST:PORT`` with a port below 65535."""
    host, port = split_tcp(control_tcp)
    if port >= 65535:
        raise ValueError(f"{control_tcp!r}: calls go to the port after it, and there is none after {port}")
    return f"tcp://{host}:{port + 1}"


def split_tcp(endpoint: str) -> tuple[str, int]:
    """``(HOST, PORT)`` of ``tcp://HOST:PORT`` (HOST a name, an IPv4 address or ``[v6]``), the
    rule of the CLI's ``--endpoint``; ValueError otherwise."""
    match = _ENDPOINT.fullmatch(endpoint) if isinstance(endpoint, str) else None
    if match is None or not 0 < int(match[3]) < 65536:
        raise ValueError(f"got {endpoint!r}; expected tcp://HOST:PORT")
    return match[1], int(match[3])


# the CLI's rule for --endpoint (cli.options): a name, an IPv4 address or [IPv6]; nothing else in HOST
_ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})")
