"""``otpy bench``: runs ``bench/run.py`` of a source checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .exits import EXIT_USAGE, fail


@click.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def bench(arguments: tuple[str, ...]) -> None:
    """Run a benchmark: SCENARIO (restart, reconfigure, call, scale, all, chart) [OPTIONS].

    The same as ``python bench/run.py SCENARIO [OPTIONS]`` in a source checkout of otpy
    (``otpy bench --help`` lists the options). With ``pip install -e '.[bench]'``, restart
    and reconfigure also run circus and supervisord.
    """
    runner = Path(__file__).resolve().parents[2] / "bench" / "run.py"
    if not runner.is_file():
        fail(f"no {runner}: benchmarks run from a source checkout of otpy "
              "(git clone it, then pip install -e '.[bench]')", EXIT_USAGE)
    os.execv(sys.executable, [sys.executable, str(runner), *arguments])
