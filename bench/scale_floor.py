"""The floor of the scale series: what N children cost without otpy.

One interpreter that imports what the zygote imports (``otpy.processes.zygote``: msgspec, zmq,
``otpy.agent.bootstrap`` and the worker's modules) and ``bench.agents``, freezes them for the
garbage collector as the zygote does, then forks N children one after another. Each child
reports READY and stays alive; the parent waits for that READY before the next fork. Then all
are killed and reaped.

- ``pipe``: the child writes READY on a pipe the parent reads;
- ``zmq``: the child makes a ZeroMQ context (one I/O thread) and a PUSH socket, connects it
  to the parent's PULL socket (ipc) and sends READY over it.

Timed like ``bench/scale.py``'s series: total time to N ready, each start's latency (the fork
to the READY the parent read), and CPU per start of the parent and of the children (each
thread's ``/proc/PID/task/TID/schedstat``, the children's read before they are killed).

Run as ``python -m bench.scale_floor KIND N`` (a fresh interpreter, like the zygote): it prints
one JSON object. ``floor(kind, n)`` does that from the benchmark.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from bench.stats import cpu_ns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def floor(kind: str, n: int) -> dict:
    """Run the floor series in a fresh interpreter; its JSON result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "bench.scale_floor", kind, str(n)], env=env, cwd=ROOT,
                         check=True, capture_output=True, text=True, timeout=120 + n * 0.1)
    return json.loads(out.stdout)


def _pipe_child(w: int) -> None:
    os.write(w, b"READY\n")
    while True:
        signal.pause()


def _zmq_child(endpoint: str) -> None:
    import zmq

    context = zmq.Context(io_threads=1)
    push = context.socket(zmq.PUSH)
    push.connect(endpoint)
    push.send(b"READY")
    while True:
        signal.pause()


def _series(kind: str, n: int) -> dict:
    import gc

    import otpy.processes.zygote  # noqa: F401  (the zygote's imports)
    import bench.agents  # noqa: F401  (the benchmark's program)

    gc.freeze()
    pids: list[int] = []
    latencies: list[float] = []
    folder = tempfile.mkdtemp(prefix="otpy-scale-floor-")
    pull = None
    if kind == "zmq":
        import zmq

        context = zmq.Context(io_threads=1)
        pull = context.socket(zmq.PULL)
        endpoint = f"ipc://{folder}/floor.sock"
        pull.bind(endpoint)
    me = os.getpid()
    try:
        cpu0 = cpu_ns(me)
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            if kind == "pipe":
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    try:
                        os.close(r)
                        _pipe_child(w)
                    finally:
                        os._exit(1)
                os.close(w)
                if os.read(r, 16) != b"READY\n":
                    raise RuntimeError("a floor child did not report READY")
                os.close(r)
            else:
                pid = os.fork()
                if pid == 0:
                    try:
                        _zmq_child(endpoint)
                    finally:
                        os._exit(1)
                pull.recv()
            latencies.append(time.perf_counter() - t)
            pids.append(pid)
        total = time.perf_counter() - t0
        cpu_parent = cpu_ns(me) - cpu0
        cpu_children = sum(cpu_ns(pid) for pid in pids)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            os.waitpid(pid, 0)
        if pull is not None:
            pull.close(linger=0)
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)
    return {"n": n, "ready_total_s": round(total, 3), "start_latencies": latencies,
            "cpu_ms_per_start": {"parent": round(cpu_parent / n / 1e6, 2),
                                 "child": round(cpu_children / n / 1e6, 2)}}


if __name__ == "__main__":
    json.dump(_series(sys.argv[1], int(sys.argv[2])), sys.stdout)
