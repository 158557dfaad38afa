"""The process manager: the one place that spawns, stops and reaps a node's OS processes.

Children are forked by the node's zygote (``processes.zygote``), which reaps them and reports each
death; the node learns of it from the zygote's socket, never by polling. Everything here
runs on the node's asyncio loop, which may be in any thread: readers on fds only, no
signal handlers. The only timers are deadlines: the start and shutdown timeouts, and the
zygote's heartbeat (``processes.heartbeat``: a stopped or hung zygote is killed and replaced).

A child's life: ``spawn`` returns after READY (or after exec, for ``ready="exec"``);
``exited`` resolves with its ExitReason once it is dead; ``stop`` applies OTP's shutdown
(SIGTERM, wait, SIGKILL) and waits for the death. Whatever is left in a dead child's
process group is SIGKILLed, so no grandchild outlives it.

If the zygote dies, its children are SIGKILLed (their parent-death signal, and here by
process group), then every process of the run that descends from it (``OTPY_NODE_RUN`` and
its ``OTPY_ZYGOTE`` generation: a ``setsid`` grandchild that init adopted too); whoever is their parent now reaps them. The children end ``lost``
(otpy's loss: their supervisors restart them without charging the intensity) and the next
spawn starts a new zygote, once that sweep is over. A zygote's death never fails a start by
itself: one that dies as it boots is replaced, the spawn waiting for the next; a spawn in
flight when the zygote dies (its request sent, or its child not READY yet) is tried once
more on the next zygote. Only a zygote that keeps dying (more than ``ZYGOTE_DEATHS_MAX``
deaths in ``ZYGOTE_DEATHS_WINDOW`` s) makes spawns fail, ``the zygote keeps dying``: an
ordinary start failure, charged. So a module whose import kills the zygote costs at most
two zygote deaths a start, and the bound, then the intensity, ends it.

Zygote generations: a zygote whose imported program sources changed on disk answers a
program start with ``Stale`` (``processes.sources``); the manager then starts a new zygote
(the next generation, which imports the new code) and sends the start there; every later
start goes to it too. The old zygote keeps serving its children and is stopped after its
last one (``_retire_if_idle``). Each child knows its zygote (``ChildProcess._link``): a
zygote's death makes only its own children ``lost``.

A node out of fds (``EMFILE``) still spawns: see ``processes.fd_reserve``.

Hot standbys (``ChildSpec.standby``): ``spawn`` first asks ``standbys`` (``processes.standby``)
for one made for exactly this spec; it takes the name instead of a fork and a setup.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import socket
import sys
import time
from typing import Callable

from ..supervision.exit import ExitReason
from .child import ChildProcess
from .fd_reserve import FdReserve, pipes
from .sd_notify import NotifySocket
from .standby import StandbyPool
from .linux import children_of, has_image, proc_stat
from ..host.node_run import new_run_id
from ..host.runtime_dir import notify_socket_path
from .zygote_link import LineReader, ZygoteDied, ZygoteLink, sweep_run
from ..wire.zygote_protocol import Exited, Spawn, Spawned, SpawnFailed, Stale
from ..specs.model import ChildSpec

__all__ = ["ChildProcess", "ProcessManager", "StartFailed", "print_output"]

log = logging.getLogger("otpy")

OutputHandler = Callable[[str, str, str], None]  # (child id, stream: "out" or "err", line)
ZYGOTE_DEATHS_MAX = 5  # more zygote deaths than this within ZYGOTE_DEATHS_WINDOW s:
ZYGOTE_DEATHS_WINDOW = 10.0  # spawns fail (StartFailed) until the window has room again
STALE_RETRIES = 3  # new zygote generations one start may take (a file rewritten as it is imported)
LOST = ExitReason(kind="lost", detail="the zygote died")  # otpy's loss: restarted, not charged
CLOSED = ExitReason(kind="killed", detail="process manager closed")


def _socket_pair() -> tuple[int, int]:
    """A hot standby's notify fds: a stream socket pair (close-on-exec), the node's end first."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours.detach(), theirs.detach()


class StartFailed(Exception):
    """A child did not reach READY; ``str()`` says why. Raised by ``ProcessManager.spawn``."""


