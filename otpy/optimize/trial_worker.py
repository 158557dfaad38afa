"""One trial worker of a shared study (``otpy optimize --worker``; see ``workers``): trials on a
scratch node of its own until the study has its trials, then a summary for its pool."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from ..topology.load import load_topology
from ..wire.calls import Caller
from ..wire.client import connect
from .live_system import LiveSystem, OptimizerTable, spaces_of
from .optimizer import Optimizer
from .scratch import ScratchNameTaken, scratch_node
from .study_db import quiet_heartbeat_errors, recover
from .workers import scratch_names


def run_worker(job: dict[str, Any], adapt: Callable[[Any], Any] = lambda table: table) -> dict[str, Any]:
    """One worker's whole job (``otpy optimize --worker``): trials on its own scratch node until
    the study has its trials. ``adapt``: the ``[optimizer]`` table's conventions (``otpy.dspy``'s
    for DSPy examples). Returns its summary (printed as JSON for the pool)."""
    _stop_with_owner()
    quiet_heartbeat_errors()
    topology = load_topology(job["topology"])
    sys.path[:0] = [folder for folder in topology.node.program_folders if folder not in sys.path]
    table = adapt(OptimizerTable(topology))
    optimizer = Optimizer(spaces_of(topology), seed=job.get("seed"), storage=job["storage"], study_name=job["study"],
                          progress=False, worker=job["worker"], heartbeat=job.get("heartbeat"), recover=recover)
    started = time.monotonic()
    with _free_scratch_node(topology, job["topology"]) as scratch, connect(scratch.name) as client, \
            Caller(scratch.name) as caller:
        system = LiveSystem(client, caller, optimizer.spaces, every_value=True)
        _, ran, seen, _ = optimizer.search(table.caller_program(caller), table.trainset, table.metric,
                                           trials=job["trials"], apply=system.apply, current=job.get("fixed"),
                                           threads=table.threads)
    return {"worker": job["worker"], "ran": ran, "seconds": round(time.monotonic() - started, 3),
            "failures": seen.failures, "first_error": seen.first_error, "first_apply_error": seen.first_apply_error}


@contextlib.contextmanager
def _free_scratch_node(topology, path: str):
    """The scratch node on the first free slot (``workers.scratch_names``)."""
    names = scratch_names(topology.node.name)
    for name in names:
        try:
            context = scratch_node(topology, path, name=name)
            node = context.__enter__()
        except ScratchNameTaken:
            continue
        with contextlib.ExitStack() as stack:
            stack.push(context)
            yield node
            return
    raise ScratchNameTaken(f"every scratch node name {names[0]} ... {names[-1]} is taken by a running node")


def _stop_with_owner() -> None:
    """The pool keeps the worker's stdin open: when it closes (the owner died), SIGINT this process.
    SIGINT is made Python's own first: a process started in the background of a script (``&``)
    inherits it ignored, and would then run trials for a dead owner (and ignore its pool's stop)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    def watch() -> None:
        try:
            sys.stdin.read()
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True, name="otpy-owner-watch").start()
