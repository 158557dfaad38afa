"""A node's call gateway: calls from other hosts (``wire.remote_calls``) relayed to its agents.

A node with ``control_tcp`` serves, on the port after it (``remote_protocol.calls_endpoint``),
a ROUTER with the same CURVE keys and the same live allow-list (``curve/authorized``, checked at
each handshake by an authenticator of the gateway's own ZeroMQ context, and again for every
connection at most every ``KEYS_RECHECK_S``). One thread of its own polls that ROUTER and the
sockets of a local call engine (``wire.call_engine``): a
``RemoteCall`` becomes a local call to the agent, made here, where the agent is, so drain
notices, the resend-once of a call refused while draining, deadlines and the typed errors are
the local rules; its outcome goes back typed (``RemoteReply``/``RemoteFailed``) from the same
thread, without a hand-off. The node's asyncio loop is never involved, and its control plane
never waits for the gateway.

Bounds: at most ``MAX_PER_CLIENT`` calls of one client and ``MAX_IN_FLIGHT`` in all are in
flight; beyond, ``overloaded`` at once. Replies wait at most ``SEND_HWM`` messages in ZeroMQ's
queue of a connection and ``PARKED_BYTES`` here (while ``SLOW_PARKED_BYTES`` wait here, its new
calls are ``overloaded`` at once: a slow link slows its client down); a connection over that,
or whose parked replies do not move for ``STUCK_S``, does not read: its replies are dropped and
its calls dropped unrun for ``DEAF_FOR_S`` (its caller times out), and the kernel closes a
connection that acknowledges nothing for ``TCP_MAXRT_MS``. A reply goes to the connection that
made the call: routing ids are libzmq's (a client that sets its own is not answered, as another
key could take it over). A frame over the call size limit is dropped by ZeroMQ (and its sender
disconnected), as at an agent's socket; inputs nested too deep are refused by the agent
(``bad_request``). The connections are capped (``wire.connections.YoungFirstCap``): at the
cap, only those too young to have shown a key are closed.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from typing import Any

import zmq

from ..host.runtime_dir import agent_socket_path
from ..specs.model import name_problem
from ..wire.call_book import Pending
from ..wire.call_engine import CallEngine, call_limits_problem
from ..wire.codec import MAX_CALL_BYTES, Complaints, WireError, decode, describe, encode
from ..wire.connections import YoungFirstCap, prepare
from ..wire.errors import (AgentCrashed, BadRequest, CallError, CallTimeout, NoSuchAgent, Overloaded, RemoteError,
                           Unencodable)
from ..wire.protocol import ENCODER, Call
from ..wire.remote_protocol import TO_GATEWAY, RemoteCall, RemoteFailed, RemoteReply

log = logging.getLogger("otpy")

MAX_IN_FLIGHT = 4096  # calls relayed and not answered yet, of every client
MAX_PER_CLIENT = 1024  # of one client connection
KEYS_RECHECK_S = 0.1  # a connection's key is looked up again after this long (a revocation applies then)
READ_BATCH = 256  # messages read before the engine's sockets get a turn
REPLY_LINGER_MS = 1000
SEND_HWM = 2  # replies ZeroMQ queues per connection (up to MAX_CALL_BYTES each); beyond, parked here
PARKED_BYTES = MAX_CALL_BYTES  # the bytes of replies parked per connection; beyond, it does not read
DEAF_FOR_S = 60.0  # a connection found not reading gets no answer (its calls are dropped) this long
PARKED_RETRY_MS = 1  # parked replies are tried again this often
SLOW_PARKED_BYTES = 1 << 20  # with this much parked (it takes its replies slowly), a connection's new calls are refused
STUCK_S = 10.0  # a connection whose parked replies do not move for this long does not read
TCP_MAXRT_MS = 60_000  # the kernel closes a connection whose sent data stays unacknowledged this long


class CallGateway:
    """The gateway of node ``node``: ``start()`` binds ``endpoint`` and starts its thread,
    ``stop()`` fails what is still in flight (``stopping``) and ends it."""

    def __init__(self, node: str, endpoint: str, keys: Any, cap: int) -> None:
        """``keys``: the node's key folder (``curve/``). The gateway has a ZeroMQ context of its own
        (its own I/O thread, beside the control server's) and its own authenticator of the same
        live allow-list (``curve.start_authenticator``)."""
        from ..wire.curve import serve_curve, start_authenticator

        self.node = node
        self.endpoint = endpoint
        self.context = context = zmq.Context(io_threads=1)
        try:
            self._auth, self.allowed = start_authenticator(context, keys / "authorized")
        except BaseException:
            context.term()
            raise
        try:
            self._open(node, context, endpoint, keys, cap, serve_curve)
        except BaseException:
            self._auth.stop()
            context.destroy(linger=0)
            raise

    def _open(self, node: str, context: zmq.Context, endpoint: str, keys: Any, cap: int, serve_curve) -> None:
        self._complain = Complaints(log.warning)
        self.frontend = context.socket(zmq.ROUTER)
        self.frontend.setsockopt(zmq.MAXMSGSIZE, MAX_CALL_BYTES)
        self.frontend.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        self.frontend.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full queue is told (Again), never dropped silently
        self.frontend.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.frontend.setsockopt(zmq.TCP_MAXRT, TCP_MAXRT_MS)
        self.frontend.setsockopt(zmq.IPV6, 1)
        serve_curve(self.frontend, keys)
        prepare(self.frontend)
        try:
            self.frontend.bind(endpoint)
        except zmq.ZMQError:
            self.frontend.close(linger=0)
            raise
        self.cap = YoungFirstCap(self.frontend, cap, self._complain, listener=f"the call gateway {endpoint}")
        self._ids = itertools.count(1)
        self.engine = CallEngine(context, node, self._ids.__next__)
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        for sock in (self.frontend, self.cap.monitor, self._stop):
            self.engine.poller.register(sock, zmq.POLLIN)
        self.in_flight = 0
        self._verified: set[bytes] = set()  # connections whose key was found authorized lately
        self._verified_at = 0.0
        self.per_client: dict[bytes, int] = {}
        self._parked: dict[bytes, _Parked] = {}  # replies of connections whose queue was full
        self._deaf: dict[bytes, float] = {}  # connections that do not read: when they were found so
        self._known: set[str] = set()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"otpy-call-gateway-{node}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Blocking (run it off the node's loop): the thread ends, its sockets are closed."""
        if self._stop < 0:
            return  # stopped already
        os.eventfd_write(self._stop, 1)
        self._thread.join()
        os.close(self._stop)
        self._stop = -1

    # --- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        engine, frontend, stop = self.engine, self.frontend, self._stop
        try:
            while True:
                try:
                    timeout = engine.poll_timeout_ms()
                    if self._parked:
                        timeout = PARKED_RETRY_MS if timeout is None else min(timeout, PARKED_RETRY_MS)
                    ready = engine.poller.poll(timeout)
                    for sock, _ in ready:
                        if sock is frontend:
                            self._read()
                        elif sock == stop:
                            return
                        elif sock is self.cap.monitor:
                            self.cap.on_events()
                        else:
                            engine.handle(sock)
                    engine.expire()
                    engine.retire_idle()
                    if self._parked:
                        self._unpark()
                except Exception as exc:  # a bug must not leave every later call unanswered
                    self._complain(f"otpy[{self.node}]: the call gateway carried on after {describe(exc)}")
        finally:
            engine.close(lambda pending: _Stopping(f"node {self.node!r} stopped before the call ended"))
            self.cap.close()
            frontend.close()
            self._auth.stop()
            self.context.term()  # the last answers leave (linger), then the I/O thread ends

    def _read(self) -> None:
        frontend = self.frontend
        for _ in range(READ_BATCH):
            try:  # frame by frame: bytes (cheaper than zmq.Frame) unless the key must be looked up
                identity = frontend.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not frontend.getsockopt(zmq.RCVMORE):
                continue
            body = frontend.recv(zmq.NOBLOCK, copy=self.allowed is None or self._fresh(identity))
            if frontend.getsockopt(zmq.RCVMORE):
                while frontend.getsockopt(zmq.RCVMORE):
                    frontend.recv(zmq.NOBLOCK)
                continue  # not a RemoteCaller's: nothing to answer to
            if identity[:1] != b"\0":  # a routing id the client chose (libzmq's own begin with 0): a later
                # connection of another key could take it and get the replies of this one's calls
                self._complain(f"otpy[{self.node}]: dropped a call: its client set its own ZeroMQ routing id")
                continue
            if self._deaf and self._is_deaf(identity):
                continue  # it does not read its replies: nothing more is run for it
            if type(body) is not bytes and not self._allows(identity, body):
                self._complain(f"otpy[{self.node}]: dropped a call: its client's key was revoked")
                continue  # as to a refused handshake: no answer
            try:
                message = decode(TO_GATEWAY, body if type(body) is bytes else body.buffer)
            except WireError as exc:
                self._complain(f"otpy[{self.node}]: the call gateway refused a message: {exc}")
                self._send(identity, RemoteFailed(call_id=0, kind="bad_request", message=f"undecodable call: {exc}"))
                continue
            match message:
                case RemoteCall():
                    self._relay(identity, message)
            if not self.frontend.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return  # nothing more waits (cheaper to ask than to get zmq.Again)

    def _fresh(self, identity: bytes) -> bool:
        """The key of the connection ``identity`` was found authorized less than ``KEYS_RECHECK_S``
        ago (its next message then needs no look-up)."""
        now = time.monotonic()
        if now - self._verified_at > KEYS_RECHECK_S:
            self._verified.clear()
            self._verified_at = now
        return identity in self._verified

    def _allows(self, identity: bytes, frame: zmq.Frame) -> bool:
        """Is the key of the connection ``identity`` (not ``_fresh``) still authorized? Looked up (a
        stat of the folder) at most once per connection every ``KEYS_RECHECK_S``: a revocation
        applies then."""
        if self.allowed.allows(frame.get("User-Id")):
            self._verified.add(identity)
            return True
        return False

    def _relay(self, identity: bytes, call: RemoteCall) -> None:
        agent = call.agent
        if (problem := self._agent_problem(agent)) is not None:
            self._send(identity, RemoteFailed(call_id=call.call_id, kind="no_such_agent", message=problem))
            return
        if self._parked and (parked := self._parked.get(identity)) is not None and parked.size >= SLOW_PARKED_BYTES:
            self._send(identity, RemoteFailed(
                call_id=call.call_id, kind="overloaded",
                message=f"node {self.node!r} holds {parked.size} bytes of replies this client has not taken yet"))
            return
        mine = self.per_client.get(identity, 0)
        if self.in_flight >= MAX_IN_FLIGHT or mine >= MAX_PER_CLIENT:
            self._send(identity, RemoteFailed(
                call_id=call.call_id, kind="overloaded",
                message=f"node {self.node!r} already relays {mine} calls of this client and {self.in_flight} in all "
                        f"(at most {MAX_PER_CLIENT} and {MAX_IN_FLIGHT})"))
            return
        if (problem := call_limits_problem(call.timeout, 0)) is not None:  # a local call's rule: checked before
            self._send(identity, RemoteFailed(call_id=call.call_id, kind="bad_request", message=problem))
            return
        local_id = next(self._ids)
        payload = ENCODER.encode(Call(call_id=local_id, inputs=call.inputs))  # the inputs' bytes, as they came
        relay = _Relay(self, identity, call.call_id)
        self.in_flight += 1
        self.per_client[identity] = mine + 1
        self.engine.start(Pending(agent, {}, call.timeout, 0, relay, payload, local_id))

    def _agent_problem(self, agent: str) -> str | None:
        if agent in self._known:
            return None
        if name_problem(agent, "agent id") is not None or not agent_socket_path(self.node, agent).exists():
            return f"node {self.node!r} has no agent {agent[:80]!r}"
        self._known.add(agent)
        return None

    def _done(self, relay: "_Relay", message: RemoteReply | RemoteFailed) -> None:
        self.in_flight -= 1
        left = self.per_client.get(relay.identity, 1) - 1
        if left > 0:
            self.per_client[relay.identity] = left
        else:
            self.per_client.pop(relay.identity, None)
        self._send(relay.identity, message)

    def _send(self, identity: bytes, message: RemoteReply | RemoteFailed) -> None:
        try:
            data = encode(ENCODER, message)
        except WireError as exc:
            data = ENCODER.encode(RemoteFailed(call_id=message.call_id, kind="unencodable",
                                               message=f"the reply could not be encoded: {exc}"))
        if identity in self._parked:  # after those that wait already, in order
            self._park(identity, data)
        elif self._put(identity, data) is False:
            self._park(identity, data)

    def _put(self, identity: bytes, data: bytes) -> bool | None:
        """Queue one reply: True, False when the connection's queue is full (``SEND_HWM``), None
        when the connection is gone (its call ended with it)."""
        try:
            self.frontend.send(identity, zmq.NOBLOCK | zmq.SNDMORE)
        except zmq.Again:
            return False
        except zmq.ZMQError:
            return None  # EHOSTUNREACH: no such connection (any more)
        self.frontend.send(data, zmq.NOBLOCK, copy=len(data) < 65536)  # a routed message goes whole
        return True

    def _park(self, identity: bytes, data: bytes) -> None:
        """Keep a reply whose connection's queue is full, within ``PARKED_BYTES``: a connection
        over it does not read; its replies are dropped (its calls time out there) and calls
        coming on it are dropped unrun for ``DEAF_FOR_S``: the node never holds what a client
        does not take."""
        parked = self._parked.get(identity)
        if parked is None:
            parked = self._parked[identity] = _Parked()
        if parked.size + len(data) > PARKED_BYTES and parked.size > 0:
            del self._parked[identity]
            self._deaf[identity] = time.monotonic()
            self._complain(f"otpy[{self.node}]: a client of the call gateway does not read its replies: "
                           f"{parked.size + len(data)} bytes were dropped, and its calls are for {DEAF_FOR_S:.0f} s")
            return
        parked.replies.append(data)
        parked.size += len(data)

    def _unpark(self) -> None:
        now = time.monotonic()
        for identity in list(self._parked):
            parked = self._parked[identity]
            while parked.replies:
                sent = self._put(identity, parked.replies[0])
                if sent is False:
                    break
                parked.size -= len(parked.replies.popleft())
                parked.since = now
            if not parked.replies:
                del self._parked[identity]
            elif now - parked.since > STUCK_S:  # nothing of it left for so long: it does not read
                del self._parked[identity]
                self._deaf[identity] = now
                self._complain(f"otpy[{self.node}]: a client of the call gateway read nothing for {STUCK_S:.0f} s: "
                               f"{parked.size} bytes of its replies were dropped, and its calls are for "
                               f"{DEAF_FOR_S:.0f} s")

    def _is_deaf(self, identity: bytes) -> bool:
        now = time.monotonic()
        for old in [i for i, since in self._deaf.items() if now - since > DEAF_FOR_S]:
            del self._deaf[old]
        return identity in self._deaf


class _Parked:
    __slots__ = ("replies", "size", "since")

    def __init__(self) -> None:
        self.replies: collections.deque[bytes] = collections.deque()
        self.size, self.since = 0, time.monotonic()


class _Stopping(CallError):
    pass


_KINDS: tuple[tuple[type, str], ...] = (
    (NoSuchAgent, "no_such_agent"), (AgentCrashed, "crashed"), (CallTimeout, "timeout"), (Overloaded, "overloaded"),
    (RemoteError, "raised"), (Unencodable, "unencodable"), (BadRequest, "bad_request"), (_Stopping, "stopping"))


def failure_of(call_id: int, error: BaseException) -> RemoteFailed:
    """The typed answer of a local call's error."""
    for kind_type, kind in _KINDS:
        if isinstance(error, kind_type):
            break
    else:
        kind = "error"
    if isinstance(error, RemoteError):
        return RemoteFailed(call_id=call_id, kind=kind, message=error.remote_message, error_type=error.error_type,
                            traceback=error.remote_traceback)
    return RemoteFailed(call_id=call_id, kind=kind, message=str(error))


class _Relay:
    """A relayed call's outcome, as the engine sets it (``BlockingResult``'s interface): sent back
    to its client at once, from the gateway's thread."""

    __slots__ = ("gateway", "identity", "call_id", "finished")

    def __init__(self, gateway: CallGateway, identity: bytes, call_id: int) -> None:
        self.gateway, self.identity, self.call_id, self.finished = gateway, identity, call_id, False

    def done(self) -> bool:
        return self.finished

    def set_result(self, outputs: dict[str, Any]) -> None:
        if not self.finished:
            self.finished = True
            self.gateway._done(self, RemoteReply(call_id=self.call_id, outputs=outputs))

    def set_exception(self, error: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.gateway._done(self, failure_of(self.call_id, error))
