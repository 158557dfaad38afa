"""The ``otpy`` command line. Thin: one function per command; the work is done elsewhere.

Exit codes: 0 success, 1 the operation failed (the message says why), 2 usage or input error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from typing import Any, Callable, NoReturn

import click
import msgspec
import zmq

from .exits import node_or_exit
from .status_view import add_usage, render_status, status_json
from .vars import vars_group
from .work import bench, call, optimize, record_topology, run_pipeline
from ..wire.client import (
    Client, ControlError, NodeNotFound, NodeStale, clear_stale, node_alive, node_statuses, pick_node, socket_path,
)
from ..topology.load import TopologyError, load_topology, topology_json_schema
from ..node.node import AsyncNode, NodeAlreadyRunning, NodeStartError, already_running, describe_event
from ..host.node_run import RUN_VAR, lock_holder
from ..wire.protocol import EVENT, NodeEvent, Outcome
from ..host.runtime_dir import RuntimeDirError, events_endpoint, node_dir, open_private_append
from ..specs.model import ChildSpec, name_problem
from ..specs.rules import spec_problems

EXIT_FAILED = 1
EXIT_USAGE = 2


class _Group(click.Group):
    """Every command's refused runtime folder is one line and exit 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RuntimeDirError as exc:
            click.echo(f"otpy: {exc}", err=True)
            sys.exit(EXIT_FAILED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="otpy")
def main() -> None:
    """otpy: Erlang/OTP supervision trees for agent programs, one OS process per agent.

    Describe the tree in a topology.toml, then `otpy start topology.toml`.
    """


@main.command()
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
    spec = _load_or_exit(topology)
    if detach:
        sys.exit(_start_detached(topology, spec.node.name, timeout))
    _setup_logging(verbose)
    node = AsyncNode(spec.node, on_output=_print_child_line)
    sys.exit(asyncio.run(_run_foreground(node, on_started=lambda: record_topology(node.name, topology))))


main.add_command(call)
main.add_command(run_pipeline)
main.add_command(optimize)
main.add_command(vars_group)
main.add_command(bench)


@main.command()
@click.argument("topology", type=click.Path(dir_okay=False))
def validate(topology: str) -> None:
    """Check TOPOLOGY without starting anything (same checks as `otpy start`)."""
    _load_or_exit(topology)
    click.echo(f"{topology}: ok")


@main.command()
def schema() -> None:
    """Print the JSON Schema of topology files."""
    click.echo(json.dumps(topology_json_schema(), indent=2))


def _node_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A node name passes the name rule before any path is built from it."""
    return _checked_name(value, "node name")


def _checked_name(value: str | None, what: str) -> str | None:
    """``value`` if it passes the name rule (``specs.model.name_problem``); else an input error (exit 2)."""
    if value is not None and (problem := name_problem(value, what)):
        raise click.BadParameter(problem)
    return value


NODE_OPTION = click.option("--node", "node_name", metavar="NAME", callback=_node_name,
                           help="The node to talk to (may be left out when only one runs).")
SUP_OPTION = click.option("--sup", metavar="SUP", help="The supervisor of the child (default: found by id).")


@main.command()
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(node_name: str | None, as_json: bool) -> None:
    """Show the node's tree: id, kind, state, pid, restarts, uptime, CPU % and RSS of workers."""
    report = status_json(_ask(node_name, "status", lambda client: client.status()))
    add_usage(report["tree"])
    click.echo(json.dumps(report, indent=2) if as_json else render_status(report))


@main.command()
@NODE_OPTION
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the shutdown.")
def stop(node_name: str | None, timeout: float) -> None:
    """Stop the node in order; returns once its tree stopped and its process exited.

    A node whose process died (stale) is cleaned instead: what its run left is killed, its
    sockets and lock are removed, and the exit status is 0.
    """
    if (stale := _stale(node_name)) is not None and clear_stale(stale):
        click.echo(f"otpy: {NodeStale(stale)}; removed its sockets and lock")
        return  # (clear_stale is False if it started again meanwhile: that one is stopped)
    result = _ask(node_name, "stop", lambda client: client.stop(timeout=timeout), timeout=timeout)
    click.echo(f"otpy: node stopped (pid {result.pid})")


def _stale(name: str | None) -> str | None:
    """The name of the node ``name`` picks (the only one, if None) when its process died; else None."""
    try:
        pick_node(name)
    except NodeStale as exc:
        return exc.name
    except NodeNotFound:
        pass
    return None


@main.command("start-child")
@click.argument("sup")
@click.option("--id", "child_id", required=True, callback=lambda ctx, param, value: _checked_name(value, "id"),
              help="The new child's id.")
@click.option("--template", help="A template of the dynamic supervisor SUP.")
@click.option("--program", help="A Python program, MODULE:ATTR.")
@click.option("--command", help="A command line (split like a shell does).")
@click.option("--args", "args_json", default="{}", help="JSON object: the program's or template's args.")
@click.option("--restart", type=click.Choice(["permanent", "transient", "temporary"]), default="permanent",
              show_default=True, help="Restart type (with --program or --command).")
