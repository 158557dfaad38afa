"""Hot standbys, as the node keeps them: spare processes of a program child, set up ahead.

A child with ``standby = N`` (``ChildSpec.standby``, program children only) has up to N
standbys: processes the zygote forked like the child (``Spawn.standby``), which instantiated
the program, resolved its configuration, ran ``setup()``, bound their call socket at a spare
path, and wait (``agent.standby_wait``). Their notify fd is a socket pair: the node writes
``TAKEN``, ``GO``, ``SYNC``, or closes it (EOF: retired); they write ``STANDBY`` (with every
program source file their process holds: as the zygote saw it at the fork, or, imported in
``setup()``, as it was then: ``processes.sources`` ``listing``), ``STALE``, ``SYNCED``,
``RETIRE`` (a request to go), and READY after a GO.

``ProcessManager.spawn`` asks the pool first (``promote``): a ready standby made for exactly
this spec and environment, by the current zygote generation, that is not resolving new values
(one with a ``SYNC`` pending is passed over: a start never waits on a standby), and that the
kernel shows alive, not dying, not stopped (``standby_checks``: its pidfd, ``/proc``; the zygote's
report of a death comes one hop later), takes the name instead of a fork and a ``setup()``. The
node stats its source files itself (the zygote's own check before a fork), renames its socket into
the child's path and writes ``TAKEN``: READY at once, no round trip. (A standby whose line could
not list its files is asked instead: ``GO``, it checks them itself, renames, says READY, or
refuses with ``STALE``.) Code changed on disk: the start goes the ordinary way, to a new zygote
generation. Standbys made for another spec or environment (a reconfiguration, a reload, a bound
variable) or by an older generation are retired then. After any start of such a child the pool
makes standbys again up to N (``refill``), in a task of its own: READY never waits for it.
The manager sees the death of such a child by a pidfd (``ProcessManager._watch_death``), one hop
before the zygote's report.

A standby is no OTP child: its failure (a ``setup()`` that raises, a death while it waits) is
one warning, charges no intensity, and is not retried until the child's next start. It belongs
to its zygote: its death takes the standby with it (the ordinary ``lost`` path), and it dies
with the node. The supervisor retires the standbys of a child stopped for good (``retire_all``).
A variable write asks them to resolve again (``sync``) before it returns, as running programs
do, waiting ``SYNC_TIMEOUT`` at most for each (then it is killed and made again); a child's exit
for new values (75) does too (``follow``). One whose ``on_config`` refused the new values asks
to go and is made again with the stored ones. ``otpy reload --code`` renews them all
(``renew``); a reload that changes only ``standby`` resizes them (``resize``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
from typing import Any, Callable

import msgspec

from ..agent.call_socket import spare_socket_path
from ..agent.notify import EXIT_CONFIG_CHANGED
from ..host.runtime_dir import agent_socket_path
from ..specs.model import ChildSpec
from .child import ChildProcess
from .standby_checks import changed as _changed, private_kib as _private_kib, unusable as _unusable

log = logging.getLogger("otpy")

STALE_RETRIES = 3  # new zygote generations one standby may take (as a start: ``processes.manager``)
SYNC_TIMEOUT = 2.0  # seconds a write waits for a standby to resolve again; then it is killed
RETIRE_GRACE = 5.0  # seconds a retired standby has for its teardown (shutdown "infinity"), then SIGKILL
CHANGED = "changed: "  # a RETIRE of a standby whose configuration changed (not a failure: made again)


class Standby:
    """One standby: its process (a ``ChildProcess`` not READY yet), what it was made for, and
    its state: ``starting`` (in setup), ``ready`` (said STANDBY), ``promoting``, ``retired``."""

    def __init__(self, child: ChildProcess, spec: ChildSpec, env: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        self.child, self.spec, self.env = child, spec, env
        self.state = "starting"
        self.said: asyncio.Future[None] = loop.create_future()  # its STANDBY
        self.answer: asyncio.Future[str] | None = None  # its STALE, after a GO
        self.syncs: collections.deque[asyncio.Future[str]] = collections.deque()  # SYNCED, in order
        self.left = ""  # why it retired by itself (RETIRE)
        # Its program's source files as the zygote saw them at its fork (path, mtime_ns, size),
        # from its STANDBY line: the node checks them itself at the take-over (None: it asks).
        self.sources: list[tuple[str, int, int]] | None = None
        self.on_retire: Callable[[Standby], None] | None = None  # the pool's, for its RETIRE
        self.taken = False  # its socket was renamed into the child's path: it is the child
        child.on_control = self._hear

    @property
    def ready(self) -> bool:
        return self.state == "ready" and bool(self.child.pid) and not self.child.exited.done()

    def scopes(self) -> set[str]:
        """The scopes its configuration follows: its id, its supervisors, ``global``."""
        chain = [s for s in self.env.get("OTPY_SUPERVISORS", "").split(",") if s]
        return {self.spec.id, *chain, "global"}

    def _hear(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "STANDBY" and not self.said.done():
            self.sources = _sources(rest) if rest else None
            self.said.set_result(None)
        elif word == "STALE" and self.answer is not None and not self.answer.done():
            self.answer.set_result(rest)
        elif word == "SYNCED" and self.syncs:
            if rest == "restarting":  # new values and no on_config: it leaves (RETIRE follows)
                self.left = self.left or f"{CHANGED}its configuration"
            elif rest.startswith("refused"):  # on_config refused them: it leaves (RETIRE follows)
                self.left = self.left or f"{CHANGED}it refused the new values"
            if not (waiting := self.syncs.popleft()).done():
                waiting.set_result(rest)
        elif word == "RETIRE":  # it asks to go: the pool retires it (``StandbyPool._on_retire``)
            self.left = rest or "it retired"
            if self.on_retire is not None:
                asyncio.get_running_loop().call_soon(self.on_retire, self)


class StandbyPool:
    """The standbys of one ``ProcessManager``'s children, by child id."""

    def __init__(self, manager: Any) -> None:  # its ProcessManager (``processes.manager`` imports this module)
        self._manager = manager
        self._by_id: dict[str, list[Standby]] = {}
        self._wanted: dict[str, tuple[ChildSpec, dict[str, str]]] = {}  # the spec and env of its last start
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._failed: set[str] = set()  # ids whose standby failed: made again at the next start

    # --- what the supervisor sees ----------------------------------------------------------

    def usage(self, child_id: str) -> tuple[int, float]:
        """The ready standbys of ``child_id`` and their private memory (MiB): the pages only
        they hold (``Private_Clean + Private_Dirty`` of ``/proc/PID/smaps_rollup``)."""
        ready = [s for s in self._by_id.get(child_id, ()) if s.ready]
        return len(ready), round(sum(_private_kib(s.child.pid) for s in ready) / 1024, 1)

    # --- starts ------------------------------------------------------------------------------

    async def promote(self, spec: ChildSpec, env: dict[str, str]) -> ChildProcess | None:
        """A ready standby of exactly ``spec`` and ``env``, READY under the child's name now;
        None if there is none (or it refused). Standbys made for anything else are retired.
        It never waits on a standby that is busy: one resolving new values (a ``SYNC``
        pending) is passed over (it stays for a later start), and one the kernel says is dead,
        dying or stopped is retired: the start then goes the ordinary way, at once."""
        standbys = self._by_id.get(spec.id)
        if not standbys:
            return None
        for standby in list(standbys):
            if (not _same_but_count(standby.spec, spec) or standby.env != env
                    or standby.child._link is not self._manager._zygote):
                self.retire(standby)
        while True:
            standby = next((s for s in standbys if s.ready and not s.left and not s.syncs), None)
            if standby is None:
                return None
            if not (why := _unusable(standby.child)):
                break
            log.warning("otpy[%s]: a hot standby of %r (pid %d) is %s: it does not take over",
                        self._manager.node_name, spec.id, standby.child.pid, why)
            if why == "gone":  # its pid may be another process's now: nothing to signal
                standby.state = "retired"
                standbys.remove(standby)
            else:
                self.retire(standby, now=True)
        standbys.remove(standby)
        standby.state = "promoting"
        if standby.sources is not None:
            return self._take(standby)
        child = standby.child
        answer = standby.answer = asyncio.get_running_loop().create_future()
        if not child.tell("GO"):
            return None  # it is gone: its exit is on its way
        try:
            done, _ = await asyncio.wait({child._ready, answer}, timeout=spec.start_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            child.kill()
            raise
        if child._ready.done() and child._ready.result() is None:
            standby.taken = True
            return child
        if answer.done():
            why = f"it refused: {answer.result()}"
        else:
            child.kill()
            why = child._ready.result() if done else f"no READY within {spec.start_timeout} s"
        log.info("otpy[%s]: the hot standby of %r (pid %d) did not take over (%s); starting it anew",
                 self._manager.node_name, spec.id, child.pid, why)
        return None

    def _take(self, standby: Standby) -> ChildProcess | None:
        """The hot path: the node checks the standby's source files (one ``stat`` each, as the
        zygote does before a fork), renames its socket into the child's path and tells it
        ``TAKEN``: READY now, without waiting for the standby to run."""
        child, node = standby.child, self._manager.node_name
        child._notify.drain()  # a RETIRE it wrote already counts (it asks to go: it does not take over)
        if standby.left:
            standby.state = "ready"
            self._on_retire(standby)
            return None
        why = _changed(standby.sources)
        if not why:
            try:
                os.rename(spare_socket_path(node, child.pid), agent_socket_path(node, standby.spec.id))
            except OSError as exc:  # it died meanwhile (its socket went with it)
                why = f"its socket cannot be moved into place: {exc.strerror}"
        if why:
            log.info("otpy[%s]: the hot standby of %r (pid %d) does not take over (%s); starting it anew",
                     node, standby.spec.id, child.pid, why)
            standby.state = "ready"  # for retire(): no longer in the pool, it ends like any retired one
            self.retire(standby)
            return None
        standby.taken = True
        child.tell("TAKEN")
        child._on_notify("READY")
        return child

    def follow(self, child: ChildProcess) -> None:
        """``child`` (started, with standbys) may end for new values (``EXIT_CONFIG_CHANGED``):
        then its standbys resolve again before any of them takes over (``SYNC`` goes before the
        restart's ``GO`` on the same stream), so the restart never runs the old values."""
        child.exited.add_done_callback(lambda done: self._on_child_exit(child.id, done.result()))

    def _on_child_exit(self, child_id: str, reason) -> None:
        if reason.code == EXIT_CONFIG_CHANGED:
            for standby in self._by_id.get(child_id, ()):
                if standby.state in ("starting", "ready"):
                    standby.syncs.append(asyncio.get_running_loop().create_future())
                    standby.child.tell("SYNC")

    def refill(self, spec: ChildSpec, env: dict[str, str]) -> None:
        """After a start of ``spec``: make its standbys again up to ``spec.standby``, in the
        background."""
        self._wanted[spec.id] = (spec, env)
        if spec.standby <= 0 or spec.program is None:
            self._wanted.pop(spec.id)
            return
        self._failed.discard(spec.id)  # a start: a failed standby is tried again now
        self._refill_soon(spec.id)

    def _refill_soon(self, child_id: str) -> None:
        if (task := self._refills.get(child_id)) is None or task.done():
            task = self._refills[child_id] = asyncio.get_running_loop().create_task(self._refill(child_id))
            task.add_done_callback(lambda t: self._refills.pop(child_id, None) if self._refills.get(child_id) is t else None)

    async def _refill(self, child_id: str) -> None:
        while not self._manager._closing and child_id not in self._failed:
            if (wanted := self._wanted.get(child_id)) is None:
                return
            spec, env = wanted
            live = [s for s in self._by_id.get(child_id, ()) if s.state in ("starting", "ready") and not s.left]
            if len(live) >= spec.standby:
                return
            await self._make(spec, env)

    async def _make(self, spec: ChildSpec, env: dict[str, str]) -> None:
        """One standby of ``spec``, until it says STANDBY; a failure is one warning."""
        for _ in range(STALE_RETRIES + 1):
            try:
                child = await self._manager._send_spawn(spec, env, standby=True)
            except Exception as exc:  # StartFailed: no fds, the zygote keeps dying, the manager closed
                return self._failure(spec.id, str(exc), quiet=self._manager._closing)
            if self._manager._closing:
                child.kill()  # sent as the manager closed: its kill loop may be over
            standby = Standby(child, spec, env)
            standby.on_retire = self._on_retire
            self._by_id.setdefault(spec.id, []).append(standby)
            child.exited.add_done_callback(lambda _, s=standby: self._gone(s))
            try:
                done, _ = await asyncio.wait({standby.said, child._ready}, timeout=spec.start_timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                child.kill()
                raise
            if standby.said.done() and not child._ready.done():
                if standby.state == "starting":
                    standby.state = "ready"
                    wanted = self._wanted.get(spec.id)  # the child stopped, or changed, meanwhile:
                    if wanted is None or wanted[1] != env or not _same_but_count(spec, wanted[0]):
                        self.retire(standby)
                return None
            if standby.state == "retired" or self._manager._closing:
                return None  # retired meanwhile (its spec changed): the refill goes on with the new one
            if not done:
                child.kill()
                return self._failure(spec.id, f"no STANDBY within {spec.start_timeout} s")
            if not child._stale:
                reason = await asyncio.shield(child.exited)
                if reason.kind == "lost":
                    return self._failure(spec.id, "the zygote died", quiet=True)
                return self._failure(spec.id, child._ready.result())
        return self._failure(spec.id, "the program's code keeps changing")

    def _failure(self, child_id: str, why: str, quiet: bool = False) -> None:
        self._failed.add(child_id)
        if not quiet:
            log.warning("otpy[%s]: a hot standby of %r failed: %s; it is made again at the child's next start",
                        self._manager.node_name, child_id, why)

    def _on_retire(self, standby: Standby) -> None:
        """A standby asked to go: retired now; made again at once if its configuration changed,
        else (``on_config`` raised, the registry could not be followed) one warning."""
        if standby.state not in ("starting", "ready"):
            return  # promoting: the take-over deals with it; retired already
        self.retire(standby)
        if standby.left.startswith(CHANGED):
            self._refill_soon(standby.spec.id)
        elif not self._manager._closing:
            self._failure(standby.spec.id, standby.left)

    def _gone(self, standby: Standby) -> None:
        """A standby's process ended: out of the pool. One that retired by itself because its
        configuration changed is made again now; one that died waiting is a warning."""
        standbys = self._by_id.get(standby.spec.id, [])
        if standby in standbys:
            standbys.remove(standby)
        if not standbys:
            self._by_id.pop(standby.spec.id, None)
        pid = standby.child.pid  # its spare socket's file, if it left it (SIGKILL); not if its pid is
        if not standby.taken and pid and not os.path.exists(f"/proc/{pid}"):  # another process's already
            try:
                os.unlink(spare_socket_path(self._manager.node_name, pid))
            except OSError:
                pass
        if standby.state != "ready" or self._manager._closing:
            return  # starting: ``_make`` says it; promoting: it is the child now; retired: asked for
        standby.state = "retired"
        reason = standby.child.exited.result()
        if reason.kind != "lost":
            self._failure(standby.spec.id, f"it died while it waited: {reason}")

    # --- stops ---------------------------------------------------------------------------------

    def retire(self, standby: Standby, now: bool = False) -> None:
        """EOF on its socket: it tears down and exits; SIGKILL if it has not after its shutdown
        time (at once if it is still in setup, ``brutal_kill``, or ``now``: it is hung, stopped
        or dying)."""
        if standby.state == "retired":
            return
        starting = standby.state == "starting" or now
        standby.state = "retired"
        standbys = self._by_id.get(standby.spec.id, [])
        if standby in standbys:
            standbys.remove(standby)
        child = standby.child
        shutdown = standby.spec.shutdown
        if starting or shutdown == "brutal_kill":
            child.kill()
            return
        child.retire()
        grace = RETIRE_GRACE if shutdown == "infinity" else float(shutdown)
        asyncio.get_running_loop().call_later(grace, child.kill)  # nothing once it is dead

    def retire_all(self, child_id: str) -> None:
        """The child stopped for good (or the node stops): no standby of it is kept or made."""
        self._wanted.pop(child_id, None)  # a refill under way stops after the standby it makes (retired)
        for standby in list(self._by_id.get(child_id, ())):
            self.retire(standby)
        self._by_id.pop(child_id, None)

    def retire_generation(self, link) -> None:
        """``link``'s code is out of date: its standbys go (they would refuse GO anyway), so that
        the old zygote can stop after its last child."""
        for standbys in list(self._by_id.values()):
            for standby in list(standbys):
                if standby.child._link is link:
                    self.retire(standby)

    def resize(self, spec: ChildSpec, env: dict[str, str]) -> None:
        """``spec``, a running child's, now asks for ``spec.standby`` standbys (a reload that
        changed only that, in place: the child keeps running): extra ones are retired, missing
        ones made in the background."""
        if spec.standby <= 0 or spec.program is None:
            self.retire_all(spec.id)
            return
        self._wanted[spec.id] = (spec, env)
        live = [s for s in self._by_id.get(spec.id, ()) if s.state in ("starting", "ready") and not s.left]
        for standby in sorted(live, key=lambda s: s.state == "ready")[:max(0, len(live) - spec.standby)]:
            self.retire(standby)  # those still in setup first
        self._failed.discard(spec.id)
        self._refill_soon(spec.id)

    def renew(self) -> None:
        """Every standby goes and is made again (``otpy reload --code``: they hold code imported
        before the edit, in their ``setup()`` too)."""
        for standbys in list(self._by_id.values()):
            for standby in list(standbys):
                self.retire(standby)
        for child_id in list(self._wanted):
            self._failed.discard(child_id)
            self._refill_soon(child_id)

    def ids(self) -> set[str]:
        return set(self._by_id) | set(self._wanted)

    def close(self) -> None:
        """The manager closes: no more refills. Refills under way are not cancelled (one could be
        half sent to the zygote); they end once the manager has killed their standbys (``drain``)."""
        self._wanted.clear()

    @property
    def refilling(self) -> bool:
        return any(not task.done() for task in self._refills.values())

    async def drain(self) -> None:
        await asyncio.gather(*list(self._refills.values()), return_exceptions=True)

    # --- variable writes ---------------------------------------------------------------------

    async def sync(self, scopes: set[str]) -> None:
        """A write of ``scopes`` is stored: every standby following one of them resolves again.
        Ready ones are waited for (``SYNCED``, or their exit); one still in setup reads the
        ``SYNC`` before any ``GO`` (one stream, in order), so it never serves the old values."""
        waits = []
        loop = asyncio.get_running_loop()
        for standbys in list(self._by_id.values()):
            for standby in standbys:
                if standby.state not in ("starting", "ready") or not scopes & standby.scopes():
                    continue
                answer = loop.create_future()
                standby.syncs.append(answer)
                if not standby.child.tell("SYNC"):
                    standby.syncs.remove(answer)
                elif standby.state == "ready":
                    waits.append((standby, answer))
        if not waits:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(asyncio.wait(
                {answer, asyncio.shield(standby.child.exited)}, return_when=asyncio.FIRST_COMPLETED)
                for standby, answer in waits)), SYNC_TIMEOUT)
        except TimeoutError:
            for standby, answer in waits:
                if not answer.done():  # hung or stopped, and it may run the old values: it goes now
                    log.warning("otpy[%s]: a hot standby of %r (pid %d) had not resolved the new values "
                                "after %g s; killed", self._manager.node_name, standby.spec.id,
                                standby.child.pid, SYNC_TIMEOUT)
                    self.retire(standby, now=True)
                    self._refill_soon(standby.spec.id)


def _same_but_count(made_for: ChildSpec, spec: ChildSpec) -> bool:
    """``made_for`` is ``spec`` but for ``standby`` (a count changed in place, not the child)."""
    return made_for == spec or (made_for.standby != spec.standby
                                and msgspec.structs.replace(made_for, standby=spec.standby) == spec)


def _sources(text: str) -> list[tuple[str, int, int]] | None:
    """A STANDBY line's source files, or None if it cannot be read (the node then asks)."""
    try:
        files = json.loads(text)
        return [(str(path), int(mtime), int(size)) for path, mtime, size in files]
    except (ValueError, TypeError):
        return None
