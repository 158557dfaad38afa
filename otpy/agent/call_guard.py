"""Who serves an agent's socket while its one call runs on the call loop's own thread.

With ``concurrency = 1`` the loop's thread runs ``forward`` itself: a call is taken, run and
answered on one thread, with no hand-off (each cost a thread wake-up and a GIL hand-off).
The socket must still be served while a call runs: later calls are taken or answered
``overloaded`` at once, a SIGTERM sends the drain notice at once. A ``RunGuard`` does that:
its thread ticks every ``TICK_S`` while calls run (and sleeps, parked, once they stop); a call
still running at the next tick (it has run at least one tick) makes it take the socket and
serve it (``serve(give_back)``) until the loop's thread wants it back.

The socket belongs to whoever holds ``socket`` (a lock: the hand-over is a memory barrier, as
ZeroMQ asks for a socket that changes threads). The loop's thread holds it but while a call
runs (``begin``/``end``); the guard takes it only while a call runs, and gives it back as soon
as ``give_back`` is readable. A call shorter than a tick costs the loop's thread a lock release
and an uncontended acquire.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

TICK_S = 0.001  # a call running this long (to twice this) has its socket served by the guard
PARK_AFTER_TICKS = 20  # ticks that saw no call running before the guard sleeps until the next call (a
# sparse call costs the guard this many wake-ups; steady calls keep it ticking, not woken per call)


class RunGuard:
    """The socket's lock and the guard thread of one call loop (see the module's docstring)."""

    def __init__(self, serve: Callable[[int], None]) -> None:
        self.serve = serve  # run by the guard holding the socket; returns once its fd argument is readable
        self.socket = threading.Lock()
        self.socket.acquire()  # the loop's thread owns the socket but while a call runs
        self.give_back = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.running = False  # a call runs on the loop's thread
        self.runs = 0  # calls begun: the guard tells a long call from a new one
        self.parked = True  # the guard sleeps on ``unpark`` (no call ran for a while, or none yet)
        self.unpark = threading.Lock()
        self.unpark.acquire()
        self.state = threading.Lock()  # parking and unparking, never on a call's way
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the guard's thread (once)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._watch, daemon=True, name="otpy-call-guard")
            self.thread.start()

    def begin(self) -> None:
        """The loop's thread starts a call: the socket is free for the guard until ``end``."""
        self.runs += 1
        self.running = True
        self.socket.release()
        if self.parked:
            with self.state:
                if self.parked:
                    self.parked = False
                    self.unpark.release()

    def end(self) -> None:
        """The call returned: the socket is the loop's thread's again (the guard hands it back)."""
        self.running = False
        if not self.socket.acquire(blocking=False):
            os.eventfd_write(self.give_back, 1)
            self.socket.acquire()

    def _watch(self) -> None:
        seen, idle = -1, 0
        self.unpark.acquire()  # parked until the first call begins
        while True:
            time.sleep(TICK_S)
            if not self.running:
                idle += 1
                if idle >= PARK_AFTER_TICKS:
                    idle = 0
                    with self.state:
                        if self.running:
                            continue
                        self.parked = True
                    self.unpark.acquire()  # ``begin`` releases it
                continue
            idle = 0
            runs = self.runs
            if runs != seen:  # begun since the last tick: it may be short
                seen = runs
                continue
            if not self.socket.acquire(blocking=False):
                continue  # it ended just now
            try:
                if self.running and self.runs == runs:
                    self.serve(self.give_back)
            finally:
                self.socket.release()
