"""One child process of a node, as its ``ProcessManager`` sees it: a handle on its pid, its
READY, its notify pipe (and ``NOTIFY_SOCKET``, ``processes.sd_notify``), its death.

Made only by ``ProcessManager.spawn``; the manager feeds it the zygote's reports
(``_on_spawned``, ``_on_exited``, ``_on_refused``, ``_on_stale``, ``_on_lost``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Callable

from ..supervision.exit import ExitReason, from_wait_status
from ..specs.model import ChildSpec, Shutdown
from .linux import kill_group, proc_stat, signal_quietly
from .sd_notify import NotifySocket
from .zygote_link import LineReader

if TYPE_CHECKING:
    from .zygote_link import ZygoteLink

log = logging.getLogger("otpy")

READY_LINES = frozenset({"READY", "READY=1", ""})
STATUS_LIMIT = 200  # characters of a child's STATUS= kept for its status line


class ChildProcess:
    """A handle on one child process, made by ``ProcessManager.spawn``.

    ``exited`` resolves with the ExitReason once the process is dead (reaped).
    ``started_at`` is ``time.monotonic()`` at READY.
    """

    def __init__(self, spec: ChildSpec, loop: asyncio.AbstractEventLoop, notify_fd: int) -> None:
        self.id = spec.id
        self.spec = spec
        self.pid = 0
        self.started_at: float | None = None
        self.start_time: int | None = None  # /proc/<pid>/stat field 22: tells a reused pid
        self.exited: asyncio.Future[ExitReason] = loop.create_future()
        self._ready: asyncio.Future[str | None] = loop.create_future()  # None, or why not
        self.start_deadline = loop.time() + spec.start_timeout  # the zygote may be busy on it till then
        self._reported: str | None = None
        self._failure: str | None = None
        self._said_ready = False  # READY may come before the zygote's Spawned
        self._kill_when_spawned = False
        self._notify = LineReader(loop, notify_fd, self._on_notify)
        self._notify_socket: NotifySocket | None = None  # a notify command's NOTIFY_SOCKET
        self._sd_dropped = ""  # why its last notification was dropped (too long): said if no READY came
        self._link: ZygoteLink | None = None  # the zygote (generation) it was sent to
        self._stale = ""  # that zygote's code was out of date: why
        self._status = ""  # the last STATUS= it sent
        self._stopping = False  # it sent STOPPING=1
        # A hot standby's other lines (STANDBY, STALE, SYNCED, RETIRE: ``processes.standby``)
        self.on_control: Callable[[str], None] | None = None

    @property
    def _sd_notify(self) -> NotifySocket | None:
        return self._notify_socket

    @_sd_notify.setter
    def _sd_notify(self, socket: NotifySocket | None) -> None:
        """The manager makes the socket; the child hears of the datagrams it drops."""
        self._notify_socket = socket
        if socket is not None:
            socket.on_dropped = self._on_sd_dropped

    @property
    def status_line(self) -> str:
        """What the child said of itself through ``NOTIFY_SOCKET`` (``STATUS=``, ``STOPPING=1``)."""
        if self._stopping:
            return f"stopping: {self._status}" if self._status else "stopping"
        return self._status

    def __repr__(self) -> str:
        if self.exited.done():
            state = f"exited: {self.exited.result()}"
        else:
            state = "running" if self.started_at is not None else "starting"
        return f"<ChildProcess {self.id} pid={self.pid} {state}>"

    async def stop(self, shutdown: Shutdown) -> ExitReason:
        """OTP's shutdown: SIGTERM, wait up to ``shutdown`` s for the death, then SIGKILL.

        ``"brutal_kill"`` SIGKILLs at once, ``"infinity"`` waits for ever after SIGTERM.
        Returns once the process is dead (and its group's leftovers SIGKILLed). Idempotent.
        """
        if not self.exited.done():
            if shutdown == "brutal_kill":
                self.kill()
            else:
                self.send_signal(signal.SIGTERM)
                if shutdown != "infinity":
                    try:
                        await asyncio.wait_for(asyncio.shield(self.exited), float(shutdown))
                    except TimeoutError:
                        self.kill()
        return await asyncio.shield(self.exited)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (not its group); nothing once it is dead."""
        if self.pid and not self.exited.done():
            signal_quietly(os.kill, self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process and its whole process group."""
        if not self.pid:
            self._kill_when_spawned = True
        elif not self.exited.done():
            kill_group(self.pid)
            signal_quietly(os.kill, self.pid, signal.SIGKILL)  # if it left its group

    # --- events, from the manager and the notify pipe ----------------------------------------

    def kernel_exit(self) -> ExitReason | None:
        """The death the kernel shows before the zygote's report of it is handled, else None.

        A query must never show a dead pid running; the report may lag (the zygote reaps in
        turn, the loop reads in turn). A zombie gives its wait status; a pid gone or reused
        (another start time than at spawn) has none left: an abnormal exit, unless it said
        ``EXIT shutdown``. One read of ``/proc/<pid>/stat``.
        """
        if not self.pid or self.exited.done():
            return None
        try:
            stat = proc_stat(self.pid)
        except OSError:
            return None  # the kernel cannot say now (out of fds): the zygote's report will
        same = stat is not None and self.start_time in (None, stat.start_time)  # None: not read
        if same and stat.state not in "ZXx":
            return None
        self._notify.drain()  # an EXIT line written just before the end counts
        if same:
            return from_wait_status(stat.exit_code, self._reported)
        return from_wait_status(1 << 8, self._reported)  # status gone with the pid: exit 1

    def _on_spawned(self, pid: int) -> None:
        self.pid = pid
        try:
            stat = proc_stat(pid)
        except OSError:  # out of fds: no start time, so no reuse check for this child
            stat = None
        self.start_time = stat.start_time if stat is not None else None
        if self._kill_when_spawned:
            self.kill()
            return
        if self.spec.command is not None and self.spec.ready == "exec":
            self._said_ready = True  # the zygote says Spawned once exec succeeded
        if self._sd_notify is not None:
            self._sd_notify.accept(pid)
        self._become_ready()

    def _on_notify(self, line: str) -> None:
        if line in READY_LINES:
            self._said_ready = True
            self._become_ready()
        elif line.startswith("FAILED"):
            self._failure = line[len("FAILED"):].strip() or "the child reported FAILED"
        elif line.startswith("EXIT "):
            self._reported = line[len("EXIT "):].strip()
        elif self.on_control is not None:
            self.on_control(line)

    def tell(self, line: str) -> bool:
        """Write ``line`` to a hot standby (its notify fd is a socket pair); False if closed."""
        fd = self._notify._fd
        if fd < 0:
            return False
        try:
            os.write(fd, line.encode() + b"\n")
        except OSError:
            return False
        return True

    def retire(self) -> None:
        """A hot standby's EOF: it tears down and exits by itself."""
        self._notify.close()

    def _on_sd_notify(self, assignments: list[tuple[str, str]]) -> None:
        for key, value in assignments:
            if key == "READY" and value == "1":
                self._said_ready = True
            elif key == "STATUS":
                self._status = value[:STATUS_LIMIT]
            elif key == "STOPPING" and value == "1":
                self._stopping = True
        self._become_ready()

    def _on_sd_dropped(self, reason: str) -> None:
        if not self._sd_dropped:  # once per child: a daemon may repeat itself
            log.warning("otpy[%s]: child %r: %s (a READY=1 in it does not count)",
                        self._notify_socket.node_name if self._notify_socket else "?", self.id, reason)
        self._sd_dropped = reason

    def _no_ready(self, reason: str) -> str:
        """``reason`` for a start without READY, with the last dropped notification if any."""
        return f"{reason} ({self._sd_dropped})" if self._sd_dropped else reason

    def _become_ready(self) -> None:
        if self._said_ready and self.pid and not self._ready.done():
            self.started_at = time.monotonic()
            self._ready.set_result(None)

    def _on_stale(self, reason: str) -> None:
        self._stale = reason
        self._finish(ExitReason(kind="failed", detail=reason), why=f"out-of-date zygote: {reason}")

    def _on_refused(self, reason: str) -> None:
        self._finish(ExitReason(kind="failed", detail=reason), why=reason)

    def _on_exited(self, status: int) -> None:
        self._notify.drain()  # a READY, FAILED or EXIT written just before the end counts
        if self._sd_notify is not None:
            self._sd_notify.drain()
        self._finish(from_wait_status(status, self._reported))
        kill_group(self.pid)  # leftovers; the zygote (their subreaper) reaps them

    def _on_lost(self, reason: ExitReason) -> None:
        self._finish(reason)

    def _time_out(self) -> None:
        if not self._ready.done():
            self._ready.set_result(self._no_ready(f"no READY within {self.spec.start_timeout} s"))
            self.kill()

    def _finish(self, reason: ExitReason, why: str | None = None) -> None:
        self._notify.close()
        if self._sd_notify is not None:
            self._sd_notify.close()
        if not self._ready.done():
            self._ready.set_result(why or self._failure or self._no_ready(f"exited before READY: {reason}"))
        if not self.exited.done():
            self.exited.set_result(reason)