class _SpawnLost(StartFailed):
    """A start cut short by the zygote's death (the child ended ``lost``): worth one retry."""


class _Stale(StartFailed):
    """The zygote refused a program start: its imported code changed on disk. The start goes
    to a new zygote generation."""


def print_output(child_id: str, stream: str, line: str) -> None:
    print(f"[{child_id}] {line}", file=sys.stderr)


class ProcessManager:
    """Spawns a node's children through its zygote; stops and reaps them.

    ``run_id`` is the run's tag (``OTPY_NODE_RUN``, see ``host.node_run``): the zygote and every
    process below it carry it. None makes a new one (an embedding, a test).
    """

    def __init__(self, *, node_name: str, on_output: OutputHandler | None = None,
                 run_id: str | None = None, program_folders: tuple[str, ...] = ()) -> None:
        self.node_name = node_name
        self.program_folders = tuple(program_folders)  # where the zygote imports programs from, besides sys.path
        self.run_id = run_id or new_run_id()
        self.on_output = on_output or print_output
        self._zygote: ZygoteLink | None = None
        self._zygotes: set[ZygoteLink] = set()  # every one started and maybe alive: a sweep spares them
        self._starting: asyncio.Task[None] | None = None
        self._requests: dict[int, ChildProcess] = {}  # sent, no reply yet
        self._children: dict[int, ChildProcess] = {}  # by pid, until reaped
        self._request_ids = itertools.count(1)
        self._generations = itertools.count(1)  # zygote generations: a new one when code changed
        self._retiring: set[asyncio.Task] = set()  # older generations being stopped
        self._reaping: set[asyncio.Future] = set()
        self._outputs: set[LineReader] = set()  # open until EOF, which may come after the exit
        self._zygote_deaths: collections.deque[tuple[float, str]] = collections.deque()
        self._reserve = FdReserve()
        self._closing = False
        self.standbys = StandbyPool(self)  # hot standbys (``processes.standby``)

    @property
    def children(self) -> list[ChildProcess]:
        """The children that reached READY and are not dead yet."""
        return [c for c in self._children.values() if c.started_at is not None and not c.exited.done()]

    async def open(self) -> None:
        """Take the fd reserve, start the zygote and wait until it is ready for spawn requests.

        The node itself is not a subreaper (an embedding script's own orphans would become
        its zombies): the zygote is, for everything below the agents.
        """
        self._reserve.fill()
        try:
            await self._ensure_zygote()
        except BaseException:
            self._reserve.release()  # nobody closes a manager that did not open
            raise

    async def spawn(self, spec: ChildSpec, *, env: dict[str, str] | None = None) -> ChildProcess:
        """Start ``spec``; returns after READY (or exec). Raises StartFailed, with no process left.

        Out of fds (``EMFILE``), the fd reserve makes room; if even that is not enough, it is
        a failed start of this child like any other, with nothing left open. A start the
        zygote's death cut short is tried once more on the next zygote (see the module).
        """
        env = dict(env or {})
        if (child := await self.standbys.promote(spec, env)) is None:
            child = await self._spawn(spec, env)
        if spec.standby or spec.id in self.standbys.ids():
            self.standbys.refill(spec, env)  # in the background: READY is in already
            if spec.standby:
                self.standbys.follow(child)
                self._watch_death(child)
        return child

    def resize_standbys(self, child: ChildProcess | None, spec: ChildSpec, env: dict[str, str]) -> None:
        """``spec``, the running ``child``'s, now asks for ``spec.standby`` hot standbys (changed in
        place by a reload: the child keeps running); they are retired or made to that count."""
        first = spec.id not in self.standbys.ids()
        self.standbys.resize(spec, dict(env))
        if spec.standby and first and child is not None and not child.exited.done():
            self.standbys.follow(child)
            self._watch_death(child)

    def _watch_death(self, child: ChildProcess) -> None:
        """A child with hot standbys: its death is seen here at once (a pidfd), not when the
        zygote's report of it arrives (one hop less on the restart's path). The zombie's wait
        status is read from ``/proc``, before the zygote reaps it; if it has been reaped already,
        the zygote's report (in flight) decides, as for every child."""
        try:
            pidfd = os.pidfd_open(child.pid)
        except OSError:  # gone already, or no fds: the zygote's report is enough
            return
        loop = asyncio.get_running_loop()

        def dead() -> None:
            stop()
            try:
                stat = proc_stat(child.pid)
            except OSError:
                return
            if (stat is not None and stat.state == "Z" and stat.start_time == child.start_time
                    and self._children.get(child.pid) is child):
                del self._children[child.pid]  # the zygote's Exited finds nothing left to do
                child._on_exited(stat.exit_code)
                if child._link is not self._zygote:
                    self._retire_if_idle(child._link)

        def stop(_=None) -> None:
            if pidfd_open[0] >= 0:
                loop.remove_reader(pidfd_open[0])
                os.close(pidfd_open[0])
                pidfd_open[0] = -1

        pidfd_open = [pidfd]
        loop.add_reader(pidfd, dead)
        child.exited.add_done_callback(stop)

    async def _spawn(self, spec: ChildSpec, env: dict[str, str]) -> ChildProcess:
        lost_once, stale = False, 0
        while True:
            try:
                return await self._spawn_once(spec, env)
            except _SpawnLost as lost:
                if lost_once:
                    raise StartFailed(str(lost)) from None
                lost_once = True
                log.warning("otpy[%s]: the zygote died while %r started; starting it again",
                            self.node_name, spec.id)
            except _Stale as out_of_date:  # the next round goes to a new zygote generation
                stale += 1
                if stale > STALE_RETRIES:
                    raise StartFailed(f"the program's code keeps changing: {out_of_date}") from None

    async def _spawn_once(self, spec: ChildSpec, env: dict[str, str] | None) -> ChildProcess:
        child = await self._send_spawn(spec, env)
        return await self._until_ready(child, asyncio.get_running_loop())

    async def _send_spawn(self, spec: ChildSpec, env: dict[str, str] | None, standby: bool = False) -> ChildProcess:
        """Send the zygote a start of ``spec`` (a hot standby of it: ``standby``, whose notify
        fd is a socket pair, ``processes.standby``); its child, not READY yet."""
        if self._closing:
            raise StartFailed("the process manager is closed")
        zygote = await self._ensure_zygote()
        loop = asyncio.get_running_loop()
        try:
            (notify_r, notify_w), (out_r, out_w), (err_r, err_w) = self._reserve.call(
                lambda: [_socket_pair() if standby else pipes(1)[0], *pipes(2)])
        except OSError as exc:
            raise StartFailed(f"cannot make the child's pipes: {exc}") from None
        for stream, read_end in (("out", out_r), ("err", err_r)):
            self._outputs.add(LineReader(loop, read_end, self._output_handler(spec.id, stream),
                                         on_close=self._outputs.discard))
        child = ChildProcess(spec, loop, notify_r)
        child._link = zygote
        request_id = next(self._request_ids)
        env = dict(env or {})
        if spec.command is not None and spec.ready == "notify":
            try:
                child._sd_notify = self._reserve.call(lambda: NotifySocket(
                    loop, notify_socket_path(self.node_name, str(request_id)), child._on_sd_notify))
            except (OSError, RuntimeError) as exc:  # RuntimeDirError: the folder is not private
                for fd in (notify_w, out_w, err_w):
                    os.close(fd)
                child._on_refused(f"cannot make the child's NOTIFY_SOCKET: {exc}")
                raise StartFailed(f"cannot make the child's NOTIFY_SOCKET: {exc}") from None
            env["NOTIFY_SOCKET"] = str(child._sd_notify.path)
        self._requests[request_id] = child
        try:
            await zygote.send(Spawn(request_id=request_id, spec=spec, env=env, standby=standby),
                              (notify_w, out_w, err_w))
        except Exception as exc:  # too large, not encodable, or the zygote just died
            self._unsent(request_id, child, zygote, exc)
        finally:
            for write_end in (notify_w, out_w, err_w):
                os.close(write_end)
            self._reserve.fill()
        return child

    def _output_handler(self, child_id: str, stream: str) -> Callable[[str], None]:
        return lambda line: self.on_output(child_id, stream, line)

    def _unsent(self, request_id: int, child: ChildProcess, zygote: ZygoteLink, exc: Exception) -> None:
        """A request the zygote did not get. If the zygote is gone, its death ends the child
        ``lost`` like any request in flight (now, if that death was handled already); else
        the request itself is at fault: a failed start."""
        if not zygote.gone:
            self._requests.pop(request_id, None)
            child._on_refused(f"cannot send the spawn request: {exc}")
        elif zygote.returncode is not None and self._requests.pop(request_id, None) is child:
            child._on_lost(self._lost_reason())

    def kernel_view(self) -> Callable[[ChildProcess], ExitReason | None]:
        """For a query: the zygote's reports already sent are handled now, then a check of
        the kernel's word on a child: its exit if it is dead (zombie, gone, pid reused), else
        None. Cheap: one read of the zygote's children for all, one ``readlink`` a child;
        ``/proc/<pid>/stat`` only for a child these do not show alive and ours."""
        below: set[int] = set()
        for zygote in self._zygotes:  # every generation still alive
            if zygote.alive:
                zygote.read_now()
                below |= children_of(zygote.pid)

        def check(child: ChildProcess) -> ExitReason | None:
            pid = child.pid
            if pid in below and self._children.get(pid) is child and has_image(pid):
                return None
            return child.kernel_exit()

        return check

    async def close(self) -> None:
        """SIGKILL every remaining child's group, wait for the deaths, stop the zygote."""
        self._closing = True
        self.standbys.close()
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        while self._children or self._requests or self.standbys.refilling:
            pending = [*self._children.values(), *self._requests.values()]
            for child in pending:
                child.kill()
            await asyncio.gather(*(asyncio.shield(c.exited) for c in pending))
            await self.standbys.drain()  # refills under way end once their standby is dead (or killed)
        for link in list(self._zygotes):  # the current generation and any older one still alive
            if link.alive:
                await link.stop()
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        while self._reaping:
            await asyncio.gather(*self._reaping)
        for output in list(self._outputs):
            output.drain()
            output.close()
        self._reserve.release()

    # --- internals --------------------------------------------------------------------------

    async def _until_ready(self, child: ChildProcess, loop: asyncio.AbstractEventLoop) -> ChildProcess:
        timer = loop.call_later(child.spec.start_timeout, child._time_out)
        try:
            why_not = await asyncio.shield(child._ready)
        except asyncio.CancelledError:
            child.kill()
            raise
        finally:
            timer.cancel()
        if why_not is None:
            return child
        reason = await asyncio.shield(child.exited)  # a failed start leaves nothing running
        if reason.kind == "lost":
            raise _SpawnLost(why_not)
        if child._stale:
            raise _Stale(child._stale)
        raise StartFailed(why_not)

    async def _ensure_zygote(self) -> ZygoteLink:
        """The running zygote; the first call after a death starts a new one.

        A zygote that dies as it boots is otpy's fault like any zygote death: it is replaced
        and the caller waits for the next one, until the zygote keeps dying (then StartFailed,
        and the supervisors' intensity decides). Other errors (no fds, no fork) are StartFailed.
        """
        while self._zygote is None:
            if self._closing:
                raise StartFailed("the process manager is closed")
            if self._starting is None:
                self._check_zygote_deaths()
                self._starting = asyncio.get_running_loop().create_task(self._start_zygote())
            try:
                await asyncio.shield(self._starting)
            except ZygoteDied:
                continue  # its death is counted (_on_zygote_death): the next round checks the bound
            except Exception as exc:
                raise StartFailed(f"cannot start the zygote: {exc}") from None
        return self._zygote

    def _check_zygote_deaths(self) -> None:
        """StartFailed if the zygote died more than ZYGOTE_DEATHS_MAX times in the window.

        A zygote that dies is otpy's loss, not its children's (they exit ``lost``, restarted
        without charge); one that keeps dying would restart them for ever, so past this bound
        each spawn is an ordinary failed start, charged to its supervisor's intensity.
        """
        now = time.monotonic()
        while self._zygote_deaths and self._zygote_deaths[0][0] < now - ZYGOTE_DEATHS_WINDOW:
            self._zygote_deaths.popleft()
        if len(self._zygote_deaths) > ZYGOTE_DEATHS_MAX:
            raise StartFailed(f"the zygote keeps dying: {len(self._zygote_deaths)} deaths in "
                              f"{ZYGOTE_DEATHS_WINDOW:g} s, the last: {self._zygote_deaths[-1][1]}")

    async def _start_zygote(self) -> None:
        try:
            while self._reaping:  # what the last zygote left is gone first (it carries the run tag too)
                await asyncio.gather(*self._reaping, return_exceptions=True)
            link = ZygoteLink(self.node_name, self.run_id, on_message=self._on_message,
                              on_death=self._on_zygote_death, program_folders=self.program_folders,
                              generation=next(self._generations))
            self._zygotes.add(link)
            await link.start(self._reserve, busy_until=self._busy_until)
            self._zygote = link
        finally:
            self._starting = None

    def _busy_until(self) -> float:
        """Until when the zygote may rightly not answer a heartbeat: the pending requests'
        start deadlines (it may be importing a program's module)."""
        return max((c.start_deadline for c in self._requests.values()), default=0.0)

    def _lost_reason(self) -> ExitReason:
        """How a child of a dead zygote ends: ``lost``, unless the manager was closing it."""
        return CLOSED if self._closing else LOST

    def _on_message(self, message) -> None:
        match message:
            case Spawned(request_id=request_id, pid=pid):
                child = self._requests.pop(request_id)
                self._children[pid] = child
                child._on_spawned(pid)
            case SpawnFailed(request_id=request_id, reason=reason):
                child = self._requests.pop(request_id)
                child._on_refused(reason)
                self._retire_if_idle(child._link)
            case Stale(request_id=request_id, reason=reason):
                child = self._requests.pop(request_id)
                self._new_generation(child._link, reason)
                child._on_stale(reason)
            case Exited(pid=pid, status=status):
                child = self._children.pop(pid, None)
                if child is not None:
                    child._on_exited(status)
                    if child._link is not self._zygote:
                        self._retire_if_idle(child._link)

    def _new_generation(self, link: ZygoteLink | None, reason: str) -> None:
        """``link``'s code is out of date: the next program start goes to a new zygote. The old
        one keeps its children (reaping, exits, heartbeats) and is stopped after the last."""
        if link is not None:
            self.standbys.retire_generation(link)
        if link is not None and link is self._zygote:
            self._zygote = None
            log.info("otpy[%s]: %s: a new zygote generation imports the new code; the old one "
                     "(pid %d) stops after its last child", self.node_name, reason, link.pid)
        self._retire_if_idle(link)

    def _retire_if_idle(self, link: ZygoteLink | None) -> None:
        """Stop ``link``, an older generation, once no child or request of it is left."""
        if link is None or link is self._zygote or link.retiring or not link.alive:
            return
        if any(c._link is link for c in (*self._children.values(), *self._requests.values())):
            return
        link.retiring = True
        task = asyncio.get_running_loop().create_task(link.stop())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _on_zygote_death(self, link: ZygoteLink) -> None:
        """Sweep what the zygote left; its children's ``exited`` resolve after that.

        Its own children and requests only: they end ``lost`` (otpy's loss, not theirs), or
        killed when the manager closes; another generation's children live on. The sweep kills
        every process of the run that descends from this zygote (its ``OTPY_ZYGOTE``
        generation), and it is over before a new zygote starts (``_start_zygote`` waits for
        it). An older generation the manager stopped (``retiring``) is no death to count.
        """
        if self._zygote is link:
            self._zygote = None
        if not self._closing and not link.retiring:
            why = "it missed a heartbeat, killed" if link.stuck else f"status {link.returncode}"
            self._zygote_deaths.append((time.monotonic(), why))
            log.warning("otpy[%s]: the zygote died (%s)", self.node_name, why)
        reason = self._lost_reason()
        lost = []
        for table in (self._requests, self._children):  # its own only: other generations live on
            for key, child in list(table.items()):
                if child._link is link:
                    lost.append(table.pop(key))
        self._zygotes = {z for z in self._zygotes if z.alive}
        reaped = asyncio.get_running_loop().run_in_executor(
            None, sweep_run, self.run_id, link.generation, {c.pid for c in lost if c.pid},
            frozenset(z.pid for z in self._zygotes))
        self._reaping.add(reaped)

        def resolve(_) -> None:
            self._reaping.discard(reaped)
            for child in lost:
                child._on_lost(reason)

        reaped.add_done_callback(resolve)
