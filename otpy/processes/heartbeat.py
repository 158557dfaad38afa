"""The node's heartbeat on its zygote: a stopped or hung zygote is noticed and replaced.

The zygote is single threaded. If it is stopped (SIGSTOP) or hung (a program module whose
import never returns), nobody reaps children or answers spawn requests, and the control
plane waits for ever: ``terminate_child`` on the stop, ``status`` behind it, and a child
killed meanwhile shows ``running``. So the node pings the zygote over its socket (a
``Ping`` message; the zygote answers ``Pong`` between two messages) and expects the answer
within ``TIMEOUT`` s. The next ping goes ``INTERVAL`` s after a pong: an idle node and its
zygote wake once a second for it, a stopped zygote is noticed within INTERVAL + TIMEOUT.

A zygote that works on a spawn request may rightly be busy for long (importing a program's
module): while a request is pending, the deadline is moved to that request's start
deadline, unless the zygote is seen stopped (``/proc``: state ``T``), which no work explains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import asyncio

INTERVAL = 1.0  # between a pong and the next ping
TIMEOUT = 2.0  # for a pong, unless a spawn request is pending


class Heartbeat:
    """Pings through ``send()``; calls ``on_stuck(waited_s)`` once when a pong is overdue.

    ``busy_until()`` is the loop time until which the zygote may rightly not answer (the
    latest start deadline of the pending spawn requests; 0 if none). ``stopped()`` says
    whether the zygote is stopped now, which ends that grace at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, send: Callable[[], None],
                 on_stuck: Callable[[float], None], busy_until: Callable[[], float],
                 stopped: Callable[[], bool], interval: float = INTERVAL, timeout: float = TIMEOUT) -> None:
        self._loop = loop
        self._send = send
        self._on_stuck = on_stuck
        self._busy_until = busy_until
        self._stopped = stopped
        self.interval = interval
        self.timeout = timeout
        self._sent_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._ping()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pong(self) -> None:
        """The zygote answered: it is alive; the next ping in ``interval`` s."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._loop.call_later(self.interval, self._ping)

    def _ping(self) -> None:
        self._sent_at = self._loop.time()
        self._send()  # a full socket drops it: the zygote is not reading, the deadline decides
        self._timer = self._loop.call_later(self.timeout, self._overdue)

    def _overdue(self) -> None:
        busy = self._busy_until()
        if busy > self._loop.time() and not self._stopped():
            self._timer = self._loop.call_at(busy, self._overdue)
            return
        self._timer = None
        self._on_stuck(self._loop.time() - self._sent_at)
