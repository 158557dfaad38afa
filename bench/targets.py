"""otpy's performance targets, one table: each a ratio to a floor measured in the same run
where a floor exists (this 2-core VM moves up to 2x from run to run; a ratio holds).

``check(report)`` gives, for every target whose series the report has, its measured value,
the limit and whether it is met; ``bench/run.py`` prints them and stores them under
``targets``. A target whose series did not run (another scenario, ``--no-peers``) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Target:
    key: str
    limit: float
    at_most: bool  # met when measured <= limit (else: measured >= limit)
    measure: Callable[[dict], float | None]  # from the whole report; None: its series did not run
    says: str  # what it means, for the printout

    def verdict(self, report: dict) -> dict | None:
        try:
            measured = self.measure(report)
        except (KeyError, TypeError, ZeroDivisionError):
            return None
        if measured is None:
            return None
        met = measured <= self.limit if self.at_most else measured >= self.limit
        return {"measured": round(measured, 3), "target": self.limit, "met": met,
                "rule": f"{'<=' if self.at_most else '>='} {self.limit:g}", "says": self.says}


def _ratio(section: str, series: str, floor: str, pct: str = "p50_ms", floor_pct: str | None = None):
    def measure(report: dict) -> float:
        part = report[section]
        return part[series][pct] / part[floor][floor_pct or pct]
    return measure


def _peer(name: str):
    return lambda report: report["restart"]["peer_ratios"][f"{name}_p50_vs_otpy_program"]


def _scale(fn):
    return lambda report: fn(report["scale"])


def _calls_per_s(report: dict) -> float:
    return report["call"]["callers_4"]["calls_per_s"]


def _tenths(s: dict) -> float:
    tenths = s["start_ms_by_tenth"]
    return tenths[-1] / tenths[0]


TARGETS = (
    Target("restart_program_p50_vs_fork_x", 2.5, True, _ratio("restart", "program", "program_floor_fork"),
           "restart of a program child, SIGKILL to 'started': p50 / bare fork+pipe p50"),
    Target("restart_program_p99_vs_fork_x", 4.0, True,
           _ratio("restart", "program", "program_floor_fork", "p99_ms"),
           "the same, p99 / the floor's p99"),
    Target("restart_standby_p50_vs_fork_x", 0.8, True,
           _ratio("restart", "program_standby", "program_floor_fork"),
           "restart of a child with a hot standby (standby = 1): p50 / fork floor p50 (1 ms on a 1.25 ms floor)"),
    Target("vs_circus_fast_x", 15, False, _peer("circus_fast"), "circus at its fastest, p50 / otpy program p50"),
    Target("vs_supervisord_fast_x", 200, False, _peer("supervisord_fast"),
           "supervisord at its fastest, p50 / otpy program p50"),
    Target("reconfigure_p50_vs_fork_x", 5.0, True, _ratio("reconfigure", "reconfigure", "floor_fork"),
           "a Reconfigure action to the first call the new program serves: p50 / fork floor p50"),
    Target("vars_set_vs_reconfigure_p50_x", 1.5, True, _ratio("reconfigure", "vars_set", "reconfigure"),
           "a reconfigure caused by vars set, p50 / a Reconfigure action's p50"),
    Target("call_p50_vs_raw_zmq_x", 1.5, True, _ratio("call", "otpy_call", "raw_zmq"),
           "Caller.call echo p50 / raw pyzmq DEALER/ROUTER round trip p50"),
    Target("calls_per_s_4_callers", 30000, False, _calls_per_s, "calls/s to one agent from 4 concurrent callers"),
    Target("scale_ready_vs_floor_x", 1.5, True,
           _scale(lambda s: s["ready_total_s"] / s["floor_pipe"]["ready_total_s"]),
           "N program children ready / the same interpreter forking N children that report on a pipe"),
    Target("scale_cpu_ms_per_start", 2.5, True, _scale(lambda s: sum(s["cpu_ms_per_start"].values())),
           "CPU per start, node + zygote + child (ms)"),
    Target("scale_last_vs_first_tenth_x", 1.3, True, _scale(_tenths),
           "mean start latency of the last tenth of the children / the first tenth"),
    Target("idle_node_cpu_pct", 0.5, True, _scale(lambda s: s["idle"]["node_cpu_pct_of_core"]),
           "the node's CPU with N children idle, % of a core (over --idle seconds, 30 by default)"),
    Target("child_uss_mib", 3.0, True, _scale(lambda s: s["child_uss"]["max_mib"]),
           "memory only a child holds (USS), largest of the N (MiB)"),
)


def check(report: dict) -> dict:
    """Every target the report has the series for: ``{key: {measured, target, met, rule, says}}``."""
    out = {}
    for target in TARGETS:
        verdict = target.verdict(report)
        if verdict is not None:
            out[target.key] = verdict
    return out


def print_targets(targets: dict) -> None:
    print("== targets (ratios to floors measured in this run)")
    for key, v in targets.items():
        print(f"{key:32s} measured {v['measured']:>10}  target {v['rule']:>8}  "
              f"{'met' if v['met'] else 'MISSED':6s}  {v['says']}")
