"""Scale: N program children under one dynamic supervisor.

Measured, for ``bench.agents:Idle`` children started one ``start_child`` after another (each
call returns once its child has reported READY):

- ``start``: per-child start latency (request to READY reply) and the total time to N ready;
- ``idle``: the node process's CPU over an idle period (psutil ``cpu_times`` user+system
  before/after, as % of one core). The node runs in this benchmark process, which only
  sleeps on the node's loop meanwhile. The zygote's and the children's CPU over the same
  period are reported beside it (not part of the node's number);
- ``memory``: the node's RSS, and each child's USS (``memory_full_info().uss``: pages only
  that process holds; pages shared with the zygote after fork are not counted);
- ``stop``: ``node.stop()`` with N children (the dynamic supervisor stops them in parallel);
- the scale curve: time to N ready, on a fresh node for each N;
- the floors (``bench/scale_floor.py``), after the node stopped: the same pre-imported
  interpreter forking N children that report READY on a pipe (``floor_pipe``) or over ZeroMQ
  (``floor_zmq``), timed the same way (total, latencies, by tenth, CPU per start).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import otpy  # noqa: E402
from bench.scale_floor import floor  # noqa: E402
from bench.stats import cpu_ns  # noqa: E402
from bench.stats import summarize  # noqa: E402

FLOORS = ("pipe", "zmq")  # the floor series, reported as ``floor_<kind>``

CURVE = (10, 100, 500, 1000)
MIB = 1024 * 1024


def _node(tag: str, n: int) -> otpy.AsyncNode:
    pool = otpy.DynamicSupervisorSpec(id="pool", max_children=n + 1)
    root = otpy.SupervisorSpec(id="root", children=(pool,))
    return otpy.AsyncNode(otpy.NodeSpec(name=f"bench-scale-{tag}-{os.getpid()}", root=root),
                          on_output=lambda *_: None)


async def _start_all(node: otpy.AsyncNode, n: int, at_tenth=None) -> tuple[float, list[float]]:
    """Start N children one after another; ``at_tenth()`` (if given) runs before each tenth
    of them and after the last."""
    latencies = []
    step = max(1, n // 10)
    t0 = time.perf_counter()
    for i in range(n):
        if at_tenth is not None and i % step == 0:
            at_tenth()
        t = time.perf_counter()
        result = await node.start_child("pool", otpy.ChildSpec(id=f"w{i}", program="bench.agents:Idle"))
        latencies.append(time.perf_counter() - t)
        if result.outcome != "ok":
            raise RuntimeError(f"child w{i} did not start: {result}")
    if at_tenth is not None:
        at_tenth()
    return time.perf_counter() - t0, latencies


def _minflt(pid: int) -> int:
    """Minor page faults of ``pid`` (all its threads) so far: after a fork, nearly all are
    copy-on-write faults and first touches, what a start costs the kernel."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return 0


