"""How a worker learns it must end: SIGTERM (or SIGINT, taken the same way), or its
configuration watcher asking for a restart with new values. Either wakes the serving loop
through one fd, so it never sleeps through one.

A stop signal is seen at once by whichever thread reads ``fd`` (Python's wakeup fd: the
C-level handler writes the signal's number there the moment it arrives), not only once
Python runs its handler on the main thread: with ``concurrency = 1`` the main thread runs
``forward``, and a call inside C code that releases the GIL (hashlib, numpy, a model's
forward pass) holds the handler back until it returns, while the call guard's thread,
reading ``fd``, must start the drain now (``drain`` sets ``requested``).
"""

from __future__ import annotations

import os
import select
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # a managed worker treats both as "stop, gracefully"


class Shutdown:
    """The worker's end, asked for and not yet done: why (``for_new_config``), and the fd
    that becomes readable when it is asked for (or any signal with a Python handler arrives)."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.requested = False
        self.for_new_config = False  # the end is a restart with new values (EXIT_CONFIG_CHANGED)
        self._caught: frozenset[int] = frozenset()  # the stop signals whose handler is ours

    def catch_sigterm(self) -> None:
        """SIGTERM and SIGINT request the end, each unless the program set its own disposition
        (in setup): SIG_DFL for SIGTERM, Python's ``default_int_handler`` (or SIG_DFL) for SIGINT."""
        signal.set_wakeup_fd(self._write_fd)
        caught = set()
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                signal.signal(sig, self._on_sigterm)
                caught.add(int(sig))
        self._caught = frozenset(caught)

    def _on_sigterm(self, signum, frame) -> None:
        """SIGTERM's or SIGINT's Python handler (on the main thread, once it runs Python code)."""
        for sig in {signum, *self._caught}:  # teardown runs once; a second stop signal changes nothing
            signal.signal(sig, signal.SIG_IGN)
        self._stop()

    def _stop(self) -> None:
        self.requested = True
        self.for_new_config = False  # asked to stop: the end is a shutdown, not a restart for new values

    def request_config_restart(self) -> None:
        """Drain and end like on SIGTERM, but exit with EXIT_CONFIG_CHANGED (the supervisor restarts us)."""
        self.for_new_config = self.requested = True
        try:
            os.write(self._write_fd, b"\0")  # wakes the serving loop
        except OSError:
            pass

    def drain(self) -> None:
        """Empty the fd; a stop signal's number read there requests the end at once (its Python
        handler, on the main thread, may run much later). Any thread may call it."""
        try:
            while data := os.read(self.fd, 512):
                if any(byte in self._caught for byte in data):
                    self._stop()
        except BlockingIOError:
            pass

    def wait(self) -> None:
        """Until the end is requested (a worker nobody can call: not run by a node).

        A SIGTERM the program chose to ignore (``SIG_IGN`` in setup) never ends the wait: the
        node then kills the child once its ``shutdown`` time is up.
        """
        while not self.requested:
            select.select([self.fd], [], [])  # not signal.pause(): it can miss a signal
            self.drain()
