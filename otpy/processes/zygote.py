"""The zygote: otpy's fork server. It forks every child of a node and reaps every one.

The node starts one per node as ``python -m otpy.processes.zygote SOCKET_FD NODE_PID`` (``ps``
then shows it as ``otpy: NODE zygote``). It imports
the worker's modules once and freezes them for the garbage collector, so a forked worker
starts with everything loaded (a restart costs a fork, not an interpreter). It is single
threaded, never creates a ZeroMQ context, and is a child subreaper: orphaned grandchildren
come back to it and are reaped here, so no zombie is left anywhere. Every child carries
``OTPY_INCARNATION=<its pid>`` in its environment, and its descendants inherit it: an
orphan whose incarnation is dead is killed (a helper that left its program's process group
does not outlive the program). When the node dies the zygote gets SIGTERM (parent-death
signal) and kills everything below it before it exits. Messages are in ``wire/protocol``.

The zygote is the server: its loop, the pids it spawned, its spare (one child forked ahead,
that waits for the next program request: its pid and socket). What a forked child does to
become a worker or a command is the child's own: ``agent/bootstrap``'s ``Bootstrap``.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import NoReturn

import msgspec  # noqa: F401  (pre-imported for the workers)
import zmq  # noqa: F401  (pre-imported for the workers)

from otpy.agent.bootstrap import CHILD_FDS, MAX_MESSAGE, Bootstrap
from otpy.agent.call_socket import spare_socket_path
from otpy.agent.program import import_target
from otpy.host.node_run import RUN_VAR, kill_run
from otpy.host.prctl import become_subreaper, die_with_parent, prepare_titles, set_title
from otpy.host.runtime_dir import make_agents_dir
from otpy.processes.linux import GENERATION_VAR, kill_generation
from otpy.processes.sources import Sources
from otpy.wire.zygote_protocol import ENCODER, TO_ZYGOTE, Exited, Hello, Init, Ping, Pong, Retire, Spawn, Spawned, SpawnFailed, Stale

ZYGOTE_NAME = "otpy-zygote"  # its comm: what ``top`` and ``pgrep`` see


class Zygote:
    """The fork server's state: the node's socket, and the pids it spawned and not yet reaped."""

    def __init__(self, sock: socket.socket, node_pid: int) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.node_pid = node_pid
        self.spawned: set[int] = set()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.modules_frozen = 0
        self.sources = Sources()  # the program files its imports brought in: a change makes it stale
        self.known_modules = set(sys.modules)  # before the programs' imports
        self.preloaded: set[str] = set()  # the program targets imported so far
        self.bootstrap = Bootstrap(self.pid, self.devnull, self.sources.check)  # a forked child's first steps
        self.spare: Spare | None = None
        self.terminating = False
        self.retired = False  # the node said Retire: it lives on
        self.children_file = f"/proc/{self.pid}/task/{self.pid}/children"

    # --- the loop -------------------------------------------------------------------------

    def serve(self) -> None:
        """Answer spawn requests and reap children until the node closes the socket."""
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "terminating", True))
        signal.set_wakeup_fd(self.wake_w)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        self.reap()  # a SIGCHLD before the handler was installed
        while not self.terminating:
            for fd, _ in poller.poll():
                if fd == self.wake_r:
                    self.drain_wakeups()
                    self.reap()
                elif not self.receive():
                    self.terminating = True
        self.kill_all()

    def ensure_spare(self) -> None:
        """Fork the next spare, unless one waits, no program was asked for yet, or this
        zygote's code is out of date (its program starts go to a new zygote)."""
        if self.spare is None and self.modules_frozen and not self.terminating and not self.sources.stale:
            try:
                self.spare = self.fork_spare()
            except OSError:
                pass  # no spare: the next program is forked on request

    def receive(self) -> bool:
        """Handle one message; False when the node closed the socket."""
        data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, len(CHILD_FDS))
        if not data:
            return False
        if flags & socket.MSG_TRUNC:
            raise RuntimeError(f"message larger than {MAX_MESSAGE} bytes")
        match TO_ZYGOTE.decode(data):
            case Retire():  # the node lives on: only ours go (``kill_all``); its EOF follows
                self.retired = True
            case Ping():  # the node's heartbeat (``processes.heartbeat``): we are alive, and not stuck
                self.send(Pong())
            case Init() as init:
                self.init(init)
            case Spawn() as request:
                self.spawn(request, data, fds)
                self.ensure_spare()
        return True

    def send(self, message) -> None:
        self.send_raw(ENCODER.encode(message))

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node is gone: its EOF (or the parent-death signal) ends the loop

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def reap(self) -> None:
        """Reap every dead child; report the ones we spawned; then kill orphans of dead programs."""
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
            if self.spare is not None and pid == self.spare.pid:  # killed while it waited
                self.spare.close()
                self.spare = None
                _forget_spare_socket(pid)
            if pid in self.spawned:
                self.spawned.discard(pid)
                self.send(Exited(pid=pid, status=status))
        if reaped:
            self.kill_orphans()

    def children(self) -> list[int]:
        """This process's children now, spawned or adopted (Linux's ``task/*/children``)."""
        try:
            with open(self.children_file) as f:
                return [int(pid) for pid in f.read().split()]
        except OSError:
            return []

    def kill_orphans(self) -> None:
        """SIGKILL adopted processes whose program (``OTPY_INCARNATION``) is dead. An orphan of a
        live program (a daemon it started) is left alone; reaping it later is ours."""
        spare = self.spare.pid if self.spare is not None else None
        for pid in self.children():
            if pid not in self.spawned and pid != spare and _incarnation_of(pid) not in self.spawned:
                _kill_group(pid)

    def kill_all(self) -> None:
        """The node is gone or closing: kill everything of this run, then reap what is below,
        until nothing is left (2 s at most).

        The run tag (``OTPY_NODE_RUN``) finds what left the tree: a process reparented to
        init before it could come back to us, one in another session. If the node is gone,
        that is every process of the run; if the node retired us (it lives on: a close, or an
        older generation stopped; a ``Retire`` message), only those of this zygote's generation
        (``OTPY_ZYGOTE``):
        the node and the other generations' processes are spared.
        """
        run_id, generation = os.environ.get(RUN_VAR), os.environ.get(GENERATION_VAR)
        if run_id and generation and self.retired:
            kill_generation(run_id, generation, spare=frozenset({self.pid, self.node_pid}))
        elif run_id:
            kill_run(run_id, spare={self.pid, self.node_pid})
        deadline = time.monotonic() + 2.0
        while (below := self.children()) and time.monotonic() < deadline:
            for pid in below:
                _kill_group(pid)
            try:
                os.waitpid(-1, 0)  # one death; its orphans are ours on the next round
            except ChildProcessError:
                break
        self.spawned.clear()

    # --- requests -------------------------------------------------------------------------

    def init(self, init: Init) -> None:
        sys.path[:] = init.sys_path
        os.chdir(init.cwd)
        os.environ.clear()
        os.environ.update(init.env)
        if node := os.environ.get("OTPY_NODE"):
            make_agents_dir(node)  # once, for every spare's warm-up
        self.send(Hello(pid=os.getpid()))

    def spawn(self, request: Spawn, data: bytes, fds: list[int]) -> None:
        try:
            if len(fds) != len(CHILD_FDS):
                raise _Refused(f"spawn request carried {len(fds)} fds, not {len(CHILD_FDS)}")
            if request.spec.program and (stale := self.sources.check()):
                self.retire_spare()  # forked from the old code: no use to anyone
                self.send(Stale(request_id=request.request_id, reason=stale))
                return
            if request.spec.program:
                pid = self.start_program(request, data, *fds)
            else:
                pid = self.fork_command(request, *fds)
        except (_Refused, OSError) as refused:
            reason = str(refused) if isinstance(refused, _Refused) else f"fork failed: {refused}"
            self.send(SpawnFailed(request_id=request.request_id, reason=reason))
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.spawned.add(pid)
        self.send(Spawned(request_id=request.request_id, pid=pid))

    def start_program(self, request: Spawn, data: bytes, notify: int, out: int, err: int) -> int:
        """Hand the request to the waiting spare; fork one only when none can take it."""
        if self.preload(request.spec.program) and self.spare is not None:
            self.spare.close()  # forked before the program was imported: it exits by itself
            self.spare = None
        spare, self.spare = self.spare, None
        if spare is not None:
            try:
                return spare.assign(data, notify, out, err)
            except OSError:  # it died meanwhile (its exit is reaped unreported): fork instead
                _forget_spare_socket(spare.pid)
            finally:
                spare.close()
        pid = os.fork()
        if pid == 0:
            self.in_child(self.bootstrap.run_program, request, notify, out, err)
        return pid

    def retire_spare(self) -> None:
        """Close the waiting spare's socket: it exits by itself (reaped silently)."""
        if self.spare is not None:
            self.spare.close()
            self.spare = None

    def fork_spare(self) -> Spare:
        """A child that does now what every program child does first, then waits for a request."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
            if pid == 0:
                ours.detach()
                self.in_child(self.bootstrap.run_spare, theirs)
        finally:
            theirs.close()
        return Spare(pid, ours)

    def fork_command(self, request: Spawn, notify: int, out: int, err: int) -> int:
        """Fork and exec; the close-on-exec error pipe says whether exec succeeded."""
        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            self.in_child(self.bootstrap.exec_command, request, notify, out, err, error_w)
        os.close(error_w)
        try:
            error = _read_all(error_r)
        finally:
            os.close(error_r)
        if error:
            os.waitpid(pid, 0)
            raise _Refused(f"exec failed: {error.decode(errors='replace')}")
        return pid

    def preload(self, target: str) -> bool:
        """Import the program in the zygote, so that every fork of it finds it loaded.
        True when that imported something new (a spare forked before lacks it).

        A target imported once is not looked up again: every program start would otherwise
        run the import machinery here, and each page it writes is a copy-on-write fault in
        the zygote after every fork (about 16 of its 190 faults per start)."""
        if target in self.preloaded:
            return False
        try:
            import_target(target)
        except BaseException as exc:
            raise _Refused(f"cannot import {target!r}: {type(exc).__name__}: {exc}") from None
        self.preloaded.add(target)
        if len(sys.modules) == self.modules_frozen:
            return False
        self.sources.note([module for name, module in list(sys.modules.items()) if name not in self.known_modules])
        self.known_modules.update(sys.modules)
        gc.freeze()
        self.modules_frozen = len(sys.modules)
        return True

    # --- in the child ---------------------------------------------------------------------

    def in_child(self, body, *args) -> NoReturn:
        """Run ``body(*args)`` in the forked child; never return into the zygote's loop."""
        try:
            self.sock.detach()  # its fd is closed below; the object must not close another
            body(*args)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)


