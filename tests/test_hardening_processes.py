"""Hardening of the process layer: the run tag, fd exhaustion, zygote death, a stopped zygote.

Real processes and signals; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys

import pytest

from otpy._node_run import RUN_VAR, processes_of_run
from otpy._processes import ProcessManager
from otpy._specs import ChildSpec

from helpers import SLEEPER, python

_names = itertools.count()


def node_name() -> str:
    return f"test-hardening-{os.getpid()}-{next(_names)}"


@contextlib.asynccontextmanager
async def manager(**kwargs):
    processes = ProcessManager(node_name=node_name(), on_output=lambda *_: None, **kwargs)
    await processes.open()
    try:
        yield processes
    finally:
        await processes.close()


def sleeper(id: str = "cmd", **fields) -> ChildSpec:
    return ChildSpec(id=id, command=python(SLEEPER), ready="notify", **fields)


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        entries = f.read().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if b"=" in e)


def test_the_run_id_given_is_carried_by_the_zygote_and_every_child():
    async def main():
        async with manager(run_id="run-given-1") as processes:
            child = await processes.spawn(sleeper())
            assert environ_of(child.pid)[RUN_VAR] == "run-given-1"
            assert set(processes_of_run("run-given-1")) >= {child.pid, processes._zygote.pid}

    asyncio.run(main())


def test_without_a_run_id_one_is_made():
    async def main():
        async with manager() as processes:
            child = await processes.spawn(sleeper())
            assert processes.run_id and environ_of(child.pid)[RUN_VAR] == processes.run_id

    asyncio.run(main())
