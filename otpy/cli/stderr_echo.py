"""The foreground node's echo on stderr: children's lines and the ``otpy`` logger, written by one
thread, never by the node's loop.

A terminal, or a pipe that nobody reads (``otpy start t.toml |& less`` left paused, a stalled log
shipper), must not stop the node: a blocking ``write`` on the loop would stop the control socket,
the supervision and the log files with it. The loop only puts the lines in a bounded queue
(``logging.handlers.QueueHandler``); a ``QueueListener`` thread writes them. When the queue is
full, lines are dropped and counted, and one note says how many once there is room again. The log
files are written by the loop, before the echo: they keep every line. When stderr is closed
(EPIPE: ``otpy start t.toml 2>&1 | head``), the echo stops for good, with one warning in
``node.log``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import select
import threading

log = logging.getLogger("otpy")

QUEUE_LINES = 10_000  # lines waiting for stderr; beyond, they are dropped (the files have them)


class FdWriter(logging.Handler):
    """Writes each record's text, and a newline, to a copy of file descriptor ``fd``, unbuffered:
    nothing is left to flush at exit, and a write blocked on a full pipe blocks this thread only.
    The first error (a closed pipe) ends the echo, said once."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = os.dup(fd)
        self.broken: OSError | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.broken is not None:
            return
        data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        try:
            while data:
                try:
                    data = data[os.write(self.fd, data):]
                except BlockingIOError:  # a non-blocking stderr that is full: wait for room
                    select.select([], [self.fd], [])
        except OSError as exc:
            self.broken = exc
            log.warning("otpy: stopped echoing to stderr (%s); the log files keep every line",
                        exc.strerror or exc)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        super().close()


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A ``QueueHandler`` that never waits: a record that finds the queue full is dropped and
    counted; the count is put as one note before the next record that fits."""

    def __init__(self, lines: queue.Queue) -> None:
        super().__init__(lines)
        self.dropped = 0
        self._count_lock = threading.Lock()

    def enqueue(self, record: logging.LogRecord) -> None:
        with self._count_lock:
            if self.dropped and not self._put(_note(self.dropped)):
                self.dropped += 1
                return
            self.dropped = 0
            if not self._put(record):
                self.dropped += 1

    def echo(self, text: str) -> None:
        """A line already formatted (a child's, with its prefix)."""
        self.enqueue(logging.makeLogRecord({"msg": text, "levelno": logging.INFO, "levelname": "INFO"}))

    def _put(self, record: logging.LogRecord) -> bool:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            return False
        return True


def _note(dropped: int) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": f"otpy: {dropped} lines not echoed to stderr (they are in the log files)",
                                  "levelno": logging.WARNING, "levelname": "WARNING"})


class StderrEcho:
    """The queue, its handler (for the loop and the logger) and the writer thread, on ``fd``."""

    def __init__(self, fd: int = 2, size: int = QUEUE_LINES) -> None:
        lines: queue.Queue = queue.Queue(size)
        self.handler = DroppingQueueHandler(lines)
        self.writer = FdWriter(fd)
        self.listener = logging.handlers.QueueListener(lines, self.writer)
        self.listener.start()

    def echo(self, text: str) -> None:
        self.handler.echo(text)

    def close(self, within: float = 2.0) -> None:
        """Write what is queued, for at most ``within`` seconds (a stderr nobody reads must not
        hold the exit); the note of lines dropped last is put first."""
        with self.handler._count_lock:
            if self.handler.dropped and self.handler._put(_note(self.handler.dropped)):
                self.handler.dropped = 0
        thread = self.listener._thread
        if thread is None:
            return
        try:
            self.listener.queue.put(self.listener._sentinel, timeout=within)
        except queue.Full:
            return  # the writer is stuck on stderr: a daemon thread, left behind at exit
        thread.join(within)
        if not thread.is_alive():
            self.listener._thread = None
            self.writer.close()
