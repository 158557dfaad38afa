"""The node's two kinds of pipes to its processes: the zygote's socket, and line readers.

``ZygoteLink`` starts the zygote (``python -m otpy.processes.zygote``), sends it messages (with fds)
and reads its replies, all on the node's event loop; ``LineReader`` turns a child's output or
notify pipe into lines; ``sweep_run`` kills what a dead zygote left. All are used only by
``processes.manager``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Callable

import psutil

from .fd_reserve import FdReserve
from .heartbeat import Heartbeat
from .linux import GENERATION_VAR, kill_generation, kill_group, signal_quietly
from ..host.node_run import RUN_VAR
from ..host.prctl import TITLE_ROOM
from ..agent.import_check import import_path
from ..wire.zygote_protocol import ENCODER, FROM_ZYGOTE, Hello, Init, Ping, Pong, Retire

_PING = ENCODER.encode(Ping())  # encoded once: the heartbeat sends it every second
_RETIRE = ENCODER.encode(Retire())

log = logging.getLogger("otpy")
LINE_LIMIT = 1 << 16
START_TIMEOUT = 10.0  # for a zygote's Hello: a Python start and otpy's imports
STOP_TIMEOUT = 5.0  # for a zygote's exit once its socket is closed


class LineReader:
    """Calls ``on_line`` for each line of a non-blocking pipe; closes the fd at EOF."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, on_line: Callable[[str], None],
                 on_close: Callable[["LineReader"], None] | None = None) -> None:
        self._loop = loop
        self._fd = fd
        self._on_line = on_line
        self._on_close = on_close
        self._partial = b""
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read_once)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def drain(self) -> None:
        """Read everything in the pipe now."""
        while not self.closed and self._read_once():
            pass

    def close(self) -> None:
        if self.closed:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self._partial:
            self._emit([self._partial])
        if self._on_close is not None:
            self._on_close(self)

    def _read_once(self) -> bool:
        try:
            data = os.read(self._fd, LINE_LIMIT)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.close()
            return False
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) >= LINE_LIMIT:
            lines.append(self._partial)
            self._partial = b""
        self._emit(lines)
        return True

    def _emit(self, lines: list[bytes]) -> None:
        for line in lines:
            try:
                self._on_line(line.rstrip(b"\r").decode(errors="replace"))
            except Exception:
                log.exception("otpy: output handler failed")


# --- the zygote, seen from the node ----------------------------------------------------

_OTPY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ZygoteDied(RuntimeError):
    """The zygote died before its Hello: otpy's fault, which the manager answers with a new one."""


