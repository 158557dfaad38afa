"""Agent call latency and throughput, with raw pyzmq DEALER/ROUTER echo as the baseline.

    python bench/call_latency.py [--n 5000] [--json out.json]

Series: ``raw_zmq`` (one DEALER, a forked ROUTER echo process, over ipc), ``otpy_call``
(``Caller.call`` to an echo agent: sync, one call at a time), ``otpy_submit`` (one
``submit(...).result()`` at a time: the I/O-thread path), ``throughput_k`` (n calls kept
64 in flight over k = 1, 2, 4 echo agents; latency is submit to result), ``pipelined_k``
(one caller keeps k = 8, 64 calls in flight to one agent with ``submit``), ``callers_4`` (4
caller threads of this process, each a loop of ``Caller.call`` on its own socket, n calls in
all to one agent) and ``caller_processes_4`` (the same from 4 processes). Threads, not
processes, make the headline: on 2 cores, 4 processes (each with its own ZeroMQ I/O thread)
are ~10 runnable threads waking each other per call, and did 11-15k calls/s where 4 threads
did 14-23k (the GIL does not dominate: a thread waiting for its reply releases it). Each series has ``p50_ms``, ``p95_ms``, ``p99_ms``,
``max_ms``, ``n``; throughput ones also ``calls_per_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import tempfile
import time
from collections import deque

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import zmq  # noqa: E402
from bench.stats import summarize  # noqa: E402

WINDOW = 64


def echo(**inputs):
    return inputs


def timed(fn, n: int, warmup: int = 200) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def raw_zmq(n: int, folder: str) -> dict:
    endpoint = f"ipc://{folder}/raw.sock"
    pid = os.fork()
    if pid == 0:
        router = zmq.Context().socket(zmq.ROUTER)
        router.bind(endpoint)
        while True:
            router.send_multipart(router.recv_multipart(copy=False), copy=False)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(endpoint)
    try:
        def round_trip():
            dealer.send(b'{"text": "hi"}')
            dealer.recv()
        return summarize(timed(round_trip, n))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        dealer.close(linger=0)
        context.term()


def throughput(caller, agents: list[str], n: int) -> dict:
    in_flight: deque = deque()
    samples = []
    start = time.perf_counter()
    for i in range(n):
        if len(in_flight) >= WINDOW:
            sent, future = in_flight.popleft()
            future.result()
            samples.append(time.perf_counter() - sent)
        in_flight.append((time.perf_counter(), caller.submit(agents[i % len(agents)], {"i": i})))
    for sent, future in in_flight:
        future.result()
        samples.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - start
    return {**summarize(samples), "calls_per_s": round(n / elapsed)}


def pipelined(caller, agent: str, n: int, k: int) -> dict:
    """One caller, ``k`` calls in flight to ``agent``."""
    in_flight: deque = deque()
    samples = []
    start = time.perf_counter()
    for i in range(n):
        if len(in_flight) >= k:
            sent, future = in_flight.popleft()
            future.result()
            samples.append(time.perf_counter() - sent)
        in_flight.append((time.perf_counter(), caller.submit(agent, {"i": i})))
    for sent, future in in_flight:
        future.result()
        samples.append(time.perf_counter() - sent)
    return {**summarize(samples), "calls_per_s": round(n / (time.perf_counter() - start))}


CALLER_LOOP = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from otpy.wire.calls import Caller
node, agent, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
with Caller(node) as caller:
    for _ in range(200):
        caller.call(agent, {"text": "hi"})
    print("ready", flush=True)
    sys.stdin.readline()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        caller.call(agent, {"text": "hi"})
        samples.append(time.perf_counter() - start)
print(json.dumps(samples), flush=True)
"""


def caller_processes(node: str, agent: str, n: int, k: int) -> dict:
    """``k`` processes, each a loop of ``Caller.call``: n calls in all to ``agent``, from the moment
    all are ready (warmed up) to the last reply."""
    procs = [subprocess.Popen([sys.executable, "-c", CALLER_LOOP, ROOT, node, agent, str(n // k)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        start = time.perf_counter()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        samples = [s for proc in procs for s in json.loads(proc.stdout.readline())]
        elapsed = time.perf_counter() - start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return {**summarize(samples), "calls_per_s": round(len(samples) / elapsed)}


def caller_threads(caller, agent: str, n: int, k: int) -> dict:
    """``k`` threads of this process, each a loop of ``caller.call``: n calls in all to ``agent``,
    from the moment all are ready (warmed up, each on its own socket) to the last reply."""
    samples: list[float] = []
    go = threading.Barrier(k + 1)

    def loop() -> None:
        mine = []
        for _ in range(200):
            caller.call(agent, {"text": "hi"})
        go.wait()
        for _ in range(n // k):
            start = time.perf_counter()
            caller.call(agent, {"text": "hi"})
            mine.append(time.perf_counter() - start)
        samples.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(k)]
    for thread in threads:
        thread.start()
    go.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return {**summarize(samples), "calls_per_s": round(len(samples) / (time.perf_counter() - start))}


def otpy_series(n: int) -> dict:
    import otpy
    from otpy.wire.calls import Caller

    children = tuple(otpy.ChildSpec(id=f"echo{k}", program="bench.call_latency:echo") for k in range(4))
    node = otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=children), name=f"bench-{os.getpid()}").start()
    try:
        with Caller(node.name) as caller:
            results = {
                "otpy_call": summarize(timed(lambda: caller.call("echo0", {"text": "hi"}), n)),
                "otpy_submit": summarize(timed(lambda: caller.submit("echo0", {"text": "hi"}).result(), n)),
            }
            for k in (1, 2, 4):
                throughput(caller, [f"echo{j}" for j in range(k)], min(n, 2000))  # warm up
                results[f"throughput_{k}"] = throughput(caller, [f"echo{j}" for j in range(k)], n)
            for k in (8, 64):
                results[f"pipelined_{k}"] = pipelined(caller, "echo0", n, k)
            results["callers_4"] = caller_threads(caller, "echo0", n, 4)
            results["caller_processes_4"] = caller_processes(node.name, "echo0", n, 4)
            return results
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="otpy-bench-") as folder:
        os.environ.setdefault("OTPY_RUNTIME_DIR", folder)
        results = {"raw_zmq": raw_zmq(args.n, folder), **otpy_series(args.n)}
    base = results["raw_zmq"]["p50_ms"]
    print(f"{'series':<14} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'calls/s':>8}  p50/raw")
    for name, s in results.items():
        rate = s.get("calls_per_s", "")
        print(f"{name:<14} {s['p50_ms']:>8.3f} {s['p95_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['max_ms']:>8.2f} "
              f"{rate:>8}  {s['p50_ms'] / base:5.2f}x")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