def _per_start(values: list[int], n: int, scale: float = 1.0) -> list[float]:
    """Differences between successive snapshots, per start of each tenth (``n`` starts in all)."""
    step = max(1, n // 10)
    out = []
    for i in range(len(values) - 1):
        starts = min(step, n - i * step)
        out.append(round((values[i + 1] - values[i]) / max(1, starts) * scale, 2))
    return out


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _mem_summary(values: list[float]) -> dict:
    v = sorted(values)
    if not v:
        return {"p50_mib": 0.0, "max_mib": 0.0, "n": 0}
    return {"p50_mib": round(statistics.median(v) / MIB, 3), "max_mib": round(v[-1] / MIB, 3),
            "mean_mib": round(statistics.fmean(v) / MIB, 3), "n": len(v)}


def prefault(gib: float) -> float:
    """Touch ``gib`` GiB of fresh anonymous memory once, then free it; seconds it took.

    On a VM whose memory the host backs lazily (as on the one in docs/benchmarks.md), a page
    touched for the first time is also a fault in the host. 1,000 children make about 3 GiB of
    new pages; touching them first measures otpy, not the host's first-touch cost. Off by default.
    """
    import mmap

    t0 = time.perf_counter()
    with mmap.mmap(-1, int(gib * 2**30)) as memory:
        for offset in range(0, len(memory), mmap.PAGESIZE):
            memory[offset] = 1
    return time.perf_counter() - t0


async def scale_run(n: int, idle: float) -> dict:
    node = _node("main", n)
    await node.start()
    try:
        me = psutil.Process()
        zygote_pids = [p.pid for p in me.children() if p.environ().get("OTPY_NODE") == node.name]
        snapshots = []  # (node CPU ns, zygote CPU ns, node faults, zygote faults) before each tenth

        def snapshot() -> None:
            snapshots.append((cpu_ns(me.pid), sum(cpu_ns(z) for z in zygote_pids),
                              _minflt(me.pid), sum(_minflt(z) for z in zygote_pids)))

        total, latencies = await _start_all(node, n, snapshot)
        infos = sorted((c for c in await node.which_children("pool") if c.pid), key=lambda c: int(c.id[1:]))
        pids = [c.pid for c in infos]
        cpu0, cpu1 = snapshots[0], (*snapshots[-1][:2], sum(cpu_ns(p) for p in pids))
        child_cpu, child_faults = [cpu_ns(p) for p in pids], [_minflt(p) for p in pids]
        step = max(1, n // 10)
        tenths = {
            "node": _per_start([s[0] for s in snapshots], n, 1e-6),
            "zygote": _per_start([s[1] for s in snapshots], n, 1e-6),
            "child": [round(sum(child_cpu[i:i + step]) / len(child_cpu[i:i + step]) / 1e6, 2)
                      for i in range(0, len(child_cpu), step)],
        }
        faults = {"node": round((snapshots[-1][2] - snapshots[0][2]) / n),
                  "zygote": round((snapshots[-1][3] - snapshots[0][3]) / n),
                  "child": round(sum(child_faults) / max(1, len(child_faults)))}
        children = [psutil.Process(p) for p in pids]
        zygote = [p for p in me.children() if p.pid not in pids]
        await asyncio.sleep(0.5)  # let the last starts settle before the idle window
        before = (_cpu(me), sum(_cpu(z) for z in zygote), sum(_cpu(c) for c in children), time.perf_counter())
        await asyncio.sleep(idle)
        after = (_cpu(me), sum(_cpu(z) for z in zygote), sum(_cpu(c) for c in children), time.perf_counter())
        wall = after[3] - before[3]
        rss = me.memory_info().rss
        uss = [c.memory_full_info().uss for c in children]
        child_rss = [c.memory_info().rss for c in children]
    finally:
        t0 = time.perf_counter()
        await node.stop()
        stop = time.perf_counter() - t0
    return {
        "n": n,
        "ready_total_s": round(total, 3),
        "start_latencies": latencies,
        # CPU a start costs: the node's (this process) and the zygote's over the starts, and
        # what each child used up to the end of the starts (its start; idle since)
        "cpu_ms_per_start": {"node": round((cpu1[0] - cpu0[0]) / n / 1e6, 2),
                             "zygote": round((cpu1[1] - cpu0[1]) / n / 1e6, 2),
                             "child": round(cpu1[2] / n / 1e6, 2)},
        # the same by tenth of the starts (a rise with flat faults is a dearer fault: on a VM,
        # memory the host backs on first touch), and minor page faults per start
        "cpu_ms_per_start_by_tenth": tenths,
        "faults_per_start": faults,
        "idle": {"seconds": round(wall, 2),
                 "node_cpu_pct_of_core": round(100 * (after[0] - before[0]) / wall, 3),
                 "zygote_cpu_pct_of_core": round(100 * (after[1] - before[1]) / wall, 3),
                 "children_cpu_pct_of_core_total": round(100 * (after[2] - before[2]) / wall, 3)},
        "node_rss_mib": round(rss / MIB, 2),
        "child_uss": _mem_summary(uss),
        "child_rss": _mem_summary(child_rss),
        "stop_all_s": round(stop, 3),
        **{f"floor_{kind}": floor_series(kind, n) for kind in FLOORS},
    }


def by_tenth(latencies: list[float]) -> list[float]:
    """Mean start latency (ms) of each tenth of the series, in start order."""
    step = max(1, len(latencies) // 10)
    return [round(1000 * sum(latencies[i:i + step]) / len(latencies[i:i + step]), 2)
            for i in range(0, len(latencies), step)]


def floor_series(kind: str, n: int) -> dict:
    """``bench/scale_floor.py``'s series, summarized like the main one."""
    result = floor(kind, n)
    latencies = result.pop("start_latencies")
    return {**result, "start_latency": summarize(latencies), "start_ms_by_tenth": by_tenth(latencies)}


def print_floors(s: dict) -> None:
    """The floor series of a scale result, beside the main one (and the main one's CPU by
    tenth and faults per start, which say where its time goes)."""
    if "cpu_ms_per_start_by_tenth" in s:
        for who, row in s["cpu_ms_per_start_by_tenth"].items():
            print(f"CPU per start by tenth, {who} (ms): {row}")
        print("minor page faults per start:", s["faults_per_start"])
    for kind in FLOORS:
        f = s.get(f"floor_{kind}")
        if f:
            print(f"floor_{kind}: {f['n']} children ready in {f['ready_total_s']:.3f} s "
                  f"(otpy / floor {s['ready_total_s'] / f['ready_total_s']:.2f}x); start p50 "
                  f"{f['start_latency']['p50_ms']:.3f} ms; by tenth (ms) {f['start_ms_by_tenth']}; "
                  f"CPU per start (ms) {f['cpu_ms_per_start']}")


async def time_to_ready(n: int) -> float:
    node = _node(f"curve{n}", n)
    await node.start()
    try:
        total, _ = await _start_all(node, n)
    finally:
        await node.stop()
    return total


async def curve(cap: int, known: dict[int, float] | None = None) -> dict[int, float]:
    """Seconds to N ready for each N of CURVE up to ``cap`` (and ``cap`` itself)."""
    points = sorted({m for m in CURVE if m <= cap} | {cap})
    out = {}
    for m in points:
        out[m] = known[m] if known and m in known else round(await time_to_ready(m), 3)
    return out
