"""Two hosts on one machine (network namespaces joined by veth pairs, tests/netns_lab.py): what
a call and a variable cost across hosts, beside floors measured in the same run.

    python -m bench.cluster [--n 2000] [--writes 200] [--trials-per-worker 20] [--no-optimize] [--json FILE]

Run as root from the repository root (the lab needs ``ip netns``; PostgreSQL's binaries for
the registry and optimize series). Hosts: alpha (the caller, the writer, the optimizer), beta
(node b, the raw echo servers, node vb), gamma (PostgreSQL). The measuring functions are the
loopback benches', run across the veth: ``bench/remote_call.py`` (its ``--serve`` on beta, its
``client`` on alpha), ``bench/shared_registry.py`` (its programs and NOTIFY floor; node A in the
measuring process on alpha, node B on beta), ``bench/optimize_workers.py`` (``run_workers``).
Each latency series: p50/p95/p99/max over ``n`` samples.

- ``raw_tcp``: a pyzmq DEALER on alpha, a ROUTER echo on beta, one round trip at a time across
  the veth (the floor of any call); ``raw_curve``: the same with CURVE.
- ``local_call``: ``Caller.call`` of b's echo agent on beta (the call b serves anyway).
- ``remote_call``: ``Caller(cluster=...).call("echo@b")`` from alpha, through b's call gateway
  (CURVE TCP). Target: p50 <= 2x ``local_call``'s.
  Every call series and floor is measured in two slices (before and after the others); the
  quieter slice is reported.
- ``registry_floor``: a raw psycopg NOTIFY from alpha heard by a LISTEN on alpha, through the
  server on gamma; ``registry_remote``: a variable written on node A (alpha) until node B's
  program on beta ran ``on_config`` with it (the program's own clock, one machine's monotonic
  clock). Target: ``registry_remote`` p50 <= 50 ms.
- ``optimize``: trials/s of ``otpy optimize --workers 1, 2, 4`` on alpha with the study on
  gamma (a trial-bound objective: each trial's call takes --delay, 0.2 s by default; at 0.05 s the
  trial's own overhead, ~80 ms on this loaded 2-core VM, bounds it). Target: 1 -> 2 workers >= 1.6x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.stats import print_series, summarize  # noqa: E402

MEASURE_TIMEOUT = 600


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# --- what runs inside a host (python -m bench.cluster _inside KIND ...) ----------------------------

def measure_calls(where: dict, n: int) -> dict:
    """On alpha: bench/remote_call.py's client against what its --serve printed on beta."""
    from bench.remote_call import client

    return client(where, n, local=False)


def measure_local_call(n: int) -> dict:
    """On beta: the local call of the node bench/remote_call.py serves, as its client measures it."""
    from bench.remote_call import INPUTS, timed
    from otpy.wire.calls import Caller
    from otpy.wire.client import pick_node

    with Caller(pick_node(None)) as caller:  # the one node on beta: the one --serve started
        return summarize(timed(lambda: caller.call("echo", INPUTS), n))


def measure_registry(url: str, report: str, n: int) -> dict:
    """On alpha: node A (in this process) writes ``knob`` ``n`` times; each sample is the time
    until node B's program (bench/shared_registry.py's Stamp, on beta) ran on_config with it,
    stamped by B on the machine's monotonic clock and sent to ``report`` (a unix datagram
    socket: a path in the machine's files, reachable from every namespace). The floor: that
    bench's NOTIFY -> LISTEN round trip, from here to the server on gamma and back."""
    import socket

    import otpy
    from bench.shared_registry import floor
    from otpy.specs.model import ChildSpec, NodeSpec, SupervisorSpec
    from otpy.variables.placement import with_registry

    inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    inbox.bind(report)
    os.chmod(report, 0o666)  # B's program runs as this user anyway; the folder is the lab's
    inbox.settimeout(10)
    before = floor(url, n)
    a_root = SupervisorSpec(id="root", children=(ChildSpec(id="quiet", program="bench.shared_registry:Quiet"),))
    samples = []
    with otpy.Node(NodeSpec(name="bench-a", root=with_registry(a_root, VARIABLES, storage=url))) as a:
        for i in range(1, n + 11):
            start = time.monotonic()
            outcome = a.set_variables("global", {"knob": float(i)})
            if not outcome.ok:
                raise SystemExit(f"write {i}: {outcome.outcome}: {outcome.detail}")
            while True:
                knob, when = inbox.recv(200).decode().split()
                if float(knob) == float(i):
                    break
            if i > 10:
                samples.append(float(when) - start)
    after = floor(url, n)
    inbox.close()
    return {"registry_remote": summarize(samples), "registry_floor": quieter(before, after)}


