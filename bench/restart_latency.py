"""Restart latency: SIGKILL a child, time until its replacement has reported READY.

    python bench/restart_latency.py [--n 200] [--json FILE]

Three series, each against a baseline measured in the same run on the same machine:

- ``program``: a Python program child (forked from otpy's pre-imported zygote). Baseline:
  the physical floor, ``os.fork()`` of this benchmark process, child writes READY to a pipe,
  parent reads it and reaps the child. It is measured three times (before, between and after
  the two program series) and the slice with the lowest median is the floor (``quietest``):
  ``floor_fork_slices_p50_ms`` shows all three.
- ``program_standby``: the same child with a hot standby (``standby = 1``): its standby takes
  over (no fork, no setup). Killed once its standby is ready again (not timed). Baseline: the
  same fork floor.
- ``command``: a command child (``python -c`` writing READY to $OTPY_NOTIFY_FD, exec'd).
  Baseline: ``subprocess.Popen`` of the same program until READY.

The clock starts just before ``os.kill(pid, SIGKILL)`` and stops when the node reports the
new incarnation ``started``, which it does only after the child wrote READY (the full event,
not the moment a pid exists). The node runs in this process, so there is no client hop; the
cost of the kill call and the event callback is measured and printed as ``overhead``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import otpy  # noqa: E402
from bench.stats import machine, print_series, summarize  # noqa: E402,F401  (others import them from here too)

NOTIFY = "import os; os.write(int(os.environ['OTPY_NOTIFY_FD']), b'READY\\n'); import time; time.sleep(3600)"


async def measure_restarts(spec: otpy.ChildSpec, n: int) -> list[float]:
    """SIGKILL -> ``started`` of the next incarnation, ``n`` times. A child with a hot standby
    (``spec.standby``) is killed only once its standby is ready again (that wait is not timed:
    the series is the restart of a child that has its standby)."""
    root = otpy.SupervisorSpec(id="root", max_restarts=n * 10, max_seconds=1, children=(spec,))
    node = otpy.AsyncNode(otpy.NodeSpec(name=f"bench-restart-{os.getpid()}", root=root),
                          on_output=lambda *_: None)
    started: asyncio.Queue = asyncio.Queue()
    await node.start()
    node.listeners.append(lambda e: e.kind == "started" and started.put_nowait((time.perf_counter(), e.pid)))
    samples = []
    try:
        pid = (await node.which_children())[0].pid
        for _ in range(n):
            if spec.standby:
                await standby_ready(node, spec.standby)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            t1, pid = await asyncio.wait_for(started.get(), 10)
            samples.append(t1 - t0)
    finally:
        await node.stop()
    return samples


async def standby_ready(node: otpy.AsyncNode, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await node.which_children())[0].standby < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no hot standby ready within {timeout} s")
        await asyncio.sleep(0.002)


def quietest(slices: list[list[float]]) -> list[float]:
    """Of a floor measured in several slices of the run (before, between and after the series), the
    slice with the lowest median: load from elsewhere only ever slows a floor down, so this is the
    best estimate of it, and a ratio to it never flatters the series."""
    return min(slices, key=lambda samples: sorted(samples)[len(samples) // 2])


def fork_floor(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"READY\n")
            os._exit(0)
        os.read(r, 16)
        samples.append(time.perf_counter() - t0)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    return samples


def exec_floor(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        r, w = os.pipe()
        env = dict(os.environ, OTPY_NOTIFY_FD=str(w))
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", NOTIFY], pass_fds=(w,), env=env)
        os.read(r, 16)
        samples.append(time.perf_counter() - t0)
        proc.kill()
        proc.wait()
        os.close(r)
        os.close(w)
    return samples


def overhead(n: int) -> list[float]:
    """What the harness adds: a kill of a dead-end pid plus a queue hand-off on the loop."""
    async def run():
        q: asyncio.Queue = asyncio.Queue()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                os.kill(2**22 + 1, 0)
            except OSError:
                pass
            q.put_nowait(time.perf_counter())
            t1 = await q.get()
            out.append(t1 - t0)
        return out

    return asyncio.run(run())


def run(n: int) -> tuple[dict, dict]:
    """Every series of this file: (summaries with ratios, raw samples in ms by series)."""
    program = otpy.ChildSpec(id="agent", program="bench.agents:Idle")
    command = otpy.ChildSpec(id="cmd", command=(sys.executable, "-c", NOTIFY), ready="notify")
    standby = otpy.ChildSpec(id="agent", program="bench.agents:Idle", standby=1)
    floors = [fork_floor(n)]
    program_samples = asyncio.run(measure_restarts(program, n))
    floors.append(fork_floor(n))
    standby_samples = asyncio.run(measure_restarts(standby, n))
    floors.append(fork_floor(n))
    raw = {
        "program": program_samples,
        "program_floor_fork": quietest(floors),
        "program_standby": standby_samples,
        "command": asyncio.run(measure_restarts(command, max(10, n // 4))),
        "command_floor_exec": exec_floor(max(10, n // 4)),
        "overhead": overhead(n),
    }
    results = {name: summarize(samples) for name, samples in raw.items()}
    results["floor_fork_slices_p50_ms"] = [summarize(f)["p50_ms"] for f in floors]
    results["ratios"] = {
        "program_p50_vs_fork": round(results["program"]["p50_ms"] / results["program_floor_fork"]["p50_ms"], 2),
        "program_standby_p50_vs_fork": round(results["program_standby"]["p50_ms"]
                                             / results["program_floor_fork"]["p50_ms"], 2),
        "command_p50_vs_exec": round(results["command"]["p50_ms"] / results["command_floor_exec"]["p50_ms"], 2),
    }
    return results, {name: [s * 1000 for s in samples] for name, samples in raw.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="restarts per series (default 200)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args()
    results, _ = run(args.n)
    results["machine"] = machine()
    print_series(results)
    print("ratios:", results["ratios"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)





if __name__ == "__main__":
    main()
