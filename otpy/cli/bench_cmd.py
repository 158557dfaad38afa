"""``otpy bench``: the benchmark scenarios of ``bench/run.py`` of a source checkout.

The scenarios and options are defined here, once, with click: ``otpy bench --help`` and
``python bench/run.py --help`` are this command's (``bench/run.py`` runs it). The work is in
``bench/``, which a source checkout has (it is not installed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .exits import EXIT_USAGE, fail
from .options import Count, Seconds

SCENARIOS = ("restart", "reconfigure", "call", "scale", "all", "chart")
CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding bench/ in a source checkout


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenario", type=click.Choice(SCENARIOS))
@click.argument("reports", nargs=-1, metavar="[REPORT.json]...")
@click.option("--n", type=Count(1),
              help="Restarts per series (default 200), calls / 25 (call), children (scale, default 1000).")
@click.option("--scale-n", type=Count(1), help="Children for scale under 'all' (default 1000).")
@click.option("--from", "sources", multiple=True, metavar="JSON",
              help="chart: a report written by --json; more may follow (--from A.json B.json), merged in order.")
@click.option("--n-defaults", type=Count(0), default=20, show_default=True,
              help="Restarts for each peer at its default settings (0 skips them; they are slow).")
@click.option("--idle", type=Seconds(positive=False), default=30.0, show_default=True,
              help="Idle window of the scale scenario, seconds.")
@click.option("--prefault", type=Seconds(positive=False, expected="a number of GiB"), default=0.0, show_default=True, metavar="GIB",
              help="scale: touch this much fresh memory first (a VM's first-touch cost).")
@click.option("--no-peers", is_flag=True, help="Skip circus and supervisord.")
@click.option("--json", "json_path", metavar="FILE", help="Write the report as JSON to FILE.")
@click.option("--chart", "chart_path", metavar="FILE.png", help="Write latency CDFs and the scale curve.")
def bench(scenario: str, reports: tuple[str, ...], n: int | None, scale_n: int | None, sources: tuple[str, ...], n_defaults: int,
          idle: float, prefault: float, no_peers: bool, json_path: str | None, chart_path: str | None) -> None:
    """Run benchmark SCENARIO and print its latencies (p50, p95, p99, max) and targets.

    restart: SIGKILL to replacement ready, otpy against circus and supervisord; reconfigure: a
    program switched make-before-break; call: round trips against raw pyzmq; scale: N children
    under one supervisor; all: every one; chart: re-draw --chart from --from reports.

    Needs a source checkout of otpy (git clone it, then pip install -e '.[bench]': with it,
    restart and reconfigure also run circus and supervisord).
    """
    if reports and scenario != "chart":
        fail(f"bench {scenario}: unexpected {' '.join(reports)} (only chart takes reports)", EXIT_USAGE)
    sources = (*sources, *reports)
    if scenario == "chart" and not (sources and chart_path):
        fail("bench chart: give --from REPORT.json (one or more) and --chart FILE.png", EXIT_USAGE)
    if not (CHECKOUT / "bench" / "run.py").is_file():
        fail(f"no {CHECKOUT / 'bench' / 'run.py'}: benchmarks run from a source checkout of otpy "
             "(git clone it, then pip install -e '.[bench]')", EXIT_USAGE)
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    from bench.run import run  # noqa: PLC0415 (bench/ exists only in a checkout)

    run(scenario, n=n, scale_n=scale_n, sources=list(sources), n_defaults=n_defaults, idle=idle,
        prefault=prefault, no_peers=no_peers, json_path=json_path, chart_path=chart_path)