VARIABLES = {"global": {"knob": {"type": "float", "low": 0.0, "high": 1e9, "default": 0.0}}}  # shared_registry's


def measure_optimize(url: str, counts: list[int], trials_per_worker: int, delay: float) -> list[dict]:
    from bench.optimize_workers import run_workers
    from tests.postgres_server import PostgresServer

    class Reached(PostgresServer):
        """The server on another host, as this host reaches it (new_database connects from here)."""

        def __init__(self, admin_url: str) -> None:
            self._admin = admin_url

        def new_database(self, prefix: str = "t") -> str:
            from tests.postgres_server import database_on

            return database_on(self._admin, prefix)

    folder = os.environ["XDG_DATA_HOME"]
    return [run_workers(Reached(url), folder, count, trials_per_worker * count, delay, dict(os.environ))
            for count in counts]


def inside(argv: list[str]) -> None:
    kind, rest = argv[0], argv[1:]
    if kind == "calls":
        result = measure_calls(json.loads(rest[0]), int(rest[1]))
    elif kind == "local":
        result = measure_local_call(int(rest[0]))
    elif kind == "registry":
        result = measure_registry(rest[0], rest[1], int(rest[2]))
    elif kind == "optimize":
        result = measure_optimize(rest[0], [int(c) for c in rest[1].split(",")], int(rest[2]), float(rest[3]))
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    print(json.dumps(result))


# --- the run (the machine's own namespace: builds the lab, asks the hosts) -------------------------

def in_host(lab, host: str, *argv: str) -> object:
    done = lab.run(host, [sys.executable, "-m", "bench.cluster", "_inside", *argv], cwd=ROOT,
                   timeout=MEASURE_TIMEOUT)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} on {host} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def otpy(lab, host: str, *args: str) -> str:
    done = lab.run(host, [sys.executable, "-m", "otpy", *args], cwd=ROOT, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"otpy {' '.join(args)} on {host}: {done.stdout}{done.stderr}")
    return done.stdout


def start_node(lab, host: str, name: str, body: str) -> str:
    path = lab.hosts[host].folder / f"{name}.toml"
    path.write_text(body)
    otpy(lab, host, "start", str(path), "--detach")
    return name


def quieter(*slices) -> dict:
    """The slice (samples, or a summary) with the lowest p50, and every slice's p50."""
    summaries = [s if isinstance(s, dict) else summarize(s) for s in slices]
    best = min(summaries, key=lambda s: s["p50_ms"])
    return {**{k: v for k, v in best.items() if k != "slices_p50_ms"}, "slices_p50_ms": [s["p50_ms"] for s in summaries]}


B_NODE = """[node]
name = "bench-b"

[registry]
storage = "{url}"

[variables.global]
knob = {{ type = "float", low = 0.0, high = 1e9, default = 0.0 }}

[supervisor]

[[supervisor.children]]
id = "stamp"
program = "bench.shared_registry:Stamp"
args = {{ report = "{report}" }}
"""


