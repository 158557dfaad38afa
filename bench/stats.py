"""What every benchmark reports: percentiles of a series, and the machine it ran on.

Every series has the keys ``p50_ms``, ``p95_ms``, ``p99_ms``, ``max_ms``, ``mean_ms`` and ``n``.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))


def summarize(samples_s: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples_s)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))]

    return {"p50_ms": round(pct(50), 3), "p95_ms": round(pct(95), 3), "p99_ms": round(pct(99), 3),
            "max_ms": round(ms[-1], 3), "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


def cpu_ns(pid: int) -> int:
    """CPU time of every live thread of ``pid``, in ns (``/proc/PID/task/*/schedstat``: finer
    than the 10 ms ticks of ``cpu_times``, which round a child's start to 0)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def print_series(results: dict) -> None:
    for name, row in results.items():
        if not isinstance(row, dict) or "p50_ms" not in row:
            continue
        print(f"{name:22s} n={row['n']:4d}  p50 {row['p50_ms']:9.3f} ms  p95 {row['p95_ms']:9.3f}  "
              f"p99 {row['p99_ms']:9.3f}  max {row['max_ms']:9.3f}")


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor())
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=HERE).stdout.strip()
    with open(os.path.join(os.path.dirname(HERE), "pyproject.toml"), "rb") as f:
        otpy_version = tomllib.load(f)["project"]["version"]
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "otpy": otpy_version, "commit": commit + ("+dirty" if dirty else ""),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "damon": damon()}


def damon() -> str:
    """Whether the kernel's DAMON monitor runs (``kdamond``): its physical-address sampling walks
    every mapping of a page, and 1,000 children share the zygote's pages (see benchmarks.md)."""
    root = "/sys/kernel/mm/damon/admin/kdamonds"
    try:
        states = [open(f"{root}/{k}/state").read().strip() for k in os.listdir(root) if k.isdigit()]
    except OSError:
        return "absent"
    return ", ".join(states) or "none configured"
