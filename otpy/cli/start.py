"""``otpy start``: a node in the foreground (Ctrl-C stops it in order) or detached.

Exit codes as everywhere: 0 success, 1 the operation failed (the message says why), 2 usage or input error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zlib
from collections import deque
from typing import Callable, TextIO

import click

from .exits import EXIT_FAILED, EXIT_USAGE
from .options import Seconds
from .stderr_echo import StderrEcho
from .work import record_topology
from ..agent.import_check import IMPORT_TIMEOUT
from ..host.log_files import (
    NODE_LOG, LogFolderError, line_formatter, log_dir, log_folder_user, make_private_dir, open_log_fd,
)
from ..host.node_run import RUN_VAR, lock_holder
from ..host.runtime_dir import RuntimeDirError, node_dir
from ..node.node import AsyncNode, NodeAlreadyRunning, NodeStartError, already_running
from ..node.reload import reload_summary
from ..topology.load import TopologyError, load_topology
from ..wire.client import Client
from ..wire.protocol import Reload, Status

log = logging.getLogger("otpy")


@click.command()
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="Log debug details too.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; return once the tree is up.")
@click.option("--timeout", default=60.0, show_default=True, type=Seconds(),
              help="With --detach: seconds to wait for the tree, checking the file's programs included.")
@click.option("--json", "as_json", is_flag=True,
              help="With --detach: print the result as one JSON object on stdout.")
@click.option("--detached-run", is_flag=True, hidden=True)  # the process --detach starts: logs to node.log only
def start(topology: str, verbose: bool, detach: bool, timeout: float, as_json: bool, detached_run: bool) -> None:
    """Start the node described by TOPOLOGY and run it in the foreground.

    Children start in order, each READY before the next. Every line a child prints is
    shown with its id as prefix (coloured on a terminal) and written to its log file
    (`otpy logs ID`). Ctrl-C or SIGTERM stops the tree in reverse order and exits 0 (a
    second Ctrl-C kills everything at once). If the root supervisor gives up (restart
    intensity exceeded), otpy exits 1 naming the child. `otpy stop` stops it too.

    With --detach, the node runs in its own session, its lines in `node.log` of its log
    folder; otpy returns 0 once the tree is up, or 1 with the end of that log, within
    --timeout seconds. --json (with --detach) prints {"node", "pid", "log", ...} as one
    JSON object, a failure too ("ok": false); the message is also on stderr.
    """
    if as_json and not detach:
        raise click.UsageError("--json goes with --detach (a node in the foreground prints its children's lines)")
    deadline = time.monotonic() + timeout
    try:  # the programs' import check shares --timeout (it alone could take IMPORT_TIMEOUT)
        spec = load_topology(topology, import_timeout=min(IMPORT_TIMEOUT, timeout) if detach else IMPORT_TIMEOUT)
    except TopologyError as exc:
        if detach and time.monotonic() >= deadline:  # cut short by --timeout: the start failed in time
            sys.exit(_detach_failed(None, f"did not start within {timeout:g} s: {exc}", None, as_json))
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)
    if detach:
        sys.exit(_start_detached(topology, spec.node, deadline, timeout, as_json))
    echo = None if detached_run else StderrEcho(sys.stderr.fileno())  # never a blocking write on the loop
    node = AsyncNode(spec.node, on_output=(lambda *_: None) if echo is None else child_printer(echo, sys.stderr))
    node.topology_path = os.path.abspath(topology)
    node.cluster = spec.cluster
    if detached_run:  # stdout and stderr are node.log: they follow it across rotations
        node.logs.follow_fds = (1, 2)
    _setup_logging(verbose, detached=node if detached_run else None, echo=echo)
    try:
        status = asyncio.run(_run_foreground(node, on_started=lambda: record_topology(node.name, topology)))
    finally:
        if echo is not None:
            echo.close()
    sys.exit(status)


def _start_detached(topology: str, node_spec, deadline: float, timeout: float, as_json: bool) -> int:
    """Run `otpy start` in its own session, its output in node.log, and wait for `status` to answer.

    The node's lock says whether it already runs (the detached process takes it; if another
    start wins the race, that process refuses and exits, and this one reports its log).
    """
    name = node_spec.name
    folder = node_dir(name)
    if (holder := lock_holder(folder)) is not None:
        return _detach_failed(name, already_running(name, holder), None, as_json, names_node=True)
    if (user := log_folder_user(log_dir(name, node_spec.logs), name)) is not None:  # not into another node's node.log
        return _detach_failed(name, f"did not start: its log folder {log_dir(name, node_spec.logs)} is used by "
                              f"node {user!r}, which is running; give each node its own [logs] folder", None, as_json)
    try:
        log_path = make_private_dir(log_dir(name, node_spec.logs)) / NODE_LOG
        log_fd = open_log_fd(log_path)  # 0600: it may hold a child's secrets
    except LogFolderError as exc:
        return _detach_failed(name, str(exc), None, as_json)
    try:  # its own node, in its own session: not part of the run of whatever node runs this
        env = {k: v for k, v in os.environ.items() if k != RUN_VAR}
        proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", "--detached-run", os.path.abspath(topology)],
                                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    finally:
        os.close(log_fd)
    up, last = _answers_as(name, proc, max(deadline - time.monotonic(), 0.01))
    if not up:
        timed_out = proc.poll() is None  # still starting when --timeout passed: ended here
        if timed_out and last is None:
            last = _last_answer(name, proc)
        _end(proc)
        if not timed_out:
            return _detach_failed(name, f"did not start (see {log_path})", log_path, as_json)
        starting = _still_starting(last)
        why = (f"did not start within --timeout {timeout:g} s" + (f" ({starting})" if starting else "")
               + f"; stopped, nothing left running (see {log_path})")
        return _detach_failed(name, why, log_path, as_json)
    if as_json:
        click.echo(json.dumps({"command": "start", "ok": True, "node": name, "pid": proc.pid,
                               "log": str(log_path), "log_folder": str(log_path.parent),
                               "topology": os.path.abspath(topology)}))
    else:
        click.echo(f"otpy: node {name!r} started (pid {proc.pid}); log: {log_path}")
    return 0


def _detach_failed(name: str | None, why: str, log_path, as_json: bool, names_node: bool = False) -> int:
    """A detached start that failed: one line on stderr (with the end of the log, if any), and
    with --json the same as one object ``{"command": "start", "ok": false, ...}``; exit 1.
    ``names_node``: ``why`` already starts with the node (``already_running``'s wording)."""
    tail = _tail(log_path) if log_path is not None else ""
    who = f"node {name!r} " if name and not names_node else ""
    click.echo(f"otpy: {who}{why}" + (f":\n{tail}" if tail else ""), err=True)
    if as_json:
        click.echo(json.dumps({"command": "start", "ok": False, "node": name, "detail": why,
                               "log": str(log_path) if log_path else None, "log_tail": tail.splitlines()}))
    return EXIT_FAILED


def _answers_as(name: str, proc: subprocess.Popen, timeout: float) -> tuple[bool, Status | None]:
    """(True, ...) once node ``name`` answers from ``proc`` with its tree up; False if it exits or
    ``timeout`` passes first, or if another process answers (a start that won the race: ours refuses
    and exits). The node answers while its tree starts (state "starting"): that is asked again, within
    ``timeout``; the last such answer is returned (what was still starting)."""
    deadline = time.monotonic() + timeout
    last = None
    with Client(name) as client:
        while True:
            try:
                report = client.wait_ready(max(deadline - time.monotonic(), 0.01),
                                           give_up=lambda: proc.poll() is not None)
            except TimeoutError:
                return False, last
            if report.pid != proc.pid or report.tree.state != "starting":
                break
            last = report
            if proc.poll() is not None or time.monotonic() >= deadline:
                return False, last
            proc_exited = _wait_exit_for(proc, 0.1)  # the pace of the questions, not a guess of the start
            if proc_exited:
                return False, last
    if report.pid == proc.pid:
        return report.tree.state == "running", report
    try:
        proc.wait(max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        pass
    return False, last


def _last_answer(name: str, proc: subprocess.Popen) -> Status | None:
    """One more question (1 s at most) to a node cut short before it answered: what is starting."""
    try:
        with Client(name, timeout=1.0) as client:
            report = client.status()
    except Exception:  # not answering yet: the message names no child
        return None
    return report if report.pid == proc.pid else None


def _still_starting(report: Status | None) -> str:
    """"child 'db' still starting" from the last answer of a node whose start was cut short."""
    if report is None:
        return ""
    ids, stack = [], list(report.tree.children or ())
    while stack:
        entry = stack.pop(0)
        if entry.children is None and entry.state == "starting":
            ids.append(repr(entry.id))
        stack.extend(entry.children or ())
    return f"child {', '.join(ids)} still starting" if ids else ""


def _end(proc: subprocess.Popen) -> None:
    """End a detached start that did not come up in time: SIGTERM (in order), a second SIGTERM
    after 1 s (kill at once, a start under way included), SIGKILL after 5 more: within the
    timeout's few seconds, never unbounded for a stubborn child."""
    for send, grace in ((proc.terminate, 1.0), (proc.terminate, 5.0), (proc.kill, 5.0)):
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
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines)).rstrip()
    except OSError:
        return ""