def run(args) -> dict:
    from tests.netns_lab import Lab, _stop_processes as stop_processes

    report: dict = {"lab": {}, "series": {}, "targets": {}}
    began = time.perf_counter()
    lab = Lab(["alpha", "beta", "gamma"]).start()
    report["lab"]["setup_seconds"] = round(lab.setup_seconds, 3)
    series = report["series"]
    served = None
    try:
        log(f"lab up in {lab.setup_seconds * 1000:.0f} ms: alpha {lab.address('alpha')}, beta {lab.address('beta')}, "
            f"gamma {lab.address('gamma')}")
        log(f"calls: bench.remote_call --serve on beta, its client on alpha, n={args.n} a series, two slices")
        served = lab.popen("beta", [sys.executable, "-m", "bench.remote_call", "--serve", lab.address("beta")],
                           cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        where = served.stdout.readline()
        if not where.strip():
            raise SystemExit("bench.remote_call --serve did not start on beta")
        n = str(args.n)
        first = in_host(lab, "alpha", "calls", where, n)
        local = [in_host(lab, "beta", "local", n), in_host(lab, "beta", "local", n)]
        second = in_host(lab, "alpha", "calls", where, n)
        for name in ("raw_tcp", "raw_curve", "remote_call"):
            series[name] = quieter(first[name], second[name])
        series["local_call"] = quieter(*local)
        served.stdin.close()
        stop_processes([lab.netns("beta")])  # node b and the raw echoes (their fork holds the node's stdin)
        report["targets"]["remote_call_p50_vs_local_x"] = target(
            series["remote_call"]["p50_ms"] / series["local_call"]["p50_ms"], 2.0, True)
        report["targets"]["remote_call_p50_vs_raw_curve_x"] = {
            "measured": round(series["remote_call"]["p50_ms"] / series["raw_curve"]["p50_ms"], 2)}

        log(f"registry: PostgreSQL on gamma, node A on alpha writes, node B on beta follows, {args.writes} writes")
        database = lab.postgres("gamma")
        url = lab.new_database(database, "bench")
        inbox = str(lab.folder / "report.sock")
        b_file = lab.hosts["beta"].folder / "bench-b.toml"
        b_file.write_text(B_NODE.format(url=url, report=inbox))
        otpy(lab, "beta", "start", str(b_file), "--detach")
        series.update(in_host(lab, "alpha", "registry", url, inbox, str(args.writes)))
        report["targets"]["registry_remote_p50_ms"] = target(series["registry_remote"]["p50_ms"], 50.0, True)
        otpy(lab, "beta", "stop", "--node", "bench-b")

        if not args.no_optimize:
            log(f"optimize: --workers 1, 2, 4 on alpha, the study on gamma, {args.trials_per_worker} trials a worker")
            optimize = in_host(lab, "alpha", "optimize", database.url(), "1,2,4", str(args.trials_per_worker),
                               str(args.delay))
            report["optimize"] = optimize
            rate = {entry["workers"]: entry["steady_trials_per_second"] for entry in optimize}
            report["targets"]["optimize_scaling_1_to_2_x"] = target(rate[2] / rate[1], 1.6, False)
            report["targets"]["optimize_scaling_1_to_4_x"] = {"measured": round(rate[4] / rate[1], 2)}
    finally:
        if served is not None and served.poll() is None:
            served.kill()
        lab.close()
    report["seconds"] = round(time.perf_counter() - began, 1)
    from bench.stats import machine

    report["machine"] = machine()
    return report


def target(measured: float, limit: float, at_most: bool) -> dict:
    met = measured <= limit if at_most else measured >= limit
    return {"measured": round(measured, 3), "target": limit, "rule": f"{'<=' if at_most else '>='} {limit:g}",
            "met": met}


def print_report(report: dict) -> None:
    print(f"lab: 3 namespaces on a bridge, up in {report['lab']['setup_seconds'] * 1000:.0f} ms")
    print_series(report["series"])
    for entry in report.get("optimize", []):
        print(f"optimize --workers {entry['workers']}: steady {entry['steady_trials_per_second']:.2f} trials/s "
              f"({entry['steady_trials']} trials in {entry['steady_window_seconds']} s), "
              f"cli {entry['cli_trials_per_second']:.2f} trials/s")
    for name, verdict in report["targets"].items():
        if "met" in verdict:
            print(f"{name:36s} {verdict['measured']:9.3f}  target {verdict['rule']:8s} "
                  f"{'met' if verdict['met'] else 'NOT MET'}")
        else:
            print(f"{name:36s} {verdict['measured']:9.3f}")


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_inside"]:
        inside(argv[1:])
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="round trips per call series")
    parser.add_argument("--writes", type=int, default=200, help="variable writes of the registry series")
    parser.add_argument("--trials-per-worker", type=int, default=20)
    parser.add_argument("--delay", type=float, default=0.2,
                        help="seconds a trial's call takes (optimize: trial-bound, as the target asks)")
    parser.add_argument("--no-optimize", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    from tests.netns_lab import unavailable_reason

    if reason := unavailable_reason():
        raise SystemExit(f"bench.cluster: {reason}")
    report = run(args)
    print_report(report)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    return report


if __name__ == "__main__":
    main()
