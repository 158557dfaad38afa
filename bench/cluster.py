"""Two hosts on one machine (network namespaces joined by veth pairs, tests/netns_lab.py): what
a call and a variable cost across hosts, beside floors measured in the same run.

    python -m bench.cluster [--n 2000] [--writes 200] [--trials-per-worker 20] [--no-optimize] [--json FILE]

Run as root from the repository root (the lab needs ``ip netns``; PostgreSQL's binaries for
the registry and optimize series). Hosts: alpha (the caller, the writer, the optimizer),
beta (node ``b``), gamma (PostgreSQL). Series, each p50/p95/p99/max over ``n`` samples:

- ``raw_zmq``: a pyzmq DEALER on alpha, a ROUTER echo on beta, one round trip at a time across
  the veth (the floor of any call); ``raw_zmq_curve``: the same with CURVE.
- ``local_call``: ``Caller.call`` of b's echo agent from beta (the call b serves anyway).
- ``cross_node_call``: ``RemoteCaller.call`` of the same agent from alpha, through b's call
  gateway (CURVE TCP). Target: p50 <= 2x ``local_call``'s.
- ``registry_local``: a variable written on node va (alpha), until va's own program ran
  on_config with it (its own clock: ``Shows.changed_at``); ``registry_remote``: the same
  writes, until node vb's program on beta ran on_config with them (PostgreSQL's NOTIFY, vb's
  registry, vb's program). Target: ``registry_remote`` p50 <= 50 ms.
- ``optimize``: trials/s of ``otpy optimize --workers 1, 2, 4`` on alpha with the study on
  gamma (bench/optimize_workers.py's run, a trial-bound objective). Target: 1 -> 2 workers
  >= 1.6x.

The floors are measured before and after the calls; the quieter slice is the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.stats import print_series, summarize  # noqa: E402

RAW_PORT, CURVE_PORT, B_PORT, VB_PORT = 7500, 7501, 7400, 7410
MEASURE_TIMEOUT = 600


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# --- what runs inside a host (python -m bench.cluster _serve / _measure ...) ----------------------

def serve_echo(endpoint: str, secret_file: str | None) -> None:
    """A ROUTER echo: the far end of the raw floors (CURVE when given the server's secret key)."""
    import zmq

    router = zmq.Context().socket(zmq.ROUTER)
    if secret_file:
        public, secret = open(secret_file).read().split()
        router.curve_server, router.curve_secretkey, router.curve_publickey = True, secret.encode(), public.encode()
    router.bind(endpoint)
    print("ready", flush=True)
    while True:
        router.send_multipart(router.recv_multipart(copy=False), copy=False)


def timed(fn, n: int, warmup: int = 200) -> list[float]:
    from bench.call_latency import timed as call_timed

    return call_timed(fn, n, warmup)


def measure_raw(endpoint: str, n: int, server_file: str | None) -> list[float]:
    import zmq

    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    if server_file:
        server_public = open(server_file).read().split()[0].encode()
        public, secret = zmq.curve_keypair()
        dealer.curve_serverkey, dealer.curve_publickey, dealer.curve_secretkey = server_public, public, secret
    dealer.connect(endpoint)

    def round_trip():
        dealer.send(b'{"text": "hi"}')
        dealer.recv()

    try:
        return timed(round_trip, n)
    finally:
        dealer.close(linger=0)
        context.term()


def measure_local_call(node: str, agent: str, n: int) -> list[float]:
    import otpy

    with otpy.Caller(node) as caller:
        return timed(lambda: caller.call(agent, {"text": "hi"}), n)


def measure_remote_call(endpoint: str, keys: str, agent: str, n: int) -> list[float]:
    from otpy.wire.remote_calls import RemoteCaller

    with RemoteCaller(endpoint, keys=keys, name="b") as caller:
        return timed(lambda: caller.call(agent, {"text": "hi"}), n)


def measure_registry(writer: str, reader_endpoint: str, reader_keys: str, writes: int) -> dict[str, list[float]]:
    """``writes`` knob values written on node ``writer`` (local), one at a time; for each, the
    time until the writer's own program and the reader node's program (polled over its call
    gateway; their own on_config clock counts, not the polling) ran on_config with it."""
    import otpy
    from otpy.wire.remote_calls import RemoteCaller

    local, remote = [], []
    with otpy.connect(writer) as client, otpy.Caller(writer) as own, \
            RemoteCaller(reader_endpoint, keys=reader_keys, name="reader") as far:
        for i in range(writes + 5):
            value = round(0.001 + (i % 997) / 1000, 6)
            began = time.time()
            outcome = client.set_variables("global", {"knob": value})
            if outcome.outcome != "ok":
                raise SystemExit(f"write {i}: {outcome}")
            seen = {}
            deadline = time.monotonic() + 10
            while len(seen) < 2:
                for name, caller in (("local", own), ("remote", far)):
                    if name not in seen:
                        shown = caller.call("shows", {}, timeout=5)
                        if shown["config"].get("knob") == value:
                            seen[name] = shown["changed_at"] - began
                if time.monotonic() > deadline:
                    raise SystemExit(f"write {i}: not seen within 10 s: {seen}")
                time.sleep(0.001)
            if i >= 5:  # the first ones warm up
                local.append(seen["local"])
                remote.append(seen["remote"])
    return {"local": local, "remote": remote}


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
    if kind == "_serve":
        serve_echo(rest[0], rest[1] if len(rest) > 1 else None)
        return
    if kind == "raw":
        result = measure_raw(rest[0], int(rest[1]), rest[2] if len(rest) > 2 else None)
    elif kind == "local":
        result = measure_local_call(rest[0], rest[1], int(rest[2]))
    elif kind == "remote":
        result = measure_remote_call(rest[0], rest[1], rest[2], int(rest[3]))
    elif kind == "registry":
        result = measure_registry(rest[0], rest[1], rest[2], int(rest[3]))
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


def client_keys(lab, host: str, node: str, into: str) -> str:
    """A keys folder (on ``into``'s side of the lab folder) with node's server.key and the client
    key pair the node authorized itself."""
    curve = lab.hosts[host].folder / "run" / node / "curve"
    folder = lab.hosts[into].folder / f"keys-{node}"
    folder.mkdir(mode=0o700)
    for name in ("server.key", "client.key_secret"):
        shutil.copy(curve / name, folder)
    return str(folder)


def serve_floors(lab, stack) -> tuple[str, str, str]:
    import zmq

    public, secret = zmq.curve_keypair()
    secret_file = lab.folder / "floor-server.key_secret"
    secret_file.write_text(f"{public.decode()} {secret.decode()}")
    secret_file.chmod(0o600)
    public_file = lab.folder / "floor-server.key"
    public_file.write_text(public.decode())
    beta = lab.address("beta")
    for endpoint, extra in ((f"tcp://{beta}:{RAW_PORT}", []), (f"tcp://{beta}:{CURVE_PORT}", [str(secret_file)])):
        proc = lab.popen("beta", [sys.executable, "-m", "bench.cluster", "_inside", "_serve", endpoint, *extra],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
        stack.append(proc)
        if proc.stdout.readline() != "ready\n":
            raise SystemExit("the floor's echo server did not start")
    return f"tcp://{beta}:{RAW_PORT}", f"tcp://{beta}:{CURVE_PORT}", str(public_file)


def quieter(*slices: list[float]) -> dict:
    summaries = [summarize(s) for s in slices]
    best = min(summaries, key=lambda s: s["p50_ms"])
    return {**best, "slices_p50_ms": [s["p50_ms"] for s in summaries]}


REGISTRY_NODE = """[node]
name = "{name}"
control_tcp = "tcp://{address}:{port}"

[registry]
storage = "{url}"

[variables.global]
knob = {{ type = "float", low = 0, high = 1, default = 0.5 }}

[supervisor]

[[supervisor.children]]
id = "shows"
program = "tests.registry_agents:Shows"
"""


def run(args) -> dict:
    from tests.netns_lab import Lab

    report: dict = {"lab": {}, "series": {}, "targets": {}}
    began = time.perf_counter()
    lab = Lab(["alpha", "beta", "gamma"]).start()
    report["lab"]["setup_seconds"] = round(lab.setup_seconds, 3)
    servers: list = []
    try:
        log(f"lab up in {lab.setup_seconds * 1000:.0f} ms: alpha {lab.address('alpha')}, beta {lab.address('beta')}, "
            f"gamma {lab.address('gamma')}")
        raw, curve, server_public = serve_floors(lab, servers)
        beta = lab.address("beta")
        start_node(lab, "beta", "b", f'[node]\nname = "b"\ncontrol_tcp = "tcp://{beta}:{B_PORT}"\n\n[supervisor]\n\n'
                                     '[[supervisor.children]]\nid = "echo"\nprogram = "bench.call_latency:echo"\n')
        keys = client_keys(lab, "beta", "b", "alpha")
        n = str(args.n)
        series = report["series"]
        log(f"calls: floors, local and cross-node calls, n={args.n} each")
        floor_raw = [in_host(lab, "alpha", "raw", raw, n)]
        floor_curve = [in_host(lab, "alpha", "raw", curve, n, server_public)]
        local = in_host(lab, "beta", "local", "b", "echo", n)
        remote = in_host(lab, "alpha", "remote", f"tcp://{beta}:{B_PORT}", keys, "echo", n)
        floor_raw.append(in_host(lab, "alpha", "raw", raw, n))
        floor_curve.append(in_host(lab, "alpha", "raw", curve, n, server_public))
        series["raw_zmq"], series["raw_zmq_curve"] = quieter(*floor_raw), quieter(*floor_curve)
        series["local_call"], series["cross_node_call"] = summarize(local), summarize(remote)
        report["targets"]["cross_node_call_p50_vs_local_x"] = target(
            series["cross_node_call"]["p50_ms"] / series["local_call"]["p50_ms"], 2.0, True)
        report["targets"]["cross_node_call_p50_vs_raw_curve_x"] = {
            "measured": round(series["cross_node_call"]["p50_ms"] / series["raw_zmq_curve"]["p50_ms"], 2)}
        otpy(lab, "beta", "stop", "--node", "b")

        log("registry: PostgreSQL on gamma, va on alpha writes, vb on beta follows")
        database = lab.postgres("gamma")
        servers.append(database)
        url = lab.new_database(database, "bench")
        start_node(lab, "alpha", "va", REGISTRY_NODE.format(name="va", address=lab.address("alpha"), port=VB_PORT,
                                                            url=url))
        start_node(lab, "beta", "vb", REGISTRY_NODE.format(name="vb", address=beta, port=VB_PORT, url=url))
        vb_keys = client_keys(lab, "beta", "vb", "alpha")
        seen = in_host(lab, "alpha", "registry", "va", f"tcp://{beta}:{VB_PORT}", vb_keys, str(args.writes))
        series["registry_local"], series["registry_remote"] = summarize(seen["local"]), summarize(seen["remote"])
        report["targets"]["registry_remote_p50_ms"] = target(series["registry_remote"]["p50_ms"], 50.0, True)
        otpy(lab, "alpha", "stop", "--node", "va")
        otpy(lab, "beta", "stop", "--node", "vb")

        if not args.no_optimize:
            log(f"optimize: --workers 1, 2, 4 on alpha, the study on gamma, {args.trials_per_worker} trials a worker")
            optimize = in_host(lab, "alpha", "optimize", database.url(), "1,2,4", str(args.trials_per_worker),
                               str(args.delay))
            report["optimize"] = optimize
            rate = {entry["workers"]: entry["steady_trials_per_second"] for entry in optimize}
            report["targets"]["optimize_scaling_1_to_2_x"] = target(rate[2] / rate[1], 1.6, False)
            report["targets"]["optimize_scaling_1_to_4_x"] = {"measured": round(rate[4] / rate[1], 2)}
    finally:
        for proc in servers:
            if isinstance(proc, subprocess.Popen):
                proc.kill()
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
    parser.add_argument("--delay", type=float, default=0.05, help="seconds a trial's call takes (optimize)")
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
