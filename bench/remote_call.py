"""Cross-node call latency (``AGENT@NODE`` through the called node's call gateway), beside a local
call and the raw pyzmq round trips over the same TCP address, all in one run.

    python -m bench.remote_call [--n 5000] [--host 127.0.0.1] [--json out.json]

A node ``b`` (its own process, ``control_tcp`` on ``--host``) runs an echo agent; this process
measures, one call at a time, with ``{"text": "hi"}``:

- ``local_call``: ``Caller(b).call("echo")`` on b's host (ipc): what a cross-node call is held to
  (target: ``remote_call`` p50 <= 2x this);
- ``remote_call``: ``Caller(a, cluster=...).call("echo@b")``: TCP with CURVE to b's gateway, which
  makes the local call there;
- ``raw_curve``: a DEALER/ROUTER echo (a forked process) over TCP with CURVE on the same host: the
  transport's floor; ``raw_tcp``: the same without CURVE.

Across hosts (the lab's network namespaces): ``--serve HOST`` on b's host starts the node and the raw
echo servers on HOST and prints a JSON line of where they are (then waits for stdin to close);
``--client JSON`` on another host measures against them (``local_call`` is then left out: it is
measured on b's host). Each series has ``p50_ms``, ``p95_ms``, ``p99_ms``, ``max_ms``, ``n``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import zmq  # noqa: E402
import zmq.auth  # noqa: E402

from bench.stats import machine, summarize  # noqa: E402

INPUTS = {"text": "hi"}
NODE = f"bench-remote-b-{os.getpid()}"


def echo(**inputs):
    return inputs


def timed(fn, n: int, warmup: int = 300) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def free_ports(host: str, count: int) -> int:
    """A port P of ``host`` with P .. P+count-1 free."""
    for _ in range(200):
        with socket.socket() as first:
            first.bind((host, 0))
            port = first.getsockname()[1]
        sockets = []
        try:
            for offset in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind((host, port + offset))
            return port
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free ports in a row")


SERVE_NODE = """
import sys, time
sys.path.insert(0, sys.argv[1])
import otpy
root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="echo", program="bench.remote_call:echo"),))
with otpy.Node(otpy.NodeSpec(name=sys.argv[2], control_tcp=sys.argv[3], root=root)) as node:
    print("ready", flush=True)
    sys.stdin.readline()
"""


def raw_echo(endpoint: str, curve_folder: str | None) -> int:
    """A forked ROUTER echo on ``endpoint`` (CURVE with the server key in ``curve_folder``)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.closerange(3, 65536)  # nothing of the parent's: node b's stdin pipe above all (its EOF ends it)
            router = zmq.Context().socket(zmq.ROUTER)
            if curve_folder is not None:
                public, secret = zmq.auth.load_certificate(os.path.join(curve_folder, "server.key_secret"))
                router.curve_secretkey, router.curve_publickey, router.curve_server = secret, public, True
            router.bind(endpoint)
            while True:
                router.send_multipart(router.recv_multipart(copy=False), copy=False)
        finally:
            os._exit(0)
    return pid


def raw_round_trip(endpoint: str, curve_folder: str | None, n: int) -> dict:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    if curve_folder is not None:
        public, secret = zmq.auth.load_certificate(os.path.join(curve_folder, "client.key_secret"))
        server, _ = zmq.auth.load_certificate(os.path.join(curve_folder, "server.key"))
        dealer.curve_secretkey, dealer.curve_publickey, dealer.curve_serverkey = secret, public, server
    dealer.connect(endpoint)
    payload = json.dumps(INPUTS).encode()
    try:
        def round_trip():
            dealer.send(payload)
            dealer.recv()
        return summarize(timed(round_trip, n))
    finally:
        dealer.close(linger=0)
        context.term()


