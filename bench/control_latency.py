"""Control-socket latency: round trips of the blocking client to a node in another process.

    python bench/control_latency.py [--n 500] [--json FILE]

The node is started with ``otpy start --detach`` (its own process, its own runtime folder
in a temporary directory) and stopped with ``Client.stop()`` at the end. Two series:

- ``which_children``: one request, one reply (the floor: encode, ipc, decode, one loop turn).
- ``start_terminate``: ``start_child`` of a ``sleep`` command on a dynamic supervisor (the
  reply comes once exec succeeded) followed by ``terminate_child`` (the reply comes once the
  child is dead), timed together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import otpy  # noqa: E402
from bench.stats import summarize  # noqa: E402

TOPOLOGY = """
[node]
name = "bench-control"

[supervisor]

[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
"""


def timed(operation, n: int) -> list[float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        operation(i)
        samples.append(time.perf_counter() - t0)
    return samples


def run(n: int) -> dict:
    client = otpy.connect("bench-control", timeout=30)
    try:
        for _ in range(20):  # warm up
            client.which_children("pool")
        results = {"which_children": summarize(timed(lambda i: client.which_children("pool"), n))}

        def start_terminate(i: int) -> None:
            spec = otpy.ChildSpec(id=f"w{i}", command=("sleep", "3600"))
            assert client.start_child("pool", spec).outcome == "ok"
            assert client.terminate_child(f"w{i}", "pool").outcome == "ok"

        results["start_terminate"] = summarize(timed(start_terminate, n))
        return results
    finally:
        client.stop()
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="round trips per series")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="otpy-bench-") as runtime:
        os.environ["OTPY_RUNTIME_DIR"] = runtime
        topology = Path(runtime) / "topology.toml"
        topology.write_text(TOPOLOGY)
        subprocess.run([sys.executable, "-m", "otpy", "start", str(topology), "--detach"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        results = run(args.n)
    for series, stats in results.items():
        print(f"{series:<16} n={stats['n']:<5} p50 {stats['p50_ms']:.3f} ms  p95 {stats['p95_ms']:.3f} ms  "
              f"p99 {stats['p99_ms']:.3f} ms  max {stats['max_ms']:.3f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
