"""Test helpers: tiny `sys.executable -c` children, specs built in Python, and an event waiter."""

from __future__ import annotations

import os
import queue
import random
import socket
import sys
import time
from pathlib import Path

import msgspec

import otpy

# A command child that runs until stopped; on SIGTERM it appends its id to $LOG, then exits.
SLEEPER = (
    "import os, signal, sys, time\n"
    "def bye(*_):\n"
    "    if os.environ.get('LOG'):\n"
    "        with open(os.environ['LOG'], 'a') as f: f.write(os.environ['OTPY_CHILD_ID'] + '\\n')\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, bye)\n"
    "os.write(int(os.environ['OTPY_NOTIFY_FD']), b'READY\\n')\n"
    "print('up', flush=True)\n"
    "while True: time.sleep(3600)\n"
)
IGNORES_TERM = (
    "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "os.write(int(os.environ['OTPY_NOTIFY_FD']), b'READY\\n')\nwhile True: time.sleep(3600)\n"
)


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def sleeper(id: str, **kw) -> otpy.ChildSpec:
    return otpy.ChildSpec(id=id, command=python(SLEEPER), ready="notify", **kw)


def exits_with(id: str, code: int, **kw) -> otpy.ChildSpec:
    return otpy.ChildSpec(id=id, command=python(f"import sys; sys.exit({code})"), **kw)


class Events:
    """Collects a node's events (started, exited, stopped, ...) for waiting with a deadline."""

    def __init__(self, node: otpy.Node) -> None:
        self._queue: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        node.aio.listeners.append(lambda event: self._queue.put(msgspec.structs.asdict(event)))

    def wait(self, kind: str, child: str | None = None, timeout: float = 10.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.seen:
            if event.get("_taken") is None and _matches(event, kind, child, match):
                event["_taken"] = True
                return event
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} event for {child!r} within {timeout} s; seen: "
                                     f"{[(e['kind'], e['child']) for e in self.seen]}")
            try:
                event = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(event)
            if _matches(event, kind, child, match):
                event["_taken"] = True
                return event

    def drain(self) -> list[dict]:
        while True:
            try:
                self.seen.append(self._queue.get_nowait())
            except queue.Empty:
                return self.seen


def _matches(event: dict, kind: str, child: str | None, match: dict) -> bool:
    return (event["kind"] == kind and (child is None or event["child"] == child)
            and all(event.get(k) == v for k, v in match.items()))


def pids(node: otpy.Node, sup: str = "root") -> dict[str, int | None]:
    return {c.id: c.pid for c in node.which_children(sup)}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_dead(pids_: list[int], timeout: float) -> list[int]:
    """Pids still alive after ``timeout`` seconds (psutil waits on each pid's end)."""
    import psutil

    procs = []
    for pid in pids_:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in still if alive(p.pid)]


def is_zygote(proc) -> bool:
    """Whether psutil's ``proc`` is an otpy zygote: ``otpy: NODE zygote`` once it has set its title
    (``python -m otpy.processes.zygote ...`` until then)."""
    line = " ".join(proc.cmdline()).strip()
    return "otpy.processes.zygote" in line or line.startswith("otpy: ") and line.endswith(" zygote")


def unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def wait_until(predicate, timeout: float = 5.0, what: str = "condition"):
    """``predicate()``'s first true value, checked every 10 ms until ``timeout`` (then fail).

    For conditions no event announces (a file another process writes, a pid gone from
    /proc); everything with an event (the node's reports, a call's reply) waits on that.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)
    return value


def rewrite(path, text: str) -> None:
    """Rewrite ``path`` and move its mtime one second on, so that no clock granularity hides it
    (a zygote notes its program sources' mtimes: ``processes.sources``)."""
    before = os.stat(path).st_mtime_ns if path.exists() else 0
    path.write_text(text)
    later = max(os.stat(path).st_mtime_ns, before) + 1_000_000_000
    os.utime(path, ns=(later, later))


def free_node_port() -> int:
    """A port P of 127.0.0.1 with P+1 and P+2 free too (a node's control, call and events ports),
    below the kernel's ephemeral range when there is room: the TCP connections of every test take
    their local ports from that range, and one could take P+1 or P+2 between this look and the
    node's bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(200):
        port = random.randrange(10000, low - 3) if low > 20000 else _ephemeral_port()
        if port + 2 > 65535:
            continue
        try:
            for offset in range(3):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no three free ports in a row")


def _ephemeral_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
