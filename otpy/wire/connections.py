"""A cap on the connections a node's listening control sockets accept.

Why: every connection a ROUTER accepts takes a file descriptor of the node. libzmq 4.3.5 aborts
the whole process when ``accept`` fails with EMFILE on an ipc listener
(``Too many open files (src/ipc_listener.cpp:297)``); on a TCP listener it survives, but the
descriptors are gone, and the next child start fails for want of pipes. No socket option caps
connections, so a socket monitor counts them (``EVENT_ACCEPTED`` / ``EVENT_DISCONNECTED``).
The reset (ipc listeners, below): at the cap the listener is unbound, which makes libzmq close
every connection accepted there (there is no way to refuse only the next one), and bound again
``REBIND_AFTER_S`` later: clients' DEALERs reconnect by themselves; a request in flight then is
lost (its client times out). The node keeps its descriptors, and serving.
Peers that connect and never complete their handshake (an idle socket, a client without the
CURVE keys) are dropped by ZeroMQ after ``HANDSHAKE_IVL_MS``, which frees their slots.

Two rules, one per kind of listener:

- TCP listeners (the control endpoint ``control_tcp``, the call gateway on its port + 1, the
  events PUB on its port + 2) take the young-first rule (``YoungFirst``): anyone who can reach
  the port can connect, with no key, so the reset would let a key-less party cut every
  authorized client (and fail their calls in flight) at will. Every connection's descriptor is
  tracked from the monitor's ACCEPTED/DISCONNECTED events (their value is the descriptor); at
  the cap, only the connections accepted less than ``YOUNG_S`` ago are shut down (a duplicate of
  the descriptor, checked to still be a socket of this listener, is shut down: libzmq then
  closes it as a peer that left). A peer without an authorized CURVE key is never older: libzmq
  drops it at ``HANDSHAKE_IVL_MS``. So the older ones are authenticated, and stay; a flood costs
  new clients a retry, never an established one its link.
- ipc listeners (the node's control and events sockets, an agent's, the registry's events) keep
  the reset (``ConnectionCap``, ``AgentConnectionCap``, ``ThreadConnectionCap``): their peers
  show no key (the socket file's 0600 mode is the check), so an old connection proves nothing;
  with young-first a local flood that completes ZMTP at once would hold the slots for good and
  lock the owner's own CLI out, where a reset lets everyone reconnect. And young-first frees
  nothing when every connection is old, where the reset always frees them all: on ipc, where
  EMFILE aborts the process, the reset is the guard that always works.
"""

from __future__ import annotations

import logging
import os
import resource
import struct
import threading
import time
from typing import Any, Callable

import zmq

log = logging.getLogger("otpy")

MAX_CONNECTIONS = 1024  # per listener, at most
HANDSHAKE_IVL_MS = 5000  # a peer that has not completed its ZMTP (and CURVE) handshake by then is dropped
YOUNG_S = HANDSHAKE_IVL_MS / 1000 + 1  # a connection this young may not have shown a key yet
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


def _open_monitor(sock: zmq.Socket, context: zmq.asyncio.Context, owner: object) -> tuple[zmq.Socket, zmq.Socket]:
    """The accept/disconnect events of ``sock``: an asyncio PAIR of ``context`` to await, and the
    same socket as a plain one, read without waiting (``owner`` names the inproc address)."""
    address = f"inproc://otpy-connections-{id(owner)}"
    sock.monitor(address, _EVENTS)
    monitor = context.socket(zmq.PAIR)
    monitor.connect(address)
    return monitor, zmq.Socket.shadow(monitor.underlying)


async def _watch(name: str, endpoint: str, step: Callable[[], Any]) -> None:
    """Await ``step()`` (one batch of a listener's events) until cancelled; a bad event or a failed
    (un)bind is logged, never the end; a closed socket or context ends it."""
    import asyncio  # the node's (this module is imported by the zygote too, which has no loop)

    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                return
            log.warning("otpy[%s]: connection monitor of %s: %s", name, endpoint, exc)
            await asyncio.sleep(0.1)
        except Exception as exc:
            log.warning("otpy[%s]: connection monitor of %s: %r", name, endpoint, exc)


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
        self.monitor, self.pending = _open_monitor(sock, context, self)

    async def run(self) -> None:
        """Count until cancelled; a bad event or a failed (un)bind is logged, never the end."""
        await _watch(self.name, self.endpoint, self._step)

    async def _step(self) -> None:
        import asyncio  # the node's (this module is imported by the zygote too, which has no loop)

        self.tally.on(_event_of(await self.monitor.recv_multipart()))
        for event in _events(self.pending):  # the I/O thread accepts faster than one per wake-up
            self.tally.on(event)
        if self.rebinding is None and self.tally.over():
            self.rebinding = asyncio.ensure_future(self._reset())

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


