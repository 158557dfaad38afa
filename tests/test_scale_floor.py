"""The scale benchmark's floor series run with a tiny N (they cannot rot) and leave no process."""

from __future__ import annotations

import pytest

from bench.scale_floor import floor

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("kind", ["pipe", "zmq"])
def test_a_floor_series_times_every_start_and_reaps_its_children(kind):
    result = floor(kind, 5)
    assert result["n"] == 5 and result["ready_total_s"] > 0
    assert len(result["start_latencies"]) == 5 and all(t > 0 for t in result["start_latencies"])
    assert set(result["cpu_ms_per_start"]) == {"parent", "child"}
    assert result["cpu_ms_per_start"]["child"] > 0  # read before the children were killed
