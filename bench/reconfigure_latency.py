"""Reconfigure latency: a Reconfigure action sent, until the new program serves its first call.

    python bench/reconfigure_latency.py [--n 200] [--json FILE]

The node runs in its own process (``otpy start --detach``), as in production: the action
travels over the control socket, the dynamic supervisor starts the target beside the source,
waits for READY, swaps the name, stops the source, and replies; then the benchmark calls the
agent until the new program answers (a reply carrying the new program's mark). The clock
stops at that reply: the full event, not the moment a pid exists.

Series: ``reconfigure`` (action sent → first call served by the target), ``action_reply``
(action sent → its reply), ``vars_set`` (``set_variables`` of the ``module`` variable a child's
program is bound to, sent → first call served by the new program: the same make-before-break
swap, plus the registry's dry run and commit), and, as the baseline measured in the same run,
``call`` (one call round trip on the same agent, the client overhead inside ``reconfigure``)
and ``restart`` (SIGKILL → the replacement answers a call).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import otpy  # noqa: E402
from bench.restart_latency import machine, summarize  # noqa: E402

TOPOLOGY = """
[node]
name = "{name}"
[supervisor]
max_restarts = 100000
max_seconds = 1
[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
max_restarts = 100000
max_seconds = 1
[[supervisor.children]]
id = "bound"
program = {{ variable = "global.mark" }}
[variables.global]
mark = {{ type = "module", modules = ["bench.marks:MarkA", "bench.marks:MarkB"], default = "bench.marks:MarkA" }}
"""
PROGRAMS = ("bench.marks:MarkA", "bench.marks:MarkB")


def first_answer_from(caller: otpy.Caller, mark: str, deadline: float, agent: str = "agent") -> None:
    while time.perf_counter() < deadline:
        try:
            if caller.call(agent, {}, timeout=2.0).get("mark") == mark:
                return
        except otpy.CallError:
            pass
    raise TimeoutError(f"no answer from {mark} in time")


def run(n: int) -> dict:
    name = f"bench-reconf-{os.getpid()}"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "t.toml")
        with open(path, "w") as f:
            f.write(TOPOLOGY.format(name=name))
        subprocess.run([sys.executable, "-m", "otpy", "start", path, "--detach"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        try:
            return measure(name, n)
        finally:
            subprocess.run([sys.executable, "-m", "otpy", "stop", "--node", name], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(name: str, n: int) -> dict:
    total, replies, calls, restarts, writes = [], [], [], [], []
    with otpy.connect(name) as client, otpy.Caller(name) as caller:
        assert client.start_child("pool", otpy.ChildSpec(id="agent", program=PROGRAMS[0])).ok
        first_answer_from(caller, "A", time.perf_counter() + 10)
        for i in range(n):
            program = PROGRAMS[(i + 1) % 2]
            t0 = time.perf_counter()
            result = client.reconfigure("pool", "agent", otpy.ChildSpec(id="agent", program=program))
            t1 = time.perf_counter()
            assert result.ok, result
            first_answer_from(caller, program[-1], t1 + 10)
            t2 = time.perf_counter()
            total.append(t2 - t0)
            replies.append(t1 - t0)
            t3 = time.perf_counter()
            caller.call("agent", {})
            calls.append(time.perf_counter() - t3)
        first_answer_from(caller, "A", time.perf_counter() + 10, "bound")
        for i in range(n):
            program = PROGRAMS[(i + 1) % 2]
            t0 = time.perf_counter()
            result = client.set_variables("global", {"mark": program})
            assert result.ok, result
            first_answer_from(caller, program[-1], time.perf_counter() + 10, "bound")
            writes.append(time.perf_counter() - t0)
        for _ in range(max(10, n // 4)):
            pid = client.which_children("pool")[0].pid
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            while True:
                try:
                    if caller.call("agent", {}, timeout=2.0)["pid"] != pid:
                        break
                except otpy.CallError:
                    pass
            restarts.append(time.perf_counter() - t0)
    return {"reconfigure": summarize(total), "action_reply": summarize(replies), "vars_set": summarize(writes),
            "call": summarize(calls), "restart": summarize(restarts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="reconfigurations (default 200)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args()
    results = run(args.n)
    for series, row in results.items():
        print(f"{series:14s} n={row['n']:4d}  p50 {row['p50_ms']:8.3f} ms  p95 {row['p95_ms']:8.3f}  "
              f"p99 {row['p99_ms']:8.3f}  max {row['max_ms']:8.3f}")
    results["machine"] = machine()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
