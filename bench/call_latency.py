"""Agent call latency and throughput, with raw pyzmq DEALER/ROUTER echo as the baseline.

    python bench/call_latency.py [--n 5000] [--json out.json]

Series: ``raw_zmq`` (one DEALER, a forked ROUTER echo process, over ipc), ``otpy_call``
(``Caller.call`` to an echo agent: sync, one call at a time), ``otpy_submit`` (one
``submit(...).result()`` at a time: the I/O-thread path), ``throughput_k`` (n calls kept
64 in flight over k = 1, 2, 4 echo agents; latency is submit to result). Each series has
``p50_ms``, ``p95_ms``, ``p99_ms``, ``max_ms``, ``n``; throughput ones also ``calls_per_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
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