def _setup_logging(verbose: bool, detached: AsyncNode | None = None, echo: StderrEcho | None = None) -> None:
    """The ``otpy`` logger at INFO (DEBUG with -v); while the node runs, its lines go to
    ``node.log`` (the node's handler, ``node.node_logs``), and in the foreground to stderr too.
    A ``detached`` node's stderr is ``node.log``: the lines before and after the node's handler
    (a refused start, the last words) are written there, stamped as the handler's are. In the
    foreground, stderr is written through ``echo`` (its thread, never the node's loop)."""
    level = logging.DEBUG if verbose else logging.INFO
    log.setLevel(level)
    if detached is None:
        if echo is None:
            logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
        else:
            echo.handler.setFormatter(logging.Formatter("%(message)s"))
            logging.basicConfig(level=level, handlers=[echo.handler])
        return
    log.propagate = False
    outside = logging.StreamHandler(sys.stderr)
    outside.setFormatter(line_formatter("%(levelname)s %(message)s"))
    outside.addFilter(lambda record: detached.logs.node_handler is None)
    log.addHandler(outside)


PREFIX_COLOURS = ("cyan", "green", "yellow", "blue", "magenta", "bright_cyan", "bright_green", "bright_yellow",
                  "bright_blue", "bright_magenta")


def child_printer(echo: StderrEcho, out: TextIO) -> Callable[[str, str, str], None]:
    """The foreground's ``on_output``: ``[ID] line`` through ``echo`` (to ``out``, by its thread);
    on a terminal (and without ``NO_COLOR``) the prefix is coloured, one colour per id, red for a
    stderr line. Never a colour code into a file or a pipe."""
    colour = out.isatty() and not os.environ.get("NO_COLOR")

    def print_line(child_id: str, stream: str, line: str) -> None:
        prefix = f"[{child_id}]"
        if colour:
            prefix = click.style(prefix, fg="red" if stream == "err" else
                                 PREFIX_COLOURS[zlib.crc32(child_id.encode()) % len(PREFIX_COLOURS)])
        echo.echo(f"{prefix} {line}")

    return print_line


