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

import logging
import os
import resource
import struct
import threading
import time
from typing import Callable

import zmq

log = logging.getLogger("otpy")

MAX_CONNECTIONS = 1024  # per listener, at most
HANDSHAKE_IVL_MS = 5000  # a peer that has not completed its ZMTP (and CURVE) handshake by then is dropped
REBIND_AFTER_S = 0.05  # between the unbind that closes every connection and the bind again
MAX_PAUSE_S = 1.0  # the longest the listener stays away after a reset
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


def connection_cap(listeners: int) -> int:
    """How many connections each of ``listeners`` may hold: a quarter of the descriptors still
    free under the soft RLIMIT_NOFILE, shared out, at most ``MAX_CONNECTIONS`` (at least 8).
    The rest is for the node's children (three pipes each), everything else, and the connections
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


class Tally:
    """The count of one listener's connections, and when to reset it: at ``cap`` connections,
    or when the descriptors in use pass the danger line (``soft limit - reserve``) whatever
    the count says (the monitor's events lag behind libzmq's accepts)."""

    def __init__(self, cap: int) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        reserve = max(16, (soft - fds_in_use()) // 4)
        self.cap, self.count = cap, 0
        self.danger = soft - reserve if soft != resource.RLIM_INFINITY else None
        self.pause, self.last_reset = REBIND_AFTER_S, 0.0

    def on(self, event: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            self.count += 1
        elif event == zmq.EVENT_DISCONNECTED:
            self.count = max(0, self.count - 1)

    def over(self) -> bool:
        return self.count >= self.cap or (self.danger is not None and fds_in_use() > self.danger)

    def settled(self) -> bool:
        """The closed connections' descriptors are free again (with room for ``cap`` more)."""
        return self.danger is None or fds_in_use() <= self.danger - self.cap

    def next_pause(self) -> float:
        """``REBIND_AFTER_S``, doubled for each reset less than a second after the last one."""
        now = time.monotonic()
        self.pause = min(MAX_PAUSE_S, self.pause * 2) if now - self.last_reset < 1.0 else REBIND_AFTER_S
        self.last_reset = now
        return self.pause


def _event_of(frames: list[bytes]) -> int:
    """The event id of one monitor message (16 bit id, 32 bit value, then the endpoint). Not
    pyzmq's ``parse_monitor_message``: its module imports ``zmq.asyncio`` (asyncio, ssl...),
    which the zygote would then carry into every fork, and an agent import on its first event."""
    if len(frames) != 2 or len(frames[0]) != 6:
        raise RuntimeError(f"invalid monitor event message: {frames!r}")
    return struct.unpack("=hi", frames[0])[0]


def _events(monitor: zmq.Socket) -> list[int]:
    """Every event waiting on a monitor socket (a sync one), without waiting."""
    events = []
    while monitor.poll(0):
        events.append(_event_of(monitor.recv_multipart(zmq.NOBLOCK)))
    return events


