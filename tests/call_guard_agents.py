"""Programs for tests/test_call_guard.py."""

from __future__ import annotations

import os
import time

import otpy


class Gate(otpy.Program):
    """Answers at once, or (given ``mark`` and ``release``) writes ``mark`` and runs until the
    file ``release`` exists (at most 20 s)."""

    def forward(self, mark: str = "", release: str = "", **inputs):
        if mark:
            with open(mark, "w") as file:
                file.write(str(os.getpid()))
            deadline = time.monotonic() + 20
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.01)
        return {**inputs, "pid": os.getpid()}


class Timed(otpy.Program):
    """Sleeps ``seconds``; answers with ``i``, when it ran, on which thread, and whether that is
    the thread that ran ``setup``."""

    def setup(self, args, config) -> None:
        import threading

        self.setup_thread = threading.get_ident()

    def forward(self, seconds: float = 0.0, i: int = 0):
        import threading

        start = time.monotonic()
        time.sleep(seconds)
        return {"i": i, "start": start, "end": time.monotonic(), "thread": threading.current_thread().name,
                "setup_thread": threading.get_ident() == self.setup_thread}


def _wait_for(release: str) -> None:
    deadline = time.monotonic() + 20
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)


class InC(otpy.Program):
    """Given ``fifo``: writes ``mark``, then waits inside one C call that releases the GIL and
    holds off Python's signal handlers (as hashlib or numpy on a big buffer do: a ``read`` through
    ctypes, this thread blocking SIGTERM and SIGINT so no EINTR cuts it short) until a byte
    arrives on the FIFO ``fifo``. Else answers at once."""

    def forward(self, mark: str = "", fifo: str = "", **inputs):
        if fifo:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(fifo, os.O_RDWR)  # a FIFO opened for both ends: no wait for a writer
            stop = {signal.SIGTERM, signal.SIGINT}
            old = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
            try:
                with open(mark, "w") as file:
                    file.write(str(os.getpid()))
                libc.read(fd, ctypes.create_string_buffer(1), 1)
            finally:
                os.close(fd)
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return {**inputs, "pid": os.getpid()}


class Grows(otpy.Program):
    """Given ``mib``: keeps that much more memory, writes ``mark`` and waits for ``release``
    (the calls sent meanwhile are taken and wait behind it). Answers with its pid."""

    def setup(self, args, config) -> None:
        self.kept: list[bytearray] = []

    def forward(self, mib: int = 0, mark: str = "", release: str = "", **inputs):
        if mib:
            block = bytearray(mib * 2**20)
            block[::4096] = b"\1" * len(block[::4096])  # touched: resident
            self.kept.append(block)
        if mark:
            with open(mark, "w") as file:
                file.write(str(os.getpid()))
            _wait_for(release)
        return {**inputs, "pid": os.getpid()}


class TornDown(Gate):
    """A ``Gate`` whose ``teardown`` writes the file ``args["torn_down"]``."""

    def setup(self, args, config) -> None:
        self.torn_down = args["torn_down"]

    def teardown(self) -> None:
        with open(self.torn_down, "w") as file:
            file.write(str(os.getpid()))
