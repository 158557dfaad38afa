"""The benchmark targets (``bench/targets.py``): ratios to floors of the same run, met or
missed, and left out when their series did not run."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.targets import TARGETS, check  # noqa: E402


def series(p50, p99=None):
    return {"p50_ms": p50, "p95_ms": p50, "p99_ms": p99 or p50, "max_ms": p99 or p50, "n": 10}


def test_restart_ratios_to_the_fork_floor_of_the_same_run():
    report = {"restart": {"program": series(3.0, 6.0), "program_floor_fork": series(1.5, 1.6),
                          "program_standby": series(1.0)}}
    targets = check(report)
    assert targets["restart_program_p50_vs_fork_x"] == {**targets["restart_program_p50_vs_fork_x"],
                                                        "measured": 2.0, "target": 2.5, "met": True}
    assert targets["restart_program_p99_vs_fork_x"]["measured"] == 3.75
    assert targets["restart_program_p99_vs_fork_x"]["met"] is True
    assert targets["restart_standby_p50_vs_fork_x"]["measured"] == 0.667
    assert targets["restart_standby_p50_vs_fork_x"]["met"] is True


def test_a_slower_run_on_a_slower_floor_is_still_met_and_a_miss_is_a_miss():
    slow = check({"restart": {"program": series(6.0), "program_floor_fork": series(3.0)}})
    assert slow["restart_program_p50_vs_fork_x"]["met"] is True
    missed = check({"restart": {"program": series(4.0), "program_floor_fork": series(1.0)}})
    assert missed["restart_program_p50_vs_fork_x"]["met"] is False


def test_targets_of_series_that_did_not_run_are_left_out():
    targets = check({"restart": {"program": series(3.0), "program_floor_fork": series(1.5)}})
    assert "restart_standby_p50_vs_fork_x" not in targets and "vs_circus_fast_x" not in targets
    assert not any(key.startswith(("call", "scale", "idle", "child")) for key in targets)


def test_at_least_targets_compare_the_other_way():
    report = {"call": {"otpy_call": series(0.2), "raw_zmq": series(0.1), "callers_4": {"calls_per_s": 31000}}}
    targets = check(report)
    assert targets["calls_per_s_4_callers"]["met"] is True and targets["calls_per_s_4_callers"]["rule"] == ">= 30000"
    assert targets["call_p50_vs_raw_zmq_x"]["measured"] == 2.0 and targets["call_p50_vs_raw_zmq_x"]["met"] is False


def test_every_target_has_a_unique_key_and_says_what_it_is():
    keys = [t.key for t in TARGETS]
    assert len(keys) == len(set(keys)) and all(t.says for t in TARGETS)
