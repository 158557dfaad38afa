"""Peers for the restart benchmark: circus and supervisord, driven with the same child and signal.

One readiness signal serves all three managers: the child program sends its pid as one
datagram to the unix socket named by ``$BENCH_READY_SOCK``, which the benchmark binds in a
private temp dir. The clock starts just before ``os.kill(pid, SIGKILL)`` and stops when a
datagram from a *different* pid arrives: the replacement has started and run its first
line of Python.

- circus and supervisord run ``python child.py`` (an exec'd interpreter: they cannot fork
  from a pre-imported parent);
- otpy runs the same ``child.py`` as a ``command`` child, and ``bench.agents:SocketReady``
  as a ``program`` child (forked from the zygote; its ``setup`` sends the datagram, so the
  signal comes just before the child's READY).

Safety: a pid is killed only if it is a descendant of a daemon (or node) this benchmark
started; daemons listen only on ``ipc://`` / unix paths in the temp dir (no inet socket) and
are stopped in ``finally`` (SIGTERM, then SIGKILL of the daemon's own pid after 10 s).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD_SOURCE = textwrap.dedent("""\
    import os, socket, sys, time
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(" ".join([str(os.getpid()), *sys.argv[1:2]]).encode(), os.environ["BENCH_READY_SOCK"])
    s.close()
    while True:
        time.sleep(3600)