class YoungFirst:
    """The young-first rule of a TCP listener (see the module's docstring): at most ``cap``
    connections; at the cap (or the descriptors' danger line), those accepted less than
    ``YOUNG_S`` ago are shut down, the older ones (authenticated) stay. Feed it the monitor's
    messages (``on``), then ``check``. No I/O of its own: ``YoungFirstCap`` runs it in a
    thread's poll loop (the call gateway), ``AsyncYoungFirstCap`` in the node's asyncio loop."""

    def __init__(self, sock: zmq.Socket, cap: int) -> None:
        self.tally = Tally(cap)
        self.accepted: dict[int, float] = {}  # descriptor of each connection -> when it was accepted
        self.local = _local_address(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.shed = 0  # connections shut down, in all

    def on(self, frames: list[bytes], now: float) -> None:
        event = _event_of(frames)
        fd = struct.unpack("=hi", frames[0])[1]
        if event == zmq.EVENT_ACCEPTED:
            self.accepted[fd] = now
        elif event == zmq.EVENT_DISCONNECTED:
            self.accepted.pop(fd, None)

    def check(self, now: float) -> str | None:
        """At the cap, shut the young ones down; then the line to log, else None."""
        self.tally.count = len(self.accepted)
        if not self.tally.over():
            return None
        young = [fd for fd, since in self.accepted.items() if now - since < YOUNG_S]
        for fd in young:
            del self.accepted[fd]
            self.shed += _shut_down(fd, self.local)
        for fd in [fd for fd in self.accepted if not _shut_down(fd, self.local, really=False)]:
            del self.accepted[fd]  # gone untold (an unbind, a lost event): no slot of anyone's
        return (f"{len(young) + len(self.accepted)} connections, its most: the {len(young)} accepted in the "
                f"last {YOUNG_S:g} s are closed, the others stay")

    def forget(self) -> None:
        """After an unbind (which closes every connection without telling the monitor)."""
        self.accepted.clear()
        self.tally.count = 0


class YoungFirstCap(YoungFirst):
    """``YoungFirst`` in a synchronous poll loop: ``monitor`` goes into the loop's poller,
    ``on_events()`` when it is readable; ``say`` gets the line of each shedding."""

    def __init__(self, sock: zmq.Socket, cap: int, say: Callable[[str], None], listener: str) -> None:
        super().__init__(sock, cap)
        self.sock, self.say, self.listener = sock, say, listener
        self.monitor = sock.get_monitor_socket(_EVENTS)

    def on_events(self) -> None:
        now = time.monotonic()
        while self.monitor.poll(0):
            self.on(self.monitor.recv_multipart(zmq.NOBLOCK), now)
        line = self.check(now)
        if line is not None:
            self.say(f"otpy: {self.listener}: {line}")

    def close(self) -> None:
        _stop_monitor(self.sock, self.monitor)


class AsyncYoungFirstCap(YoungFirst):
    """``YoungFirst`` in the node's asyncio loop (``run()`` until cancelled), as ``ConnectionCap``."""

    def __init__(self, sock: zmq.Socket, endpoint: str, cap: int, name: str, context: zmq.asyncio.Context) -> None:
        super().__init__(sock, cap)
        self.sock, self.endpoint, self.name = sock, endpoint, name
        self.monitor, self.pending = _open_monitor(sock, context, self)

    async def run(self) -> None:
        await _watch(self.name, self.endpoint, self._step)

    async def _step(self) -> None:
        frames = await self.monitor.recv_multipart()
        now = time.monotonic()
        self.on(frames, now)
        while self.pending.poll(0):
            self.on(self.pending.recv_multipart(zmq.NOBLOCK), now)
        line = self.check(now)
        if line is not None:
            log.warning("otpy[%s]: %s: %s", self.name, self.endpoint, line)

    def close(self) -> None:
        _stop_monitor(self.sock, self.monitor)


def node_cap(sock: zmq.Socket, endpoint: str, cap: int, bind: Callable[[], None], name: str,
             context: zmq.asyncio.Context) -> "ConnectionCap | AsyncYoungFirstCap":
    """The cap of one of the node's listeners, by its kind: young-first on TCP, the reset on ipc."""
    if endpoint.startswith("tcp://"):
        return AsyncYoungFirstCap(sock, endpoint, cap, name, context)
    return ConnectionCap(sock, endpoint, cap, bind, name, context)


def _local_address(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    return (host.removeprefix("::ffff:"), int(port))


def _shut_down(fd: int, local: tuple[str, int], really: bool = True) -> int:
    """Shut down the connection of descriptor ``fd`` (libzmq's, which then closes it as a peer that
    left) if it still is one accepted on ``local``; 1 if it was. ``really=False``: only tell."""
    import socket  # here: the zygote imports this module, and carries what it imports into every fork

    try:
        copy = os.dup(fd)
    except OSError:
        return 0  # closed meanwhile
    try:
        sock = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        return 0  # not a socket any more
    try:
        host, port = sock.getsockname()[:2]
        if port != local[1] or local[0] not in ("0.0.0.0", "::", "*", host.removeprefix("::ffff:")):
            return 0  # the descriptor is something else's by now
        if really:
            sock.shutdown(socket.SHUT_RDWR)
        return 1
    except (OSError, ValueError, TypeError):
        return 0
    finally:
        sock.close()  # the duplicate only


def _stop_monitor(sock: zmq.Socket, monitor: zmq.Socket) -> None:
    try:
        sock.disable_monitor()
    except zmq.ZMQError:
        pass
    monitor.close(linger=0)