async def _reload_on_hangup(node: AsyncNode) -> None:
    """SIGHUP: the node reads its own topology file again and applies it (``otpy reload``)."""
    if not node.started or node.stopping:
        logging.getLogger("otpy").warning("otpy[%s]: SIGHUP ignored: the node is not running its tree", node.name)
        return
    try:
        outcome = await node.handle(Reload(0))
    except Exception as exc:  # a bug: one line in the log, never "Task exception was never retrieved"
        logging.getLogger("otpy").error("otpy[%s]: reload on SIGHUP failed: %r", node.name, exc)
        return
    logging.getLogger("otpy").log(logging.INFO if outcome.ok else logging.ERROR,
                                  "otpy[%s]: reload on SIGHUP: %s", node.name, reload_summary(outcome))


async def _run_foreground(node: AsyncNode, on_started: Callable[[], None] = lambda: None) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    node.on_stop_request = stop_requested.set  # `otpy stop` through the control socket
    starting = asyncio.ensure_future(node.start())
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop_requested.set()
            if not node.started:  # the tree starts, or stops after a failed start: say what comes
                said = "Ctrl-C" if sig == signal.SIGINT else sig.name  # `start --detach`'s timeout sends SIGTERM
                log.warning("otpy: %s while starting: stopping in order once the start ends "
                            "(a second %s kills at once)", said, said)
        elif not starting.done():  # a second one while starting: the start ends now, every child killed
            starting.cancel()
        elif node.root is not None:  # a second Ctrl-C: no more waiting
            loop.create_task(node.root.kill())

    for sig in (signal.SIGINT, signal.SIGTERM):  # before start: a Ctrl-C while starting stops in order too
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_on_hangup(node)))
    try:
        await asyncio.wait({starting})
        starting.result()
    except asyncio.CancelledError:
        log.error("otpy: node %r did not start: stopped while starting (its children killed)", node.name)
        return EXIT_FAILED
    except NodeAlreadyRunning as exc:
        log.error("otpy: %s", exc)
        return EXIT_FAILED
    except NodeStartError as exc:
        log.error("otpy: node %r did not start: %s", node.name, exc)
        return EXIT_FAILED
    try:
        on_started()  # after the lock: a refused start must not touch the running node's files
    except RuntimeDirError as exc:  # a planted topology.path: the node runs on, without the record
        log.error("otpy: %s", exc)
    stop_task = asyncio.ensure_future(stop_requested.wait())
    await asyncio.wait({stop_task, node.root.exited}, return_when=asyncio.FIRST_COMPLETED)
    if stop_requested.is_set():
        await node.stop()
        return 0
    stop_task.cancel()
    reason = await node.wait()
    if node.root.error:
        log.error("otpy: root supervisor gave up: %s", node.root.error)
        return EXIT_FAILED
    log.warning("otpy: root supervisor exited: %s", reason)
    return 0
