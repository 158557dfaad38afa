"""A hot standby's wait: a program child set up ahead, waiting to be handed its child's name.

A standby (``ChildSpec.standby``; ``Spawn.standby``) is forked like its child and runs the same
start: the program is instantiated, its configuration resolved, ``setup()`` run, its call
socket bound, but at its own spare path (``agents/.spare-<pid>.sock``, a ``WarmSocket``), and
its config watcher follows the registry. Then it says ``STANDBY`` and waits on fd 3, which is
one end of a socket pair: the node (``processes.standby``) holds the other and writes one line
at a time:

``TAKEN``  the node checked the program's source files itself (the STANDBY line lists them,
           with the size and time the zygote saw) and renamed the standby's socket into the
           child's path: it is the child now (no round trip on the restart's path).
``GO``     the same, asked of the standby (its STANDBY line listed no files): code edited on
           disk since the fork (``stale()``) or a configuration that changed without
           ``on_config`` refuse it: ``STALE <why>``, and the standby exits (the node starts the
           child the ordinary way, from a zygote with the new code). Else the socket is renamed
           into the child's path, then ``READY``.
``SYNC``   a variable write: resolve again now, answer ``SYNCED <state>`` once the program runs
           the stored values (``ConfigWatcher.sync``).
EOF        retired (the child stopped for good, its spec changed): teardown, exit 0.

It also asks to leave, saying ``RETIRE <why>``, when its configuration changes and the program
has no ``on_config``, or ``on_config`` raised: a standby never serves values other than the
registry's. The node then retires it (EOF); a ``TAKEN`` the node sent before it read the
``RETIRE`` makes it the child all the same, which then ends as a running child would (a restart
for new values), so the node's word on the name is never contradicted by a quiet exit.
SIGTERM ends it quietly too. While it waits, ``on_config`` runs on the watcher's thread (there
is no call yet to take turns with); once promoted, in turn with the calls.
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
import time
import traceback
from typing import Any, Callable, NoReturn

from .call_server import CallServer
from .call_socket import WarmSocket
from .config_refused import ConfigRefused
from .notify import NOTIFY_FD, exit_now, notify
from .program import Program
from .registry_link import ConfigWatcher
from .shutdown import Shutdown
from ..host.prctl import set_title
from ..host.runtime_dir import agent_socket_path

READ_LIMIT = 4096
MAX_LINE = 60_000  # a STANDBY line with more source files than this says none (the node then asks)
CHANGED = "changed: "  # a RETIRE for new values (the node makes another standby at once)
FOLLOW_TIMEOUT = 10.0  # seconds a standby waits to be subscribed to the registry's changes


class Relay:
    """The config watcher's ``agent`` while a standby waits, then the call server's: its
    ``new_config`` runs ``on_config`` now (waiting) or queues it with the calls (promoted)."""

    def __init__(self, program: Program, server: CallServer, retire: Callable[[str], None]) -> None:
        self.program, self.server, self.retire = program, server, retire
        self.context = server.context
        self.promoted = False

    def new_config(self, config: dict[str, Any], done: Callable[..., None] | None = None) -> None:
        if self.promoted:
            self.server.new_config(config, done)
            return
        refused = None
        try:
            self.program.on_config(config)
        except ConfigRefused as exc:  # it keeps its old values: it goes (before done: a GO after this is
            refused = str(exc) or type(exc).__name__  # refused), another one is made with the stored ones
            self.retire(f"{CHANGED}it refused the new values ({refused})")
        except BaseException:
            traceback.print_exc()
            self.retire("on_config raised")  # before done: a GO after this is refused
        if done is not None:
            done(config, refused)


class StandbyWait:
    """The wait of one standby: ``until_promoted`` returns once it holds the child's name (its
    socket renamed into place; READY is the caller's to say), or ends the process."""

    def __init__(self, program: Program, server: CallServer, warm: WarmSocket, shutdown: Shutdown, *,
                 node: str, child_id: str, stale: Callable[[], str], born_ns: int | None = None) -> None:
        self.program, self.server, self.warm, self.shutdown = program, server, warm, shutdown
        self.node, self.child_id, self.stale = node, child_id, stale
        self.born_ns = born_ns  # when this process started (before setup): see ``processes.sources``
        self.files: dict[str, tuple[int, int]] = {}  # its program's source files, at STANDBY
        self.watcher: ConfigWatcher | None = None
        self.relay = Relay(program, server, self.retire_soon)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._why_retire = ""
        # What GO needs, made now: the hot path touches as little as it can (in a forked
        # process, each object first touched may cost a copy-on-write page fault).
        self._paths = (str(warm.path), str(agent_socket_path(node, child_id)))
        self._titles = (f"otpy: {node}/{child_id}", child_id)
        self.stale()  # once ahead: its first run is the slow one

    def watch(self, config: dict[str, Any], registry: str) -> None:
        """Follow the registry's changes while waiting (and after, once promoted)."""
        self.watcher = ConfigWatcher(self.program, self.relay, config, registry, self._config_restart)
        self.server.watcher = self.watcher
        self.watcher.start()
        deadline = time.monotonic() + FOLLOW_TIMEOUT  # STANDBY only once no change can be missed
        while not self.watcher.following.wait(0.02) and not self._why_retire:
            if time.monotonic() > deadline:
                self.retire_soon(f"it could not follow the registry's changes within {FOLLOW_TIMEOUT:g} s")

    def _config_restart(self) -> None:
        if self.relay.promoted:
            self.shutdown.request_config_restart()
        else:
            self.retire_soon(f"{CHANGED}its configuration (the program has no on_config)")

    def retire_soon(self, why: str) -> None:
        """From the watcher's thread: the main thread says RETIRE; the node retires it (EOF)."""
        if not self._why_retire:
            self._why_retire = why
            os.write(self._wake_w, b"x")

    def until_promoted(self) -> None:
        set_title(f"otpy: {self.node}/{self.child_id} standby", self.child_id)
        notify(self._standby_line())
        partial = b""
        while True:
            ready, _, _ = select.select([NOTIFY_FD, self._wake_r, self.shutdown.fd], [], [])
            if NOTIFY_FD in ready:  # first: a TAKEN read makes this process the child
                try:
                    data = os.read(NOTIFY_FD, READ_LIMIT)
                except OSError:
                    data = b""
                if not data:  # the node retired us (or is gone)
                    self._end()
                *lines, partial = (partial + data).split(b"\n")
                for line in lines:
                    if line == b"TAKEN":
                        self._taken()
                        return
                    if line == b"GO" and self._promote():
                        return
                    if line == b"SYNC":
                        state = self.watcher.sync() if self.watcher is not None else "unchanged"
                        notify(f"SYNCED {state}")
            if self._wake_r in ready:  # it asks to go; the node's EOF ends it (or a TAKEN sent meanwhile
                os.read(self._wake_r, 64)  # makes it the child, whose end is then a running child's)
                notify(f"RETIRE {self._why_retire}")
            if self.shutdown.fd in ready:
                self.shutdown.drain()
                if self.shutdown.requested:
                    self._end()

    def _standby_line(self) -> str:
        """``STANDBY``, with every program source file this process holds (``processes.sources``
        ``listing``: those the zygote imported, as it saw them when it forked this process, and
        those ``setup()`` imported): the node checks them itself at the take-over and renames
        the socket (``TAKEN``), no round trip; without them it asks (``GO``)."""
        listing = getattr(getattr(self.stale, "__self__", None), "listing", None)
        if not callable(listing):
            return "STANDBY"
        self.files = listing(list(sys.modules.values()), self.born_ns)
        line = "STANDBY " + json.dumps([[path, *seen] for path, seen in self.files.items()], separators=(",", ":"))
        return line if len(line) < MAX_LINE else "STANDBY"

    def _taken(self) -> None:
        """The node checked the code and renamed the socket: this process is the child now.
        A configuration change decided meanwhile is a running child's: a restart for new
        values (no on_config), a crash (on_config raised)."""
        lock = self.watcher.lock if self.watcher is not None else threading.Lock()
        with lock:
            self.relay.promoted = True
            why = self._why_retire
        set_title(*self._titles)
        if why.startswith(CHANGED):
            self.shutdown.request_config_restart()
        elif why:
            print(f"otpy: the standby cannot serve: {why}", file=sys.stderr, flush=True)
            exit_now(1)

    def _promote(self) -> bool:
        """Take the name, unless the code or the configuration is out of date (then exit)."""
        if why := self.stale() or _changed(self.files):
            notify(f"STALE {why}")
            self._end()
        lock = self.watcher.lock if self.watcher is not None else threading.Lock()
        with lock:  # no refresh of the configuration is half done
            if self._why_retire or (self.watcher is not None and self.watcher.restarting):
                notify(f"STALE {self._why_retire or 'its configuration changed'}")
                self._end()
            self.relay.promoted = True
        os.rename(*self._paths)  # a caller finds the dead incarnation's socket, or this one: never no file
        set_title(*self._titles)
        return True

    def _end(self) -> NoReturn:
        """Retired: the program's teardown, the spare socket's file removed, exit 0."""
        self.warm.forget()
        try:
            self.program.teardown()
        except BaseException:
            traceback.print_exc()
        exit_now(0)


def _changed(files: dict[str, tuple[int, int]]) -> str:
    """Why one of ``files`` differs on disk from its ``(mtime_ns, size)`` ("" if none does)."""
    for path, seen in files.items():
        try:
            info = os.stat(path)
        except OSError:
            return f"{path} is gone"
        if (info.st_mtime_ns, info.st_size) != seen:
            return f"{path} changed"
    return ""
