"""A registry write on node A reconciled on node B, both on one PostgreSQL database (#18).

    python -m bench.shared_registry [--n 200] [--json FILE]

Starts a private PostgreSQL server (``tests/postgres_server.py``: initdb in a temporary folder,
a free port, stopped at the end) and two nodes in this process, A and B (different names, one
database, private runtime and state folders). A runs a program that takes each write quietly; B runs one program whose
``on_config`` sends the time it ran to this process (a unix datagram). One sample: the time from
just before ``A.set_variables`` (its dry run, its commit and NOTIFY) to the moment B's
``on_config`` ran the value (B's registry LISTENed, folded the row in and published it; B's
worker handed it to the program): p50, p95, p99. Beside it, the time ``A.set_variables`` took
to return (A's own write through its node: dry run, checks, commit, A's program synced), most
of the total.

The floor, measured on the same server in the same run: a raw psycopg ``NOTIFY`` on one
connection to the ``LISTEN`` of another (a thread blocked in ``notifies()``), the least any
change event across nodes through this database costs. Target: p50 <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import otpy  # noqa: E402


class Stamp(otpy.Program):
    """B's program: each ``on_config`` sends ``"KNOB MONOTONIC"`` to ``args["report"]``."""

    def setup(self, args, config):
        self.report = args["report"]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def on_config(self, config):
        self.sock.sendto(f"{config['knob']!r} {time.monotonic()!r}".encode(), self.report)

    def forward(self, **inputs):
        return {}


class Quiet(otpy.Program):
    """A's program: takes every configuration as it comes (no restart per write)."""

    def on_config(self, config):
        pass

    def forward(self, **inputs):
        return {}


def floor(url: str, n: int) -> list[float]:
    """NOTIFY -> LISTEN round trips on ``url``'s server: the seconds of each."""
    import psycopg

    listener = psycopg.connect(url, autocommit=True)
    sender = psycopg.connect(url, autocommit=True)
    listener.execute("LISTEN bench_floor")
    heard: dict[str, float] = {}
    got = threading.Event()

    def listen():
        for note in listener.notifies():
            heard[note.payload] = time.monotonic()
            got.set()
            if note.payload == "stop":
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    samples = []
    for i in range(n + 10):
        got.clear()
        start = time.monotonic()
        sender.execute("SELECT pg_notify('bench_floor', %s)", (str(i),))
        if not got.wait(5):
            raise RuntimeError("a NOTIFY was not heard within 5 s")
        if i >= 10:  # the first ones warm the connections
            samples.append(heard[str(i)] - start)
    sender.execute("SELECT pg_notify('bench_floor', 'stop')")
    thread.join(5)
    listener.close()
    sender.close()
    return samples


def shared(url: str, n: int, folder: str) -> tuple[list[float], list[float]]:
    """A.set_variables -> B's on_config, ``n`` times: the seconds of each, and the seconds
    A.set_variables took to return (A's own write: dry run, checks, commit, A's program synced)."""
    from otpy.specs.model import ChildSpec, NodeSpec, SupervisorSpec
    from otpy.variables.placement import with_registry

    report = os.path.join(folder, "report.sock")
    inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    inbox.bind(report)
    inbox.settimeout(10)
    variables = {"global": {"knob": {"type": "float", "low": 0.0, "high": 1e9, "default": 0.0}}}
    a_root = SupervisorSpec(id="root", children=(ChildSpec(id="quiet", program="bench.shared_registry:Quiet"),))
    b_root = SupervisorSpec(id="root", children=(
        ChildSpec(id="stamp", program="bench.shared_registry:Stamp", args={"report": report}),))
    tag = os.getpid()
    samples, returned = [], []
    with otpy.Node(NodeSpec(name=f"bench-a-{tag}", root=with_registry(a_root, variables, storage=url))) as a, \
            otpy.Node(NodeSpec(name=f"bench-b-{tag}", root=with_registry(b_root, variables, storage=url))):
        for i in range(1, n + 11):
            start = time.monotonic()
            outcome = a.set_variables("global", {"knob": float(i)})
            done = time.monotonic()
            if not outcome.ok:
                raise RuntimeError(f"write {i}: {outcome.outcome}: {outcome.detail}")
            while True:
                knob, when = inbox.recv(200).decode().split()
                if float(knob) == float(i):
                    break
            if i > 10:
                samples.append(float(when) - start)
                returned.append(done - start)
    inbox.close()
    return samples, returned


def main(argv: list[str] | None = None) -> dict:
    from bench.stats import machine, summarize
    from tests.postgres_server import PostgresServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--json", help="write the report here")
    options = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="otpy-bench-shared-")
    for variable, sub in (("OTPY_RUNTIME_DIR", "run"), ("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "data")):
        os.makedirs(os.path.join(folder, sub), mode=0o700)
        os.environ[variable] = os.path.join(folder, sub)
    server = PostgresServer.start()
    try:
        url = server.new_database("bench")
        floor_before = floor(url, options.n)
        series, returned = shared(url, options.n, folder)
        floor_after = floor(url, options.n)
    finally:
        server.stop()
    quiet = min((summarize(floor_before), summarize(floor_after)), key=lambda s: s["p50_ms"])
    result = {"scenario": "shared_registry", "write_on_a_reconciled_on_b": summarize(series),
              "floor_notify_listen": quiet, "a_write_returned": summarize(returned), "target_p50_ms": 50.0, "machine": machine()}
    result["ratio_p50"] = round(result["write_on_a_reconciled_on_b"]["p50_ms"] / max(quiet["p50_ms"], 1e-6), 2)
    for name in ("write_on_a_reconciled_on_b", "a_write_returned", "floor_notify_listen"):
        s = result[name]
        print(f"{name:28s} p50 {s['p50_ms']:8.3f} ms  p95 {s['p95_ms']:8.3f} ms  p99 {s['p99_ms']:8.3f} ms  "
              f"max {s['max_ms']:8.3f} ms  n {s['n']}")
    met = result["write_on_a_reconciled_on_b"]["p50_ms"] <= 50.0
    print(f"target: p50 <= 50 ms: {'met' if met else 'NOT met'}")
    if options.json:
        with open(options.json, "w") as out:
            json.dump(result, out, indent=2)
    return result


if __name__ == "__main__":
    main()