class ZygoteLink:
    """One running zygote: its process, its socket, and a pidfd that says when it died."""

    def __init__(self, node_name: str, run_id: str, *, on_message: Callable, on_death: Callable,
                 program_folders: tuple[str, ...] = (), generation: int = 1) -> None:
        self.program_folders = program_folders
        self.node_name = node_name
        self.run_id = run_id
        self.generation = str(generation)  # OTPY_ZYGOTE of it and every process below it
        self.returncode: int | None = None
        self.stuck = False  # it missed a heartbeat and was killed for it
        self.retiring = False  # stopped by the node: an older generation whose last child is gone
        self._proc: subprocess.Popen | None = None  # once launched
        self._on_message = on_message
        self._on_death = on_death

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Launched and not reaped yet: a sweep of its run must spare it."""
        return self._proc is not None and self.returncode is None

    @property
    def gone(self) -> bool:
        """Its socket is closed (EOF, a death, a stop): nothing sent reaches it any more, and
        its death follows (``on_death`` runs once the process is reaped)."""
        return self._sock.fileno() < 0

    def read_now(self) -> None:
        """Handle the reports already in the socket now (a query wants the latest exits)."""
        if not self.gone:
            self._read()

    async def start(self, reserve: FdReserve | None = None,
                    busy_until: Callable[[], float] = lambda: 0.0) -> None:
        """Start the zygote and wait for its Hello; then its heartbeat runs until it dies.

        ``reserve``: the fds to give back if the process is out of them (see ``processes.fd_reserve``).
        ``busy_until``: the loop time until which the zygote may rightly not answer a ping.
        """
        self._loop = loop = asyncio.get_running_loop()
        env = {**os.environ, "OTPY_NODE": self.node_name, RUN_VAR: self.run_id, GENERATION_VAR: self.generation}
        (reserve or FdReserve(0)).call(lambda: self._launch(env))
        self._sock.setblocking(False)
        self._hello = loop.create_future()
        self._death = loop.create_future()
        loop.add_reader(self._sock.fileno(), self._read)
        loop.add_reader(self._pidfd, self._died)
        starting_until = loop.time() + START_TIMEOUT  # an interpreter start on a loaded machine
        self._heartbeat = Heartbeat(
            loop, send=self._ping, on_stuck=self._stuck, stopped=self._is_stopped,
            busy_until=lambda: max(busy_until(), starting_until if not self._hello.done() else 0.0))
        self._heartbeat.start()
        try:
            await self.send(Init(sys_path=import_path(self.program_folders), cwd=os.getcwd(), env=env))
        except (BrokenPipeError, ConnectionResetError):
            await asyncio.shield(self._death)  # it died already: its Hello future says so
        await self._hello

    def _launch(self, env: dict[str, str]) -> None:
        """The process, its socket and its pidfd; on an error, none of them is left."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pythonpath = os.pathsep.join(filter(None, [_OTPY_ROOT, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "otpy.processes.zygote", str(theirs.fileno()), str(os.getpid())]
        try:
            with theirs:  # env: the children's, and in /proc too: every descendant inherits it
                proc = subprocess.Popen(
                    [*argv, _title_room(argv)], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                    env={**env, "PYTHONPATH": pythonpath})
        except BaseException:
            ours.close()
            raise
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except BaseException:
            ours.close()  # the zygote reads EOF and exits
            proc.kill()
            proc.wait()
            raise
        self._sock, self._proc = ours, proc

    def kill(self) -> None:
        """SIGKILL the zygote (through its pidfd: never another process); its death follows."""
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass

    def _stuck(self, waited: float) -> None:
        log.warning("otpy[%s]: the zygote (pid %s) did not answer a heartbeat in %.1f s; "
                    "killing it, its children are restarted from a new one", self.node_name, self.pid, waited)
        self.stuck = True
        self.kill()

    def _is_stopped(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
        except (OSError, IndexError):
            return False

    def _ping(self) -> None:
        try:
            self._sock.send(_PING)
        except OSError:  # full (the zygote does not read) or closed (it is dying)
            pass

    async def send(self, message, fds: tuple[int, ...] = ()) -> None:
        data = ENCODER.encode(message)
        while True:
            try:
                socket.send_fds(self._sock, [data], fds) if fds else self._sock.send(data)
                return
            except BlockingIOError:
                await self._writable()

    async def _writable(self) -> None:
        """Wait until the socket has room again, or the zygote is dead."""
        writable = self._loop.create_future()

        def on_writable() -> None:
            self._loop.remove_writer(self._sock.fileno())
            if not writable.done():
                writable.set_result(None)

        self._loop.add_writer(self._sock.fileno(), on_writable)
        await asyncio.wait([writable, self._death], return_when=asyncio.FIRST_COMPLETED)

    async def stop(self) -> None:
        """Say ``Retire`` and close the socket (the zygote kills what it still has, its own
        generation only, and exits); wait for its death.

        The zygote's cleanup takes 2 s at most; one that has not exited after ``STOP_TIMEOUT``
        (stopped, hung) is SIGKILLed, and its children die with it (parent-death signal).
        """
        self._heartbeat.stop()  # its cleanup is not an answer to a ping
        if not self.gone:
            try:
                self._sock.send(_RETIRE)  # we live on: it kills its own generation, not the run
            except OSError:  # full (it does not read) or closed: no cleanup of its own then
                self.kill()  # its children die with it; the manager sweeps its generation
        self._close_socket()
        try:
            await asyncio.wait_for(asyncio.shield(self._death), STOP_TIMEOUT)
        except TimeoutError:
            self.kill()
            await asyncio.shield(self._death)

    def _read(self) -> None:
        while self._sock.fileno() >= 0:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_socket()
                return
            match FROM_ZYGOTE.decode(data):
                case Pong():
                    self._heartbeat.pong()
                case Hello(pid=pid):
                    self._hello.set_result(pid)
                case message:
                    self._on_message(message)

    def _died(self) -> None:
        self._read()  # the last reports first
        self._heartbeat.stop()
        self._close_socket()
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = self._proc.wait()
        if not self._hello.done():  # one that hung at boot is no death to retry at once
            error = RuntimeError if self.stuck else ZygoteDied
            self._hello.set_exception(error(f"it exited with status {self.returncode}"))
        self._death.set_result(self.returncode)
        self._on_death(self)

    def _close_socket(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
            self._sock.close()


def _title_room(argv: list[str]) -> str:
    """Blanks that make ``argv`` ``TITLE_ROOM`` bytes long: the room every process title of the
    zygote and its children is written in (``host.prctl``); the zygote ignores them."""
    return " " * max(1, TITLE_ROOM - sum(len(os.fsencode(arg)) + 1 for arg in argv) - 1)


# --- what a dead zygote leaves -----------------------------------------------------------


def sweep_run(run_id: str, generation: str, pids: set[int], spare: frozenset[int]) -> None:
    """SIGKILL what a dead zygote left, and reap what of it is ours (blocking: run it in a thread).

    That is ``pids`` and their process groups, then every process of the run that descends
    from that zygote (``kill_generation``: its run tag and its generation), but ``spare`` (live
    zygotes) and this process: a ``setsid`` grandchild that init adopted too. Another zygote
    generation's children are left alone. Those that are this process's children (if it is a
    subreaper) are reaped here.
    """
    for pid in pids:
        kill_group(pid)
        signal_quietly(os.kill, pid, signal.SIGKILL)
    killed = kill_generation(run_id, generation, spare=spare)
    for pid in {*pids, *killed, *_children_in_groups(pids, spare)}:
        _reap_if_ours(pid)


def _reap_if_ours(pid: int) -> None:
    """SIGKILL and reap ``pid`` if it is this process's child (so its pid cannot be reused
    meanwhile, and the blocking wait ends); else nothing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return
    if ppid == os.getpid():
        signal_quietly(os.kill, pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _children_in_groups(groups: set[int], spare: frozenset[int]) -> set[int]:
    """This process's children in one of ``groups`` but ``spare`` (zombies too: their
    environment is gone)."""
    found = set()
    for proc in psutil.Process().children():
        try:
            if proc.pid not in spare and os.getpgid(proc.pid) in groups:
                found.add(proc.pid)
        except OSError:
            continue
    return found

