"""How a worker learns it must end: SIGTERM, or its configuration watcher asking for a
restart with new values. Either wakes the serving loop through one fd, so it never sleeps
through one.

SIGTERM sets ``requested`` and writes a byte to ``fd`` (Python's wakeup fd), which the loop
polls; the loop sees the flag then, never mid-operation.
"""

from __future__ import annotations

import os
import select
import signal


class Shutdown:
    """The worker's end, asked for and not yet done: why (``for_new_config``), and the fd
    that becomes readable when it is asked for (or any signal with a Python handler arrives)."""

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.requested = False
        self.for_new_config = False  # the end is a restart with new values (EXIT_CONFIG_CHANGED)

    def catch_sigterm(self) -> None:
        """SIGTERM requests the end, unless the program set its own disposition (in setup)."""
        signal.set_wakeup_fd(self._write_fd)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # teardown runs once
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
        """Empty the fd (the flag, not the bytes, says what happened)."""
        try:
            while os.read(self.fd, 512):
                pass
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