@NODE_OPTION
def start_child(sup, child_id, template, program, command, args_json, restart, node_name) -> None:
    """Start a child under SUP from a template, a program or a command."""
    args = _json_object_or_exit(args_json)
    if sum(x is not None for x in (template, program, command)) != 1:
        _usage_exit("start-child: give exactly one of --template, --program and --command")
    try:
        argv = tuple(shlex.split(command)) if command is not None else None
    except ValueError as exc:
        _usage_exit(f"start-child: --command cannot be split like a shell line: {exc}")
    spec = ChildSpec(id=child_id, program=program, args=args, restart=restart, command=argv)
    checked = spec if template is None else ChildSpec(id=child_id, command=("-",), args=args)  # its args alone
    if problems := spec_problems(checked):
        _usage_exit(f"start-child: {'; '.join(problems)}")
    if template is not None:
        _outcome_exit("start-child", _ask(node_name, "start-child",
                                          lambda c: c.start_from_template(sup, template, child_id, args)))
    _outcome_exit("start-child", _ask(node_name, "start-child", lambda c: c.start_child(sup, spec)))


@main.command("terminate-child")
@click.argument("child_id", metavar="ID")
@SUP_OPTION
@NODE_OPTION
def terminate_child(child_id: str, sup: str | None, node_name: str | None) -> None:
    """Stop child ID (its spec is kept unless temporary; no restart)."""
    _outcome_exit("terminate-child", _ask(node_name, "terminate-child", lambda c: c.terminate_child(child_id, sup)))


@main.command("restart-child")
@click.argument("child_id", metavar="ID")
@SUP_OPTION
@NODE_OPTION
def restart_child(child_id: str, sup: str | None, node_name: str | None) -> None:
    """Start child ID again after terminate-child."""
    _outcome_exit("restart-child", _ask(node_name, "restart-child", lambda c: c.restart_child(child_id, sup)))


@main.command("delete-child")
@click.argument("child_id", metavar="ID")
@SUP_OPTION
@NODE_OPTION
def delete_child(child_id: str, sup: str | None, node_name: str | None) -> None:
    """Forget the spec of stopped child ID."""
    _outcome_exit("delete-child", _ask(node_name, "delete-child", lambda c: c.delete_child(child_id, sup)))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node.")
def nodes(as_json: bool) -> None:
    """List this user's nodes: a node whose process died is stale (its folder is left)."""
    for name, report in node_statuses():
        stale = report is None and not node_alive(name)
        if as_json:
            click.echo(json.dumps({"node": name, "pid": report and report.pid, "stale": stale}))
        elif stale:
            click.echo(f"{name}\tstale (its process died; `otpy stop --node {name}` cleans up)")
        elif report is None:
            click.echo(f"{name}\trunning, no answer within 0.5 s")
        else:
            click.echo(f"{name}\tpid {report.pid}\t{report.tree.state}")


@main.command()
@NODE_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
def events(node_name: str | None, as_json: bool) -> None:
    """Print the node's events live, one per line, until Ctrl-C or the node's end.

    Exits 0 once the node stopped, 1 if its process died (its lock is looked at every 0.5 s).
    """
    name = node_or_exit(node_name)
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(events_endpoint(name))
    try:
        while socket.poll(500) or node_alive(name):
            _print_events(socket, as_json)
        _print_events(socket, as_json, wait_ms=100)  # the last ones, published before the end
    except KeyboardInterrupt:
        return
    finally:
        socket.close(linger=0)
        context.term()
    if socket_path(name).exists():  # a node that stops removes it: this one died
        click.echo(f"otpy: {NodeStale(name)}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"otpy: node {name!r} stopped", err=True)


def _print_events(socket: zmq.Socket, as_json: bool, wait_ms: int = 0) -> None:
    """Every event received (waiting up to ``wait_ms`` for each next one), one line each."""
    while socket.poll(wait_ms):
        event = EVENT.decode(socket.recv())
        click.echo(json.dumps(msgspec.to_builtins(event)) if as_json else _event_line(event))
        sys.stdout.flush()


# --- control helpers ----------------------------------------------------------------------


def _usage_exit(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(EXIT_USAGE)


def _ask(node_name: str | None, command: str, operation: Callable[[Client], Any], timeout: float = 30.0) -> Any:
    """Run ``operation`` on a client of the node; exit 1 if the node refused or did not answer."""
    with Client(node_or_exit(node_name), timeout=timeout) as client:
        try:
            return operation(client)
        except (ControlError, TimeoutError, NodeStale) as exc:
            click.echo(f"{command}: {exc}", err=True)
            sys.exit(EXIT_FAILED)


def _outcome_exit(command: str, result: Outcome) -> NoReturn:
    if result.ok:
        click.echo(f"{command}: ok" + (f" (pid {result.pid})" if result.pid else ""))
        sys.exit(0)
    click.echo(f"{command}: {result.detail or result.outcome} ({result.outcome})", err=True)
    sys.exit(EXIT_FAILED)


def _json_object_or_exit(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        _usage_exit(f"--args is not valid JSON: {exc}")
    if not isinstance(value, dict):
        _usage_exit("--args must be a JSON object")
    return value


def _event_line(event: NodeEvent) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    return f"{stamp} otpy[{event.node}]: {describe_event(event)[1]}"


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


# --- helpers ------------------------------------------------------------------------------


def _load_or_exit(path: str):
    try:
        return load_topology(path)
    except TopologyError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)


def _print_child_line(child_id: str, line: str) -> None:
    print(f"[{child_id}] {line}", file=sys.stderr, flush=True)


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