def serve(host: str, folder: str) -> tuple[dict, list]:
    """Node b and the raw echo servers on ``host``; what a client needs to reach them, and the
    processes to end."""
    port = free_ports(host, 4)  # control, gateway (+1), events (+2), and raw
    endpoint = f"tcp://{host}:{port}"
    node = subprocess.Popen([sys.executable, "-c", SERVE_NODE, ROOT, NODE, endpoint], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    if node.stdout.readline().strip() != "ready":
        raise RuntimeError("node b did not start")
    from otpy.wire.curve import keys_dir

    keys = os.path.join(folder, "keys-b")
    os.mkdir(keys, 0o700)
    for name in ("server.key", "client.key_secret"):
        shutil.copy(keys_dir(NODE) / name, keys)
    raw_port = free_ports(host, 2)
    curve = os.path.join(folder, "raw-curve")
    os.mkdir(curve, 0o700)
    zmq.auth.create_certificates(curve, "server")
    zmq.auth.create_certificates(curve, "client")
    pids = [raw_echo(f"tcp://{host}:{raw_port}", curve), raw_echo(f"tcp://{host}:{raw_port + 1}", None)]
    where = {"node": NODE, "endpoint": endpoint, "keys": keys, "raw_curve": f"tcp://{host}:{raw_port}", "curve_keys": curve,
             "raw_tcp": f"tcp://{host}:{raw_port + 1}"}
    return where, [node, *pids]


def client(where: dict, n: int, local: bool) -> dict:
    from otpy.wire.calls import Caller
    from otpy.wire.remote_cluster import ClusterNode, ClusterSpec

    results = {}
    cluster = ClusterSpec(source="bench", nodes={"b": ClusterNode(where["endpoint"], where["keys"])})
    order = ["raw_tcp", "raw_curve", "remote_call"] + (["local_call"] if local else [])
    for series in order:
        if series == "raw_tcp":
            results[series] = raw_round_trip(where["raw_tcp"], None, n)
        elif series == "raw_curve":
            results[series] = raw_round_trip(where["raw_curve"], where["curve_keys"], n)
        elif series == "remote_call":
            with Caller("bench-remote-a", cluster=cluster) as caller:
                results[series] = summarize(timed(lambda: caller.call("echo@b", INPUTS), n))
        else:
            with Caller(where.get("node", NODE)) as caller:
                results[series] = summarize(timed(lambda: caller.call("echo", INPUTS), n))
    if local:
        results["ratio_p50"] = round(results["remote_call"]["p50_ms"] / results["local_call"]["p50_ms"], 2)
    return results


def end(processes: list) -> None:
    """The raw echoes first: forked after node b started, they hold its stdin open too."""
    for process in sorted(processes, key=lambda p: not isinstance(p, int)):
        if isinstance(process, int):
            os.kill(process, signal.SIGKILL)
            os.waitpid(process, 0)
        else:
            process.stdin.close()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                print("node b did not stop within 30 s: killed", file=sys.stderr)
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--serve", metavar="HOST", help="serve node b and the raw echoes on HOST; print where")
    parser.add_argument("--client", metavar="JSON", help="measure against what --serve printed")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="otpy-bench-remote-")
    os.environ.setdefault("OTPY_RUNTIME_DIR", os.path.join(folder, "run"))
    try:
        if args.client:
            results = client(json.loads(args.client), args.n, local=False)
        else:
            where, processes = serve(args.serve or args.host, folder)
            try:
                if args.serve:
                    print(json.dumps(where), flush=True)
                    sys.stdin.readline()
                    return
                results = client(where, args.n, local=True)
            except BaseException:
                import traceback

                traceback.print_exc()
                raise
            finally:
                end(processes)
        report = {"machine": machine(), "n": args.n, "series": results}
        for name, series in results.items():
            if isinstance(series, dict):
                print(f"{name:12s} p50 {series['p50_ms']:.3f} ms  p95 {series['p95_ms']:.3f}  p99 {series['p99_ms']:.3f}")
        if "ratio_p50" in results:
            print(f"remote_call p50 / local_call p50 = {results['ratio_p50']} (target <= 2)")
        if args.json_path:
            with open(args.json_path, "w") as out:
                json.dump(report, out, indent=2)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
