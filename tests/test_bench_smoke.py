"""Benchmarks are not tests, but each runs here with a tiny N so it cannot rot.

circus and supervisord run only where they are installed (``pip install -e .[bench]``);
without them the restart scenario must say it skipped them, not fail.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"p50_ms", "p95_ms", "p99_ms", "max_ms", "n"}


def _run(*args, timeout=110):
    return subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(120)
def test_restart_latency_runs_and_writes_every_series(tmp_path):
    out = tmp_path / "restart.json"
    _run("bench/restart_latency.py", "--n", "5", "--json", str(out))
    result = json.loads(out.read_text())
    for series in ("program", "command", "program_floor_fork", "command_floor_exec"):
        assert set(result[series]) >= KEYS
        assert result[series]["p50_ms"] > 0
    slices = result["floor_fork_slices_p50_ms"]  # the floor is the quietest of three slices of the run
    assert len(slices) == 3 and result["program_floor_fork"]["p50_ms"] == min(slices)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario, series", [
    ("restart", ("program", "command", "otpy_program_socket", "otpy_command_socket")),
    ("reconfigure", ("reconfigure", "action_reply", "otpy_program_socket", "otpy_command_socket")),
])
def test_run_with_peers_or_says_they_are_skipped(tmp_path, scenario, series):
    out = tmp_path / f"{scenario}.json"
    proc = _run("bench/run.py", scenario, "--n", "3", "--n-defaults", "0", "--json", str(out))
    report = json.loads(out.read_text())
    result = report[scenario]
    assert set(report["machine"]) >= {"cpu", "cores", "python", "otpy", "commit", "damon"}
    for name in series:
        assert set(result[name]) >= KEYS and result[name]["n"] >= 3
    assert {"restart": "restart_program_p50_vs_fork_x", "reconfigure": "reconfigure_p50_vs_fork_x"}[scenario] in report["targets"]
    for module, name in (("circus", "circus_fast"), ("supervisor", "supervisord_fast")):
        peer = "supervisord" if module == "supervisor" else "circus"
        if importlib.util.find_spec(module):
            assert set(result[name]) >= KEYS
            assert f"{name}_p50_vs_otpy_program" in result["peer_ratios"]
        else:
            assert peer in result["peers"]["skipped"]
            assert f"{peer}: skipped" in proc.stdout


@pytest.mark.timeout(120)
def test_run_scale_tiny(tmp_path):
    out = tmp_path / "scale.json"
    proc = _run("bench/run.py", "scale", "--n", "10", "--idle", "0.5", "--json", str(out))
    scale = json.loads(out.read_text())["scale"]
    assert scale["n"] == 10 and scale["ready_total_s"] > 0 and scale["stop_all_s"] > 0
    assert set(scale["start_latency"]) >= KEYS and scale["start_latency"]["n"] == 10
    assert scale["child_uss"]["n"] == 10 and scale["child_uss"]["max_mib"] > 0
    assert scale["idle"]["node_cpu_pct_of_core"] >= 0
    assert set(scale["cpu_ms_per_start"]) == {"node", "zygote", "child"} and scale["cpu_ms_per_start"]["child"] > 0
    assert len(scale["start_ms_by_tenth"]) == 10
    assert scale["curve_s"] == {"10": scale["ready_total_s"]}
    assert "children ready in" in proc.stdout


@pytest.mark.timeout(120)
def test_run_all_writes_one_report_and_a_chart(tmp_path):
    out, png = tmp_path / "all.json", tmp_path / "chart.png"
    _run("bench/run.py", "all", "--n", "3", "--scale-n", "5", "--no-peers", "--idle", "0.2", "--json", str(out),
         "--chart", str(png))
    report = json.loads(out.read_text())
    assert {"restart", "reconfigure", "call", "scale", "machine", "targets"} <= set(report)
    assert KEYS <= set(report["reconfigure"]["reconfigure"]) and KEYS <= set(report["call"]["otpy_call"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(60)
def test_otpy_bench_is_bench_run_py():
    listed = _run("-m", "otpy", "--help").stdout
    assert "bench" in listed
    usage = _run("-m", "otpy", "bench", "--help").stdout
    assert "{restart|reconfigure|call|scale|all|chart}" in usage and "--n-defaults" in usage