class Spare:
    """The zygote's end of a spare: its pid and the socket its request goes through."""

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self.control = control

    def assign(self, data: bytes, notify: int, out: int, err: int) -> int:
        """Send it the spawn request and its three fds; its pid is then the child's."""
        socket.send_fds(self.control, [data], [notify, out, err])
        return self.pid

    def close(self) -> None:
        self.control.close()


class _Refused(Exception):
    """A spawn request that leaves no child behind; its text is the reply's reason."""


def _forget_spare_socket(pid: int) -> None:
    if node := os.environ.get("OTPY_NODE"):
        spare_socket_path(node, pid).unlink(missing_ok=True)


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _incarnation_of(pid: int) -> int | None:
    """The ``OTPY_INCARNATION`` a process inherited (None: not readable, or not ours)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(b"OTPY_INCARNATION="):
                    return int(entry[len(b"OTPY_INCARNATION="):])
    except (OSError, ValueError):
        pass
    return None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _ensure_std_fds() -> None:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)


def main() -> None:
    sock_fd, node_pid = int(sys.argv[1]), int(sys.argv[2])  # then blanks: room for titles
    prepare_titles()
    set_title(f"otpy: {os.environ.get('OTPY_NODE', '?')} zygote", ZYGOTE_NAME)
    die_with_parent(node_pid, signal.SIGTERM)  # caught: kill everything below, then exit
    become_subreaper()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the node's to handle
    _ensure_std_fds()
    sock = socket.socket(fileno=sock_fd)
    gc.freeze()
    Zygote(sock, node_pid).serve()


if __name__ == "__main__":
    main()