class ConnectionCap:
    """Watches one bound listener of the node's asyncio loop; at its tally's limit, closes
    every connection and binds again."""

    def __init__(self, sock: zmq.Socket, endpoint: str, cap: int, bind: Callable[[], None],
                 name: str, context: zmq.asyncio.Context) -> None:
        """``sock`` may be a plain socket of ``context``'s underlying context (the events PUB):
        its monitor is read as an asyncio socket of ``context`` either way."""
        self.sock, self.endpoint, self.bind, self.name = sock, endpoint, bind, name
        self.tally = Tally(cap)
        self.rebinding: asyncio.Task | None = None
        address = f"inproc://otpy-connections-{id(self)}"
        sock.monitor(address, _EVENTS)
        self.monitor = context.socket(zmq.PAIR)
        self.monitor.connect(address)
        self.pending = zmq.Socket.shadow(self.monitor.underlying)  # the same socket, read without waiting

    async def run(self) -> None:
        """Count until cancelled; a bad event or a failed (un)bind is logged, never the end."""
        import asyncio  # the node's (this module is imported by the zygote too, which has no loop)

        while True:
            try:
                self.tally.on(_event_of(await self.monitor.recv_multipart()))
                for event in _events(self.pending):  # the I/O thread accepts faster than one per wake-up
                    self.tally.on(event)
                if self.rebinding is None and self.tally.over():
                    self.rebinding = asyncio.ensure_future(self._reset())
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                    return
                log.warning("otpy[%s]: connection monitor of %s: %s", self.name, self.endpoint, exc)
                await asyncio.sleep(0.1)
            except Exception as exc:
                log.warning("otpy[%s]: connection monitor of %s: %r", self.name, self.endpoint, exc)

    async def _reset(self) -> None:
        """Unbind (libzmq then closes every connection it accepted there, without telling the
        monitor), wait until its I/O thread has freed their descriptors, bind again, count from
        zero. Resets that follow each other closely wait longer each time (up to ``MAX_PAUSE_S``):
        a flood that refills the cap at once gets a listener that is mostly away."""
        import asyncio

        try:
            log.warning("otpy[%s]: %d connections to %s, its most: all of them are closed",
                        self.name, self.tally.count, self.endpoint)
            self.sock.unbind(self.endpoint)
            started = time.monotonic()
            await asyncio.sleep(self.tally.next_pause())
            while not self.tally.settled() and time.monotonic() - started < MAX_PAUSE_S:
                await asyncio.sleep(REBIND_AFTER_S)
            self.tally.count = 0
            self.bind()
        except Exception as exc:  # the next accepted connection tries again
            log.error("otpy[%s]: could not reset %s: %r", self.name, self.endpoint, exc)
        finally:
            self.rebinding = None

    def close(self) -> None:
        if self.rebinding is not None:
            self.rebinding.cancel()
        _stop_monitor(self.sock, self.monitor)


class AgentConnectionCap:
    """The same for an agent's ROUTER, in its synchronous call loop: ``monitor`` goes into the
    loop's poller, ``on_events()`` when it is readable. A reset blocks the loop (at most about
    ``MAX_PAUSE_S``): running calls go on in their threads, their replies wait."""

    def __init__(self, sock: zmq.Socket, cap: int, bind: Callable[[], None],
                 say: Callable[[str], None], listener: str = "the agent's socket") -> None:
        """``listener`` names the socket in the lines ``say`` gets."""
        self.sock, self.bind, self.say, self.listener = sock, bind, say, listener
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)  # a spare's: its own path
        self.tally = Tally(cap)
        self.monitor = sock.get_monitor_socket(_EVENTS)

    def on_events(self) -> None:
        for event in _events(self.monitor):
            self.tally.on(event)
        if self.tally.over():
            self._reset()

    def close(self) -> None:
        _stop_monitor(self.sock, self.monitor)

    def _reset(self) -> None:
        self.say(f"otpy: {self.tally.count} connections to {self.listener}, its most: all of them are closed")
        try:
            self.sock.unbind(self.endpoint)
            started = time.monotonic()
            time.sleep(self.tally.next_pause())
            while not self.tally.settled() and time.monotonic() - started < MAX_PAUSE_S:
                time.sleep(REBIND_AFTER_S)
            self.tally.count = 0
            self.bind()
            self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except Exception as exc:  # the next event tries again
            self.say(f"otpy: could not reset {self.listener}: {exc!r}")


class ThreadConnectionCap:
    """The same for a listener that several threads use under ``lock`` (the registry's events
    PUB): a thread of its own waits on the monitor (no timer), and a reset holds ``lock``, so
    the socket is never used by two threads at once. ``close()`` wakes the thread and ends it."""

    def __init__(self, sock: zmq.Socket, cap: int, bind: Callable[[], None], lock: threading.Lock,
                 say: Callable[[str], None], listener: str = "the registry's events socket") -> None:
        self.lock = lock
        self.cap = AgentConnectionCap(sock, cap, bind, say, listener)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._watch, name="otpy-connection-cap", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        poller = zmq.Poller()
        poller.register(self.cap.monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._wake_r in ready:
                return
            try:
                with self.lock:
                    self.cap.on_events()
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                    return
                self.cap.say(f"otpy: connection monitor of {self.cap.listener}: {exc}")

    def close(self) -> None:
        os.write(self._wake_w, b"\0")
        self._thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)
        with self.lock:
            self.cap.close()


def _stop_monitor(sock: zmq.Socket, monitor: zmq.Socket) -> None:
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        pass
    monitor.close(linger=0)
