"""otpy's benchmark suite: one command, one JSON report (``otpy bench`` is the same command).

    python bench/run.py restart [--n 200] [--n-defaults 20] [--json FILE] [--chart FILE.png]
    python bench/run.py scale   [--n 1000] [--idle 30] [--prefault GIB] [--json FILE] [--chart FILE.png]
    python bench/run.py reconfigure [--n 200] [--n-defaults 20] [--json FILE] [--chart FILE.png]
    python bench/run.py call    [--n 5000] [--json FILE]
    python bench/run.py all     [--n 200] [--scale-n 1000] [...]
    python bench/run.py chart --from A.json [--from B.json ...] --chart FILE.png   (re-draw, merged)

The options are defined once, with click, in ``otpy.cli.bench_cmd`` (``--help`` lists them);
``run`` here does the work.

``restart``: the series of ``bench/restart_latency.py`` (otpy's 'started' event after a
SIGKILL, program and command children, with their fork/exec floors), then the same child
program and one readiness signal (a unix datagram, see ``bench/peers.py``) under otpy,
circus and supervisord, each peer at fast-restart settings and at its defaults. A peer that
is not installed is skipped and said so. ``scale``: see ``bench/scale.py``.
``reconfigure``: ``bench/reconfigure_latency.py`` (a Reconfigure action until the new program
answers its first call), then the same child switched between two versions under otpy,
circus and supervisord, each the way its own tools do it (``bench/peers_reconfigure.py``).
``call``: ``bench/call_latency.py`` (echo round trips against raw
pyzmq, throughput with 1, 2 and 4 agents).

Every latency series prints p50, p95, p99, max and n; the JSON has ``p50_ms``, ``p95_ms``,
``p99_ms``, ``max_ms``, ``n`` per series, and the machine it ran on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import peers, scale  # noqa: E402
from bench.targets import check as check_targets, print_targets  # noqa: E402
from bench.restart_latency import machine, print_series, run as restart_series, summarize  # noqa: E402

class Options:
    """The options as attributes (``args.n``), as the scenarios below read them."""

    def __init__(self, **options) -> None:
        self.__dict__.update(options)


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def run_reconfigure(n: int, n_defaults: int, with_peers: bool) -> tuple[dict, dict]:
    from bench.reconfigure_latency import run

    from bench.restart_latency import fork_floor

    log(f"reconfigure: n={n}")
    results, raw = run(n), {}
    results["floor_fork"] = summarize(fork_floor(n))  # the targets' floor, measured in this run
    if with_peers:
        from bench import peers_reconfigure

        log("reconfigure: the same child and signal under otpy, circus, supervisord")
        samples, notes = peers_reconfigure.run_all(n, n_defaults, log=log)
        results.update(peer_series(samples, raw))
        results["peers"] = notes
    return results, raw


def peer_series(samples: dict[str, list[float]], raw: dict) -> dict:
    """Summaries of the socket-signal series, and each peer's p50/p99 over otpy's."""
    results = {}
    for name, s in samples.items():
        results[name] = summarize(s)
        raw[name] = [x * 1000 for x in s]
    base, cmd = results["otpy_program_socket"], results["otpy_command_socket"]
    ratios = {}
    for name in samples:
        if name.startswith(("circus", "supervisord")):
            ratios[f"{name}_p50_vs_otpy_program"] = round(results[name]["p50_ms"] / base["p50_ms"], 1)
            ratios[f"{name}_p99_vs_otpy_program"] = round(results[name]["p99_ms"] / base["p99_ms"], 1)
            ratios[f"{name}_p50_vs_otpy_command"] = round(results[name]["p50_ms"] / cmd["p50_ms"], 1)
    results["peer_ratios"] = ratios
    return results


def run_call(n: int) -> dict:
    import tempfile

    from bench import call_latency

    log(f"call: n={n}")
    with tempfile.TemporaryDirectory(prefix="otpy-bench-") as folder:
        before = call_latency.raw_zmq(n, folder)  # the floor before and after: the quieter is the floor
        series = call_latency.otpy_series(n)
        after = call_latency.raw_zmq(n, folder)
        results = {"raw_zmq": min(before, after, key=lambda floor: floor["p50_ms"]), **series,
                   "raw_zmq_slices_p50_ms": [before["p50_ms"], after["p50_ms"]]}
    base = results["raw_zmq"]["p50_ms"]
    results["ratios"] = {f"{k}_p50_vs_raw_zmq": round(v["p50_ms"] / base, 2)
                         for k, v in results.items() if isinstance(v, dict) and k.startswith("otpy")}
    return results


def run_restart(n: int, n_defaults: int, with_peers: bool) -> tuple[dict, dict]:
    log(f"restart: otpy series, n={n}")
    results, raw = restart_series(n)
    if with_peers:
        log("restart: the same child and signal under otpy, circus, supervisord")
        samples, notes = peers.run_all(n, n_defaults, log=log)
        results.update(peer_series(samples, raw))
        results["peers"] = notes
    return results, raw


def run_scale(n: int, idle: float, prefault_gib: float = 0.0) -> dict:
    prefaulted = None
    if prefault_gib:
        log(f"scale: touching {prefault_gib} GiB of memory first")
        prefaulted = {"gib": prefault_gib, "seconds": round(scale.prefault(prefault_gib), 2)}
    log(f"scale: {n} children, idle {idle} s")
    main = asyncio.run(scale.scale_run(n, idle))
    latencies = main.pop("start_latencies")
    main["start_latency"] = summarize(latencies)
    main["prefault"] = prefaulted
    step = max(1, n // 10)  # mean start latency by tenth: a flat list is a linear curve
    main["start_ms_by_tenth"] = [round(1000 * sum(latencies[i:i + step]) / len(latencies[i:i + step]), 2)
                                 for i in range(0, n, step)]
    log("scale: curve")
    main["curve_s"] = {str(k): v for k, v in asyncio.run(scale.curve(n, {n: main["ready_total_s"]})).items()}
    return main


def print_scale(s: dict) -> None:
    if s.get("prefault"):
        print(f"scale: touched {s['prefault']['gib']} GiB of memory first ({s['prefault']['seconds']} s)")
    print(f"scale: {s['n']} children ready in {s['ready_total_s']:.3f} s; stop all {s['stop_all_s']:.3f} s")
    print_series({"start_latency": s["start_latency"]})
    print("mean start latency by tenth of the children (ms):", s["start_ms_by_tenth"])
    print("CPU per start (ms):", s["cpu_ms_per_start"])
    i = s["idle"]
    print(f"idle {i['seconds']} s: node CPU {i['node_cpu_pct_of_core']:.3f} % of a core "
          f"(zygote {i['zygote_cpu_pct_of_core']:.3f} %, all children {i['children_cpu_pct_of_core_total']:.3f} %)")
    u, r = s["child_uss"], s["child_rss"]
    print(f"node RSS {s['node_rss_mib']} MiB; child USS p50 {u['p50_mib']} MiB max {u['max_mib']} MiB "
          f"(n={u['n']}); child RSS p50 {r['p50_mib']} MiB")
    print("curve (N: seconds to all ready):", s["curve_s"])
    scale.print_floors(s)


def chart(report: dict, raw: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("restart", "reconfigure", "scale") if p in report]
    if "reconfigure" in panels and not any(k.startswith("reconfigure_") for k in raw):
        panels.remove("reconfigure")  # run without peers: no distributions to draw
    if not panels:
        raise SystemExit("chart: the reports have no restart, reconfigure (with peers) or scale series to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    m = report["machine"]
    for ax, panel in zip(axes[0], panels):
        if panel == "restart":
            for name in ("program", "command", "otpy_program_socket", "otpy_command_socket", "circus_fast",
                         "circus_default", "supervisord_fast", "supervisord_default"):
                if name in raw:
                    xs = sorted(raw[name])
                    ys = [(i + 1) / len(xs) for i in range(len(xs))]
                    label = {"program": "otpy program ('started' event)",
                             "command": "otpy command, notify ('started' event)"}.get(name, name.replace("_", " "))
                    ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)})")
            ax.set_xscale("log")
            ax.set_xlabel("SIGKILL to replacement ready (ms, log)")
            ax.set_ylabel("fraction of restarts")
            ax.set_title("restart latency CDF")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        elif panel == "reconfigure":
            for name in ("otpy_program_socket", "otpy_command_socket", "circus_fast", "circus_default",
                         "supervisord_fast", "supervisord_default"):
                if f"reconfigure_{name}" in raw:
                    xs = sorted(raw[f"reconfigure_{name}"])
                    ys = [(i + 1) / len(xs) for i in range(len(xs))]
                    ax.step(xs, ys, where="post", label=f"{name.replace('_', ' ')} (n={len(xs)})")
            ax.set_xscale("log")
            ax.set_xlabel("switch asked to the new version ready (ms, log)")
            ax.set_ylabel("fraction of switches")
            ax.set_title("reconfigure latency CDF")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        else:
            c = report["scale"]["curve_s"]
            ns = [int(k) for k in c]
            ax.plot(ns, [c[k] for k in c], marker="o", label="otpy: time to N program children ready")
            ax.set_xlabel("children under one dynamic supervisor (N)")
            ax.set_ylabel("seconds")
            ax.set_title("scale curve")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"otpy {m['otpy']} @ {m['commit']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
                 f"DAMON {m.get('damon', '?')}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """``python bench/run.py ...``: the click command ``otpy bench`` (its options, its --help)."""
    from otpy.cli.bench_cmd import bench

    bench.main(argv, prog_name="bench/run.py")


def run(scenario: str, *, n: int | None = None, scale_n: int | None = None, sources: list[str] = (),
        n_defaults: int = 20, idle: float = 30.0, prefault: float = 0.0, no_peers: bool = False,
        json_path: str | None = None, chart_path: str | None = None) -> None:
    """Run ``scenario`` with the options ``otpy.cli.bench_cmd`` checked; print, and write the
    JSON report and chart when asked."""
    args = Options(scenario=scenario, n=n, scale_n=scale_n, sources=sources, n_defaults=n_defaults,
                         idle=idle, prefault=prefault, no_peers=no_peers, json=json_path, chart=chart_path)
    logging.getLogger("otpy").setLevel(logging.ERROR)  # a SIGKILLed child is logged as a warning

    if args.scenario == "chart":
        report, raw = {}, {}
        for path in args.sources or ():
            with open(path) as f:
                part = json.load(f)
            raw.update(part.pop("raw_ms", {}))
            report.update(part)
        chart(report, raw, args.chart)
        return
    report: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "argv": sys.argv[1:]}
    raw: dict = {}
    if args.scenario in ("restart", "all"):
        n = args.n or 200
        report["restart"], raw = run_restart(n, min(args.n_defaults, n), not args.no_peers)
        print("== restart (ms)")
        print_series(report["restart"])
        print("ratios:", report["restart"]["ratios"], "; fork floor p50 by slice (the lowest is the floor):",
              report["restart"]["floor_fork_slices_p50_ms"])
        if "peer_ratios" in report["restart"]:
            print("peer ratios (peer / otpy, same signal):", report["restart"]["peer_ratios"])
        for peer, why in report["restart"].get("peers", {}).get("skipped", {}).items():
            print(f"{peer}: skipped, {why}")
    if args.scenario in ("reconfigure", "all"):
        n = args.n or 200
        report["reconfigure"], raw_reconfigure = run_reconfigure(n, min(args.n_defaults, n), not args.no_peers)
        raw.update({f"reconfigure_{k}": v for k, v in raw_reconfigure.items()})
        print("== reconfigure (ms)")
        print_series(report["reconfigure"])
        if "peer_ratios" in report["reconfigure"]:
            print("peer ratios (peer / otpy, same signal):", report["reconfigure"]["peer_ratios"])
        for peer, why in report["reconfigure"].get("peers", {}).get("skipped", {}).items():
            print(f"{peer}: skipped, {why}")
    if args.scenario in ("call", "all"):
        report["call"] = run_call(args.n * 25 if args.n else 5000)
        print("== call (ms)")
        print_series(report["call"])
        print("ratios:", report["call"]["ratios"], "; raw pyzmq p50 before and after (the lower is the floor):",
              report["call"]["raw_zmq_slices_p50_ms"])
        print("throughput, 64 calls in flight (calls/s):", {k.split("_")[-1] + " agents": v["calls_per_s"]
              for k, v in report["call"].items() if k.startswith("throughput_")})
        print("calls/s by callers and pipelining:", {k: v["calls_per_s"] for k, v in report["call"].items()
              if k.startswith(("pipelined_", "callers_", "caller_processes_"))})
    if args.scenario in ("scale", "all"):
        n = args.n if args.scenario == "scale" else args.scale_n
        report["scale"] = run_scale(n or 1000, args.idle, args.prefault)
        print("== scale")
        print_scale(report["scale"])
    report["targets"] = check_targets(report)
    print_targets(report["targets"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**report, "raw_ms": raw}, f, indent=2)
    if args.chart:
        chart(report, raw, args.chart)


if __name__ == "__main__":
    main()
