"""``otpy start``: a node in the foreground (Ctrl-C stops it in order) or detached.

Exit codes as everywhere: 0 success, 1 the operation failed (the message says why), 2 usage or input error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from typing import Callable

import click

from .exits import EXIT_FAILED, load_or_exit
from .work import record_topology
from ..host.node_run import RUN_VAR, lock_holder
from ..host.runtime_dir import RuntimeDirError, node_dir, open_private_append
from ..node.node import AsyncNode, NodeAlreadyRunning, NodeStartError, already_running
from ..node.reload import reload_summary
from ..wire.client import Client
from ..wire.protocol import Reload


@click.command()
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="Log debug details too.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; return once the tree is up.")
@click.option("--timeout", default=60.0, show_default=True, help="With --detach: seconds to wait for the tree.")
def start(topology: str, verbose: bool, detach: bool, timeout: float) -> None:
    """Start the node described by TOPOLOGY and run it in the foreground.

    Children start in order, each READY before the next. Every line a child prints is
    logged with its id as prefix. Ctrl-C or SIGTERM stops the tree in reverse order and
    exits 0 (a second Ctrl-C kills everything at once). If the root supervisor gives up
    (restart intensity exceeded), otpy exits 1 naming the child. `otpy stop` stops it too.

    With --detach, the node runs in its own session with its output in `node.log` in its
    runtime folder; otpy returns 0 once the tree is up, or 1 with the end of the log.
    """
    spec = load_or_exit(topology)
    if detach:
        sys.exit(_start_detached(topology, spec.node.name, timeout))
    _setup_logging(verbose)
    node = AsyncNode(spec.node, on_output=_print_child_line)
    node.topology_path = os.path.abspath(topology)
    sys.exit(asyncio.run(_run_foreground(node, on_started=lambda: record_topology(node.name, topology))))


def _start_detached(topology: str, name: str, timeout: float) -> int:
    """Run `otpy start` in its own session, log to the runtime folder, wait for `status` to answer.

    The node's lock says whether it already runs (the detached process takes it; if another
    start wins the race, that process refuses and exits, and this one reports its log).
    """
    folder = node_dir(name)
    if (holder := lock_holder(folder)) is not None:
        click.echo(f"otpy: {already_running(name, holder)}", err=True)
        return EXIT_FAILED
    log_path = folder / "node.log"
    log_fd = open_private_append(log_path)  # 0600: it may hold a child's secrets
    try:  # its own node, in its own session: not part of the run of whatever node runs this
        env = {k: v for k, v in os.environ.items() if k != RUN_VAR}
        proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", os.path.abspath(topology)],
                                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    finally:
        os.close(log_fd)
    if not _answers_as(name, proc, timeout):
        _end(proc)
        click.echo(f"otpy: node {name!r} did not start (see {log_path}):\n{_tail(log_path)}", err=True)
        return EXIT_FAILED
    click.echo(f"otpy: node {name!r} started (pid {proc.pid}); log: {log_path}")
    return 0


def _answers_as(name: str, proc: subprocess.Popen, timeout: float) -> bool:
    """True once node ``name`` answers from ``proc`` with its tree up; False if it exits or ``timeout``
    passes first, or if another process answers (a start that won the race: ours refuses and exits).
    The node answers while its tree starts (state "starting"): that is asked again, within ``timeout``."""
    deadline = time.monotonic() + timeout
    with Client(name) as client:
        while True:
            try:
                report = client.wait_ready(max(deadline - time.monotonic(), 0.01),
                                           give_up=lambda: proc.poll() is not None)
            except TimeoutError:
                return False
            if report.pid != proc.pid or report.tree.state != "starting":
                break
            if proc.poll() is not None or time.monotonic() >= deadline:
                return False
            proc_exited = _wait_exit_for(proc, 0.1)  # the pace of the questions, not a guess of the start
            if proc_exited:
                return False
    if report.pid == proc.pid:
        return report.tree.state == "running"
    try:
        proc.wait(max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        pass
    return False


def _end(proc: subprocess.Popen) -> None:
    """End a detached start that did not come up in time: SIGTERM (in order), a second SIGTERM
    (kill at once) after 2 s, SIGKILL after 5 more: never waits unbounded for a stubborn child."""
    for send, grace in ((proc.terminate, 2.0), (proc.terminate, 5.0), (proc.kill, 5.0)):
        if proc.poll() is not None:
            return
        send()
        if _wait_exit_for(proc, grace):
            return


def _wait_exit_for(proc: subprocess.Popen, seconds: float) -> bool:
    """True if ``proc`` exits within ``seconds``."""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _tail(path, lines: int = 20) -> str:
    with open(path, errors="replace") as f:
        return "".join(deque(f, maxlen=lines)).rstrip()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)


def _print_child_line(child_id: str, stream: str, line: str) -> None:
    print(f"[{child_id}] {line}", file=sys.stderr, flush=True)


async def _reload_on_hangup(node: AsyncNode) -> None:
    """SIGHUP: the node reads its own topology file again and applies it (``otpy reload``)."""
    if not node.started or node.stopping:
        logging.getLogger("otpy").warning("otpy[%s]: SIGHUP ignored: the node is not running its tree", node.name)
        return
    outcome = await node.handle(Reload(0))
    logging.getLogger("otpy").log(logging.INFO if outcome.ok else logging.ERROR,
                                  "otpy[%s]: reload on SIGHUP: %s", node.name, reload_summary(outcome))


async def _run_foreground(node: AsyncNode, on_started: Callable[[], None] = lambda: None) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    node.on_stop_request = stop_requested.set  # `otpy stop` through the control socket
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop_requested.set()
            if not node.started:  # the tree starts, or stops after a failed start: say what comes
                click.echo("otpy: stopping in order once the start ends "
                           "(a second Ctrl-C or SIGTERM kills at once)", err=True)
        elif node.root is not None:  # a second Ctrl-C: no more waiting
            loop.create_task(node.root.kill())

    for sig in (signal.SIGINT, signal.SIGTERM):  # before start: a Ctrl-C while starting stops in order too
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_on_hangup(node)))
    try:
        await node.start()
    except NodeAlreadyRunning as exc:
        click.echo(f"otpy: {exc}", err=True)
        return EXIT_FAILED
    except NodeStartError as exc:
        click.echo(f"otpy: node {node.name!r} did not start: {exc}", err=True)
        return EXIT_FAILED
    try:
        on_started()  # after the lock: a refused start must not touch the running node's files
    except RuntimeDirError as exc:  # a planted topology.path: the node runs on, without the record
        click.echo(f"otpy: {exc}", err=True)
    stop_task = asyncio.ensure_future(stop_requested.wait())
    await asyncio.wait({stop_task, node.root.exited}, return_when=asyncio.FIRST_COMPLETED)
    if stop_requested.is_set():
        await node.stop()
        return 0
    stop_task.cancel()
    reason = await node.wait()
    if node.root.error:
        click.echo(f"otpy: root supervisor gave up: {node.root.error}", err=True)
        return EXIT_FAILED
    click.echo(f"otpy: root supervisor exited: {reason}", err=True)
    return 0
