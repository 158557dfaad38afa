"""A cap on the connections a node's listening control sockets accept.

Why: every connection a ROUTER accepts takes a file descriptor of the node. libzmq 4.3.5 aborts
the whole process when ``accept`` fails with EMFILE on an ipc listener
(``Too many open files (src/ipc_listener.cpp:297)``); on a TCP listener it survives, but the
descriptors are gone, and the next child start fails for want of pipes. No socket option caps
connections, so a socket monitor counts them (``EVENT_ACCEPTED`` / ``EVENT_DISCONNECTED``);
at the cap the listener is unbound, which makes libzmq close every connection accepted there
(there is no way to refuse only the next one), and bound again ``REBIND_AFTER_S`` later:
clients' DEALERs reconnect by themselves; a request in flight then is lost (its client times
out). The node keeps its descriptors, and serving.
Peers that connect and never complete their handshake (an idle socket, a client without the
CURVE keys) are dropped by ZeroMQ after ``HANDSHAKE_IVL_MS``, which frees their slots.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from typing import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("otpy")

MAX_CONNECTIONS = 1024  # per listener, at most
HANDSHAKE_IVL_MS = 5000  # a peer that has not completed its ZMTP (and CURVE) handshake by then is dropped
REBIND_AFTER_S = 0.05  # between the unbind that closes every connection and the bind again
MAX_PAUSE_S = 1.0  # the longest the listener stays away after a reset
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


def connection_cap(listeners: int) -> int:
    """How many connections each of ``listeners`` may hold: a quarter of the descriptors still
    free under the soft RLIMIT_NOFILE, shared out, at most ``MAX_CONNECTIONS`` (at least 8).
    The rest is for the node's children (two pipes each), everything else, and the connections
    libzmq accepts between the cap and the moment its listener is gone (the monitor's events
    reach the node's loop later than libzmq's I/O thread accepts: ~150 under a fast flood)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    free = soft - fds_in_use()
    return max(8, min(MAX_CONNECTIONS, free // 4 // max(1, listeners)))


def fds_in_use() -> int:
    return len(os.listdir("/proc/self/fd"))


def prepare(sock: zmq.Socket) -> None:
    """Socket options every capped listener gets (before it binds)."""
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)


class ConnectionCap:
    """Watches one bound listener; at ``cap`` connections, closes them all and binds again."""

    def __init__(self, sock: zmq.asyncio.Socket, endpoint: str, cap: int, bind: Callable[[], None],
                 name: str) -> None:
        self.sock, self.endpoint, self.cap, self.bind, self.name = sock, endpoint, cap, bind, name
        self.count = 0
        self.rebinding: asyncio.Task | None = None
        self.calm = fds_in_use() + cap  # rebind once no more descriptors than this are in use
        self.pause, self.last_reset = REBIND_AFTER_S, 0.0
        self.monitor = sock.get_monitor_socket(_EVENTS)
        self.pending = zmq.Socket.shadow(self.monitor.underlying)  # the same socket, read without waiting

    async def run(self) -> None:
        """Count until cancelled; a bad event or a failed (un)bind is logged, never the end."""
        while True:
            try:
                self._on(parse_monitor_message(await self.monitor.recv_multipart())["event"])
                while self.pending.poll(0):  # the I/O thread accepts faster than one event per wake-up
                    self._on(parse_monitor_message(self.pending.recv_multipart(zmq.NOBLOCK))["event"])
                self._check()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                    return
                log.warning("otpy[%s]: connection monitor of %s: %s", self.name, self.endpoint, exc)
                await asyncio.sleep(0.1)
            except Exception as exc:
                log.warning("otpy[%s]: connection monitor of %s: %r", self.name, self.endpoint, exc)

    def _on(self, event: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            self.count += 1
        elif event == zmq.EVENT_DISCONNECTED:
            self.count = max(0, self.count - 1)


    def _check(self) -> None:
        """Reset at the cap, or when the descriptors in use say so (the count lags behind)."""
        if self.rebinding is None and (self.count >= self.cap or fds_in_use() > self.calm):
            self.rebinding = asyncio.ensure_future(self._reset())

    async def _reset(self) -> None:
        """Unbind (libzmq then closes every connection it accepted there, without telling the
        monitor), wait until its I/O thread has freed their descriptors, bind again, count from
        zero. Resets that follow each other closely wait longer each time (up to ``MAX_PAUSE_S``):
        a flood that refills the cap at once gets a listener that is mostly away."""
        try:
            log.warning("otpy[%s]: %d connections to %s, its most: all of them are closed",
                        self.name, self.count, self.endpoint)
            self.sock.unbind(self.endpoint)
            now = time.monotonic()
            self.pause = min(MAX_PAUSE_S, self.pause * 2) if now - self.last_reset < 1.0 else REBIND_AFTER_S
            self.last_reset = now
            await asyncio.sleep(self.pause)
            while fds_in_use() > self.calm and time.monotonic() - now < MAX_PAUSE_S:
                await asyncio.sleep(REBIND_AFTER_S)
            self.count = 0
            self.bind()
        except Exception as exc:  # the next accepted connection tries again
            log.error("otpy[%s]: could not reset %s: %r", self.name, self.endpoint, exc)
        finally:
            self.rebinding = None

    def close(self) -> None:
        if self.rebinding is not None:
            self.rebinding.cancel()
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
