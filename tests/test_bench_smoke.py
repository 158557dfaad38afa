"""Benchmarks are not tests, but each runs here with a tiny N so it cannot rot."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(120)
def test_restart_latency_runs_and_writes_every_series(tmp_path):
    out = tmp_path / "restart.json"
    subprocess.run([sys.executable, "bench/restart_latency.py", "--n", "5", "--json", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=110)
    result = json.loads(out.read_text())
    for series in ("program", "command", "program_floor_fork", "command_floor_exec"):
        assert set(result[series]) >= {"p50_ms", "p95_ms", "p99_ms", "max_ms", "n"}
        assert result[series]["p50_ms"] > 0
