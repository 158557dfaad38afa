"""Peers for the reconfigure benchmark: switch a running child to another program version
under otpy, circus and supervisord, and time it with the readiness signal of ``peers``.

The child is the same ``child.py`` as in the restart comparison, run as ``python child.py
MARK``; its datagram carries the mark. A switch alternates the mark (A -> B -> A ...); the
clock starts before the switch is asked for and stops when a datagram with the new mark
arrives: the new version has started and run its first line of Python.

How each tool is asked, the way its own docs and CLI do it, over its own control socket:
- otpy: a ``Reconfigure`` action on the control socket (``otpy.connect(...).reconfigure``),
  make-before-break; series ``otpy_program_socket`` (``bench.agents:SocketReady``, forked
  from the zygote, with ``args.mark``) and ``otpy_command_socket`` (``child.py`` exec'd);
- circus: ``set`` of the watcher's ``args`` (what ``circusctl set child args ...`` sends),
  which makes circus reload the watcher gracefully: new process first, then the old stopped;
- supervisord: the config file rewritten with the new command, then what ``supervisorctl
  update`` does over XML-RPC: ``reloadConfig``, ``stopProcessGroup``, ``removeProcessGroup``,
  ``addProcessGroup`` (break-before-make: supervisord has no other way to change a command).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Callable

from bench.peers import (
    CIRCUS_DEFAULT, CIRCUS_FAST, ROOT, SUPERVISORD_DEFAULT, SUPERVISORD_FAST, ReadySocket, _write_child,
    circus, installed, otpy_child, supervisord, supervisord_conf,
)

TIMEOUT = 30.0


def measure_switches(ready: ReadySocket, n: int, switch: Callable[[str], float | None], *,
                     settle: float = 0.0, idle: Callable[[], None] | None = None) -> list[float]:
    """Wait for version A, then switch n times (B, A, B, ...); seconds from the switch asked
    to the new version's datagram. Untimed before each switch: ``settle`` seconds, and
    ``idle()``, which returns once the manager is done with the last switch. A ``switch``
    that had to ask again (the manager refused: busy) returns when it asked the last time:
    the clock starts there."""
    while ready.recv_mark(TIMEOUT)[2] != "A":
        pass
    samples = []
    for i in range(n):
        target = "B" if i % 2 == 0 else "A"
        if settle:
            time.sleep(settle)
        if idle is not None:
            idle()
        t0 = time.perf_counter()
        t0 = switch(target) or t0
        while True:
            t1, _, mark = ready.recv_mark(TIMEOUT)
            if mark == target:
                break
        samples.append(t1 - t0)
    return samples


def run_otpy(n: int, kind: str) -> list[float]:
    """``kind``: "program" (forked from the zygote) or "command" (``child.py`` exec'd)."""
    sys.path.insert(0, ROOT)
    import otpy

    with tempfile.TemporaryDirectory(prefix="otpy-bench-otpy-") as tmp:
        child = _write_child(tmp)
        ready = ReadySocket(tmp)

        def spec(mark: str) -> otpy.ChildSpec:
            return otpy_child(kind, ready, child, mark)

        pool = otpy.DynamicSupervisorSpec(id="pool", max_restarts=n * 10 + 10, max_seconds=1)
        root = otpy.SupervisorSpec(id="root", children=(pool,))
        node = otpy.Node(otpy.NodeSpec(name=f"bench-reconf-peer-{kind}-{os.getpid()}", root=root),
                         on_output=lambda *_: None)
        node.start()
        try:
            with otpy.connect(node.name) as client:
                assert client.start_child("pool", spec("A")).ok

                def switch(mark: str) -> None:
                    result = client.reconfigure("pool", "agent", spec(mark))
                    if not result.ok:
                        raise RuntimeError(f"reconfigure failed: {result}")

                return measure_switches(ready, n, switch)
        finally:
            node.stop()
            ready.close()


def run_circus(n: int, settings: dict) -> list[float]:
    from circus.client import CircusClient

    with circus(settings, mark="A") as (ready, _, endpoint, child):
        client = CircusClient(endpoint=endpoint, timeout=TIMEOUT)
        try:
            def switch(mark: str) -> float:
                """circus refuses commands while its last reload still runs ('arbiter is
                already running watcher_do_action command', errno 5): ask again; the clock
                starts at the request it accepted (generous to circus)."""
                deadline = time.monotonic() + TIMEOUT
                while time.monotonic() < deadline:
                    t0 = time.perf_counter()
                    reply = client.call({"command": "set",
                                         "properties": {"name": "child", "options": {"args": f"{child} {mark}"}}})
                    if reply.get("status") == "ok":
                        return t0
                    if "already running" not in str(reply.get("reason")):
                        raise RuntimeError(f"circus set failed: {reply}")
                    time.sleep(0.001)
                raise TimeoutError("circus stayed busy")

            return measure_switches(ready, n, switch)
        finally:
            client.stop()


def run_supervisord(n: int, settings: dict) -> list[float]:
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport

    with supervisord(settings, mark="A") as (ready, _, tmp, child):
        transport = SupervisorTransport(None, None, f"unix://{tmp}/supervisor.sock")
        rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

        def switch(mark: str) -> None:  # what `supervisorctl update` does for a changed group
            supervisord_conf(tmp, settings, ready, child, mark)
            [[_, changed, _]] = rpc.reloadConfig()
            if changed != ["child"]:
                raise RuntimeError(f"supervisord saw no change of the child's command: {changed}")
            rpc.stopProcessGroup("child")
            rpc.removeProcessGroup("child")
            rpc.addProcessGroup("child")

        # startsecs > 0: a process switched before it counts as started is a failed start.
        return measure_switches(ready, n, switch, settle=settings["startsecs"] + 0.2 if settings["startsecs"] else 0)


def run_all(n: int, n_defaults: int, log=print) -> tuple[dict, dict]:
    """Every series: (samples in seconds by series name, settings/notes)."""
    samples: dict[str, list[float]] = {}
    notes: dict = {"signal": "child sends 'PID MARK' as a unix datagram to $BENCH_READY_SOCK",
                   "how": {"otpy": "Reconfigure on the control socket (make-before-break)",
                           "circus": "set args (graceful reload: new process, then the old stopped)",
                           "supervisord": "rewrite the config, then reloadConfig, stopProcessGroup, "
                                          "removeProcessGroup, addProcessGroup (supervisorctl update)"},
                   "skipped": {}}
    samples["otpy_program_socket"] = run_otpy(n, "program")
    samples["otpy_command_socket"] = run_otpy(max(10, n // 4), "command")
    peers = (("circus", run_circus, CIRCUS_FAST, CIRCUS_DEFAULT),
             ("supervisor", run_supervisord, SUPERVISORD_FAST, SUPERVISORD_DEFAULT))
    for module, run, fast, default in peers:
        name = "circus" if module == "circus" else "supervisord"
        if not installed(module):
            notes["skipped"][name] = f"not installed (pip install {module})"
            log(f"{name}: not installed, skipped (pip install {module})")
            continue
        notes[name] = {"fast": fast, "default": default}
        samples[f"{name}_fast"] = run(n, fast)
        log(f"reconfigure: {name} fast done ({n})")
        if n_defaults:
            samples[f"{name}_default"] = run(n_defaults, default)
            log(f"reconfigure: {name} default done ({n_defaults})")
    return samples, notes
