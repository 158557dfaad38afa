"""Distributed optimization throughput: trials/s with 1, 2 and 4 workers on one study.

A trial-bound objective: the topology's one agent (``Sleeper`` of
``tests/test_optimize_distributed_programs.py``) takes ``--delay`` seconds per call (simulated
work, 50 ms by default) and a trial scores one example, so a trial costs the delay plus otpy's
share (the scratch node's write of the trial's values, the call) plus optuna's (TPE's sampling,
the study's reads and writes in PostgreSQL). For each worker count a fresh database holds a
fresh study, and ``otpy optimize FILE --storage URL --workers N --trials T --json`` runs it, as
a user would (N worker processes, N scratch nodes).

Two numbers per count: ``cli`` is what the command's ``--json`` says (``trials_per_second``:
the study's trials over the search's wall time, the workers' start included), and ``steady``
the trials completed while every worker ran (from the last worker's first trial start to the
first worker's last trial end, from the trials' own timestamps) over that window: the rate a
long search settles at. The floor, measured in the same run on the same server: optuna alone,
TPE on the same one-float search space, a no-op objective, one process (``floor_1``) and
``--floor-processes`` processes on one study (``floor_N``).

Run from the repository root (a private PostgreSQL server is started and removed; it needs
PostgreSQL's binaries, see tests/postgres_server.py)::

    python -m bench.optimize_workers [--delay 0.05] [--trials-per-worker 40] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.postgres_server import PostgresServer  # noqa: E402
from tests.test_optimize_distributed_programs import TOPOLOGY  # noqa: E402

COUNTS = (1, 2, 4)


def psycopg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def run_workers(server: PostgresServer, folder: str, workers: int, trials: int, delay: float, env: dict) -> dict:
    import optuna

    name = f"bench-w{workers}"
    path = os.path.join(folder, f"{name}.toml")
    with open(path, "w") as file:
        file.write(TOPOLOGY.format(name=name, delay=delay))
    url = server.new_database(f"w{workers}")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "otpy", "optimize", path, "--storage", url, "--workers",
                           str(workers), "--trials", str(trials), "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"otpy optimize --workers {workers} failed:\n{proc.stderr}")
    document = json.loads(proc.stdout)
    study = optuna.load_study(study_name=name, storage=psycopg(url))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    by_worker: dict[str, list] = {}
    for trial in done:
        by_worker.setdefault(trial.user_attrs["worker"], []).append(trial)
    start = max(min(t.datetime_start for t in mine) for mine in by_worker.values())
    end = min(max(t.datetime_complete for t in mine) for mine in by_worker.values())
    window = (end - start).total_seconds()
    inside = [t for t in done if t.datetime_start >= start and t.datetime_complete <= end]
    return {"workers": workers, "trials": len(done), "per_worker": {w: len(ts) for w, ts in by_worker.items()},
            "cli_trials_per_second": document["trials_per_second"], "wall_seconds": round(wall, 2),
            "steady_trials_per_second": len(inside) / window if window > 0 and inside else None,
            "steady_window_seconds": round(window, 2), "steady_trials": len(inside)}


def _floor_process(url: str, study: str, trials: int, seed: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    loaded = optuna.load_study(study_name=study, storage=url, sampler=optuna.samplers.TPESampler(seed=seed))
    loaded.optimize(lambda trial: trial.suggest_float("global.bias", -1.0, 1.0) * 0.0, n_trials=trials)


def floor(server: PostgresServer, processes: int, trials: int) -> dict:
    """optuna alone: TPE, a no-op objective, ``processes`` processes on one study in PostgreSQL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = psycopg(server.new_database(f"floor{processes}"))
    optuna.create_study(study_name="floor", storage=url, direction="maximize")
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    children = [context.Process(target=_floor_process, args=(url, "floor", trials, seed))
                for seed in range(processes)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    study = optuna.load_study(study_name="floor", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    window = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {"processes": processes, "trials": len(done), "trials_per_second": len(done) / window,
            "wall_seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.05, help="seconds one call of the program takes")
    parser.add_argument("--trials-per-worker", type=int, default=40)
    parser.add_argument("--floor-trials", type=int, default=100)
    parser.add_argument("--floor-processes", type=int, default=4)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="otpy-bench-opt-")
    env = dict(os.environ)
    for variable in ("OTPY_RUNTIME_DIR", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        env[variable] = os.path.join(folder, variable.split("_")[-2].lower())
        os.makedirs(env[variable], mode=0o700)
    server = PostgresServer.start()
    try:
        series = []
        for count in COUNTS:
            result = run_workers(server, folder, count, args.trials_per_worker * count, args.delay, env)
            series.append(result)
            print(f"{count} worker(s): steady {result['steady_trials_per_second']:.2f} trials/s "
                  f"({result['steady_trials']} trials in {result['steady_window_seconds']} s), "
                  f"cli {result['cli_trials_per_second']:.2f} trials/s, {result['trials']} trials "
                  f"{result['per_worker']}, wall {result['wall_seconds']} s", file=sys.stderr)
        floors = [floor(server, 1, args.floor_trials),
                  floor(server, args.floor_processes, args.floor_trials)]
        for entry in floors:
            print(f"floor: optuna alone, {entry['processes']} process(es): {entry['trials_per_second']:.1f} trials/s",
                  file=sys.stderr)
    finally:
        server.stop()
    rate = {entry["workers"]: entry["steady_trials_per_second"] for entry in series}
    report = {"delay": args.delay, "series": series, "floor": floors,
              "scaling_1_to_2": rate[2] / rate[1], "scaling_1_to_4": rate[4] / rate[1],
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.platform()}}
    print(f"scaling 1 -> 2 workers: {report['scaling_1_to_2']:.2f}x (target >= 1.6x); "
          f"1 -> 4: {report['scaling_1_to_4']:.2f}x", file=sys.stderr)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    return report


if __name__ == "__main__":
    main()