""")

# What each peer runs with in the fast and default series (written into the report).
CIRCUS_FAST = {"check_delay": 0.01, "warmup_delay": 0, "respawn": True, "numprocesses": 1}
CIRCUS_DEFAULT = {"check_delay": 5.0, "warmup_delay": 0, "respawn": True, "numprocesses": 1}
SUPERVISORD_FAST = {"startsecs": 0, "autorestart": "true", "startretries": 3, "numprocs": 1}
SUPERVISORD_DEFAULT = {"startsecs": 1, "autorestart": "unexpected", "startretries": 3, "numprocs": 1}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class ReadySocket:
    """The benchmark's end of the readiness signal: a bound unix datagram socket."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "ready.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def recv(self, timeout: float) -> tuple[float, int]:
        """(perf_counter when it arrived, pid). Raises TimeoutError."""
        t, pid, _ = self.recv_mark(timeout)
        return t, pid

    def recv_mark(self, timeout: float) -> tuple[float, int, str]:
        """(perf_counter when it arrived, pid, the program's mark or ""). Raises TimeoutError."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(64)
        except socket.timeout:
            raise TimeoutError(f"no readiness datagram within {timeout} s") from None
        pid, _, mark = data.decode().partition(" ")
        return time.perf_counter(), int(pid), mark

    def drain(self) -> None:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while self.sock.recv(64):
                pass

    def close(self) -> None:
        self.sock.close()


def _descendant(pid: int, of: int) -> bool:
    try:
        return any(p.pid == pid for p in psutil.Process(of).children(recursive=True))
    except psutil.NoSuchProcess:
        return False


def measure_socket_restarts(ready: ReadySocket, owner: int, n: int, *, settle: float = 0.0,
                            timeout: float = 30.0, wait_ready=None) -> list[float]:
    """SIGKILL the current child n times; seconds from the kill to the replacement's datagram.

    ``owner`` is the pid of the manager we started: only its descendants are ever killed.
    ``settle`` waits that long after each READY before the kill (supervisord's ``startsecs``:
    a child killed sooner counts as a failed start and is backed off, then given up).
    ``wait_ready(pid)``, if given, blocks until the manager itself counts ``pid`` as started
    (untimed): otpy's program child sends the datagram from ``setup``, just before READY, and
    a kill before READY would be a failed start, not a restart.
    """
    _, pid = ready.recv(timeout)
    samples = []
    for _ in range(n):
        if settle:
            time.sleep(settle)
        if wait_ready is not None:
            wait_ready(pid)
        if not _descendant(pid, owner):
            raise RuntimeError(f"pid {pid} is not a child of the manager {owner}: not killing it")
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            t1, new = ready.recv(timeout)
            if new != pid:
                break
        samples.append(t1 - t0)
        pid = new
    return samples


def _write_child(directory: str) -> str:
    path = os.path.join(directory, "child.py")
    with open(path, "w") as f:
        f.write(CHILD_SOURCE)
    return path


def _stop_daemon(proc: subprocess.Popen) -> None:
    """SIGTERM the daemon we started (it stops its children), SIGKILL it after 10 s."""
    if proc.poll() is not None:
        return
    survivors = []
    with contextlib.suppress(psutil.NoSuchProcess):
        survivors = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for child in survivors:  # children that outlived their daemon: ours, by pid
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@contextlib.contextmanager
def circus(settings: dict, mark: str = ""):
    """A circusd of our own running ``python child.py MARK``: yields (ready socket, its pid,
    its control endpoint, the child's path)."""
    with tempfile.TemporaryDirectory(prefix="otpy-bench-circus-") as tmp:
        child = _write_child(tmp)
        ready = ReadySocket(tmp)
        ini = os.path.join(tmp, "circus.ini")
        with open(ini, "w") as f:
            f.write(textwrap.dedent(f"""\
                [circus]
                check_delay = {settings['check_delay']}
                endpoint = ipc://{tmp}/endpoint
                pubsub_endpoint = ipc://{tmp}/pubsub
                stats_endpoint = ipc://{tmp}/stats
                statsd = False
                httpd = False

                [watcher:child]
                cmd = {sys.executable}
                args = {child} {mark}
                numprocesses = {settings['numprocesses']}
                warmup_delay = {settings['warmup_delay']}
                respawn = {settings['respawn']}

                [env:child]
                BENCH_READY_SOCK = {ready.path}
                """))
        log = open(os.path.join(tmp, "circusd.log"), "w")
        proc = subprocess.Popen([sys.executable, "-m", "circus.circusd", ini], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            yield ready, proc.pid, f"ipc://{tmp}/endpoint", child
        finally:
            _stop_daemon(proc)
            ready.close()
            log.close()


def run_circus(n: int, settings: dict) -> list[float]:
    with circus(settings) as (ready, pid, _, _):
        return measure_socket_restarts(ready, pid, n)


def supervisord_conf(tmp: str, settings: dict, ready: ReadySocket, child: str, mark: str = "") -> str:
    """Write supervisord's config (the child runs ``python child.py MARK``); returns its path."""
    conf = os.path.join(tmp, "supervisord.conf")
    with open(conf, "w") as f:
        f.write(textwrap.dedent(f"""\
            [unix_http_server]
            file = {tmp}/supervisor.sock

            [supervisord]
            nodaemon = true
            logfile = {tmp}/supervisord.log
            pidfile = {tmp}/supervisord.pid
            childlogdir = {tmp}

            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

            [supervisorctl]
            serverurl = unix://{tmp}/supervisor.sock

            [program:child]
            command = {sys.executable} {child} {mark}
            numprocs = {settings['numprocs']}
            startsecs = {settings['startsecs']}
            autorestart = {settings['autorestart']}
            startretries = {settings['startretries']}
            environment = BENCH_READY_SOCK="{ready.path}"
            stdout_logfile = {tmp}/child.log
            redirect_stderr = true
            """))
    return conf


@contextlib.contextmanager
def supervisord(settings: dict, mark: str = ""):
    """A supervisord of our own: yields (ready socket, its pid, its folder, the child's path)."""
    with tempfile.TemporaryDirectory(prefix="otpy-bench-supervisord-") as tmp:
        child = _write_child(tmp)
        ready = ReadySocket(tmp)
        conf = supervisord_conf(tmp, settings, ready, child, mark)
        log = open(os.path.join(tmp, "supervisord.out"), "w")
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-n", "-c", conf],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            yield ready, proc.pid, tmp, child
        finally:
            _stop_daemon(proc)
            ready.close()
            log.close()


def run_supervisord(n: int, settings: dict) -> list[float]:
    with supervisord(settings) as (ready, pid, _, _):
        # startsecs > 0: a child killed before it has run that long is a failed start.
        return measure_socket_restarts(ready, pid, n, settle=settings["startsecs"] + 0.2 if settings["startsecs"] else 0)


def otpy_child(kind: str, ready: ReadySocket, child: str, mark: str | None = None):
    """The benchmark's child as an otpy spec: ``kind`` "program" (``bench.agents:SocketReady``,
    forked from the zygote) or "command" (``python child.py [MARK]``, exec'd)."""
    sys.path.insert(0, ROOT)
    import otpy

    env = {"BENCH_READY_SOCK": ready.path}
    if kind == "program":
        return otpy.ChildSpec(id="agent", program="bench.agents:SocketReady", env=env,
                              args={} if mark is None else {"mark": mark})
    return otpy.ChildSpec(id="agent", command=(sys.executable, child, *([mark] if mark else [])), env=env)


def run_otpy(n: int, kind: str) -> list[float]:
    """otpy with the same signal: ``kind`` is "program" (zygote fork) or "command" (child.py exec'd)."""
    import otpy

    with tempfile.TemporaryDirectory(prefix="otpy-bench-otpy-") as tmp:
        ready = ReadySocket(tmp)
        spec = otpy_child(kind, ready, _write_child(tmp))
        root = otpy.SupervisorSpec(id="root", max_restarts=n * 10 + 10, max_seconds=1, children=(spec,))
        node = otpy.Node(otpy.NodeSpec(name=f"bench-peer-{kind}-{os.getpid()}", root=root),
                         on_output=lambda *_: None)
        node.start()

        def wait_ready(pid: int) -> None:
            deadline = time.monotonic() + 10
            while node.which_children()[0].pid != pid:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"otpy never reported pid {pid} started")
                time.sleep(0.0005)

        try:
            return measure_socket_restarts(ready, os.getpid(), n, wait_ready=wait_ready)
        finally:
            node.stop()
            ready.close()


def run_all(n: int, n_defaults: int, log=print) -> tuple[dict, dict]:
    """Every socket-signal series: (samples in seconds by series name, settings/notes).

    ``n_defaults`` restarts for each peer at its default settings (0: skip those series).
    """
    samples: dict[str, list[float]] = {}
    notes: dict = {"signal": "child sends its pid as a unix datagram to $BENCH_READY_SOCK",
                   "child": CHILD_SOURCE, "skipped": {}}
    samples["otpy_program_socket"] = run_otpy(n, "program")
    samples["otpy_command_socket"] = run_otpy(max(10, n // 4), "command")
    if installed("circus"):
        import circus

        notes["circus"] = {"version": circus.__version__, "fast": CIRCUS_FAST, "default": CIRCUS_DEFAULT}
        samples["circus_fast"] = run_circus(n, CIRCUS_FAST)
        log(f"circus fast done ({n})")
        if n_defaults:
            samples["circus_default"] = run_circus(n_defaults, CIRCUS_DEFAULT)
            log(f"circus default done ({n_defaults})")
    else:
        notes["skipped"]["circus"] = "not installed (pip install circus)"
        log("circus: not installed, skipped (pip install circus)")
    if installed("supervisor"):
        from importlib.metadata import version

        notes["supervisord"] = {"version": version("supervisor"), "fast": SUPERVISORD_FAST,
                                "default": SUPERVISORD_DEFAULT,
                                "default_settle_s": SUPERVISORD_DEFAULT["startsecs"] + 0.2}
        samples["supervisord_fast"] = run_supervisord(n, SUPERVISORD_FAST)
        log(f"supervisord fast done ({n})")
        if n_defaults:
            samples["supervisord_default"] = run_supervisord(n_defaults, SUPERVISORD_DEFAULT)
            log(f"supervisord default done ({n_defaults})")
    else:
        notes["skipped"]["supervisord"] = "not installed (pip install supervisor)"
        log("supervisord: not installed, skipped (pip install supervisor)")
    return samples, notes
