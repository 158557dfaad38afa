"""The ``otpy`` command line. Thin: one function per command; the work is done elsewhere.

Exit codes: 0 success, 1 the operation failed (the message says why), 2 usage or input error,
3 (``status``) not running. ``--json``: one JSON document on stdout (``cli.exits``' rule).
Shell completion is click's: ``eval "$(_OTPY_COMPLETE=bash_source otpy)"`` (``cli.options``
completes node names and child ids).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import msgspec
import zmq

from .bench_cmd import bench
from .children import delete_child, restart, restart_child, signal_, start_child, terminate_child
from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_RUNNING, EXIT_USAGE, REMOTE_HINT, Remote, ask, fail, node_or_exit
from .keys import keys_group
from .logs import logs
from .optimize_cmd import optimize
from .options import JSON_OPTION, Seconds, child_id_argument, node_options
from .reload import reload
from .start import start
from .status_view import add_usage, find_entry, not_running, render_status, status_json
from .vars import vars_group
from .work import call, run_pipeline
from ..host.runtime_dir import RuntimeDirError, events_endpoint, running_nodes
from ..node.node import describe_event
from ..topology.load import TopologyError, load_topology, topology_json_schema
from ..wire.client import (InvalidNodeName, NodeNotFound, NodeStale, clear_stale, node_alive, node_statuses,
                           pick_node, socket_path)
from ..wire.operations import expect
from ..wire.protocol import EVENT, NodeEvent, StopNode, Stopping

class _Group(click.Group):
    """Every command's refused runtime folder is one line and exit 1, not a traceback; a Ctrl-C
    that no command caught is exit 130 (``cli.entry``), not click's "Aborted!" and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RuntimeDirError as exc:
            click.echo(f"otpy: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="otpy")
def main() -> None:
    """otpy: Erlang/OTP supervision trees for agent programs, one OS process per agent.

    Describe the tree in a topology.toml, then `otpy start topology.toml`.
    """


for command in (start, call, run_pipeline, optimize, vars_group, bench, logs, reload,
                start_child, terminate_child, restart_child, delete_child, restart, signal_, keys_group):
    main.add_command(command)


@main.command()
@click.argument("topology", type=click.Path(dir_okay=False))
@JSON_OPTION
def validate(topology: str, as_json: bool) -> None:
    """Check TOPOLOGY without starting anything (same checks as `otpy start`); exit 2 if invalid."""
    try:
        spec = load_topology(topology)
    except TopologyError as exc:
        if as_json:
            click.echo(json.dumps({"file": topology, "ok": False, "node": None, "error": str(exc)}))
        fail(str(exc), EXIT_USAGE)
    click.echo(json.dumps({"file": topology, "ok": True, "node": spec.node.name, "error": None}) if as_json
               else f"{topology}: ok")


@main.command()
def schema() -> None:
    """Print the JSON Schema of topology files."""
    click.echo(json.dumps(topology_json_schema(), indent=2))


@main.command()
@child_id_argument(required=False)
@node_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--timeout", default=30.0, show_default=True, type=Seconds(), help="Seconds to wait for the answer.")
def status(child_id: str | None, node_name: str | Remote | None, as_json: bool, timeout: float) -> None:
    """Show the node's tree, or child ID (a supervisor: its subtree): id, kind, state, program,
    pid, restarts, uptime, CPU % and RSS of workers.

    Exits 3, as `systemctl status` does, when the node is not running, when ID (or the root)
    is not running, or when a child below it is restarting, starting or stopping; a child
    stopped on purpose (disabled, terminate-child, a transient that ended) does not count.
    Exits 2 for an unknown ID. Over --endpoint, a node that does not answer is exit 1, and
    CPU % and RSS are not shown (the pids are the node host's).
    """
    remote = isinstance(node_name, Remote)
    name = node_name if remote else _running_node_or_exit_3(node_name)
    report = status_json(ask(name, "status", lambda client: client.status(), timeout=timeout))
    if child_id is not None:
        if (entry := find_entry(report["tree"], child_id)) is None:
            fail(f"status: node {report['node']!r} has no child {child_id!r} (`otpy status` lists them)", EXIT_USAGE)
        report["tree"] = entry
    if not remote:
        add_usage(report["tree"])
    click.echo(json.dumps(report, indent=2) if as_json else render_status(report))
    if stopped := not_running(report["tree"]):
        click.echo(f"otpy: not running: {', '.join(stopped)}", err=True)  # which, for a script's log
        sys.exit(EXIT_NOT_RUNNING)


def _running_node_or_exit_3(name: str | None) -> str:
    """The node ``status`` shows; exit 3 if it is not running (none, or stale), 2 if the name is
    not a name or several run and none was named."""
    try:
        return pick_node(name)
    except InvalidNodeName as exc:
        fail(f"otpy: {exc}", EXIT_USAGE)
    except NodeStale as exc:
        fail(f"otpy: {exc}", EXIT_NOT_RUNNING)
    except NodeNotFound as exc:
        several = name is None and sum(node_alive(n) for n in running_nodes()) > 1
        fail(f"otpy: {exc}", EXIT_USAGE if several else EXIT_NOT_RUNNING)


@main.command()
@node_options
@click.option("--timeout", default=120.0, show_default=True, type=Seconds(),
              help="Seconds to wait for the shutdown.")
@JSON_OPTION
def stop(node_name: str | Remote | None, timeout: float, as_json: bool) -> None:
    """Stop the node in order; returns once its tree stopped and its process exited.

    A node whose process died (stale) is cleaned instead: what its run left is killed, its
    sockets and lock are removed, and the exit status is 0. Over --endpoint it returns once
    the tree stopped (the node's process is on its own host).
    """
    if isinstance(node_name, Remote):
        result = ask(node_name, "stop", lambda client: expect(Stopping)(client.request(StopNode(0), timeout)),
                     timeout=timeout)
        click.echo(json.dumps({"command": "stop", "node": node_name.endpoint, "ok": True, "pid": result.pid,
                               "stale": False}) if as_json else f"otpy: node stopped (pid {result.pid})")
        return
    if (stale := _stale(node_name)) is not None and clear_stale(stale):
        click.echo(json.dumps({"command": "stop", "node": stale, "ok": True, "pid": None, "stale": True})
                   if as_json else f"otpy: {NodeStale(stale)}; removed its sockets and lock")
        return  # (clear_stale is False if it started again meanwhile: that one is stopped)
    name = node_or_exit(node_name)
    result = ask(name, "stop", lambda client: client.stop(timeout=timeout), timeout=timeout)
    click.echo(json.dumps({"command": "stop", "node": name, "ok": True, "pid": result.pid, "stale": False})
               if as_json else f"otpy: node stopped (pid {result.pid})")


def _stale(name: str | None) -> str | None:
    """The name of the node ``name`` picks (the only one, if None) when its process died; else None."""
    try:
        pick_node(name)
    except NodeStale as exc:
        return exc.name
    except NodeNotFound:
        pass
    return None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array of {node, pid, state, stale} ([] for none).")
def nodes(as_json: bool) -> None:
    """List this user's nodes: a node whose process died is stale (its folder is left)."""
    found = node_statuses()
    if as_json:  # state: the root's, or null for a stale node and one that did not answer
        click.echo(json.dumps([{"node": name, "pid": report and report.pid, "state": report and report.tree.state,
                                "stale": report is None and not node_alive(name)} for name, report in found]))
        return
    for name, report in found:
        stale = report is None and not node_alive(name)
        if stale:
            click.echo(f"{name}\tstale (its process died; `otpy stop --node {name}` cleans up)")
        elif report is None:
            click.echo(f"{name}\trunning, no answer within 0.5 s")
        else:
            click.echo(f"{name}\tpid {report.pid}\t{report.tree.state}")


@main.command()
@node_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event, one per line (JSON Lines).")
@click.option("--timeout", default=10.0, show_default=True, type=Seconds(),
              help="Over --endpoint: seconds to wait for the connection to the node's events.")
def events(node_name: str | Remote | None, as_json: bool, timeout: float) -> None:
    """Print the node's events live, one per line, until Ctrl-C or the node's end.

    Exits 0 once the node stopped, 1 if its process died (its lock is looked at every 0.5 s).
    Over --endpoint the events come from the node's control_tcp port + 2 (CURVE, the same
    keys): exit 0 after the node said it stops, 1 if the connection cannot be made within
    --timeout, the node refuses this key, or the connection ends otherwise (or goes silent:
    a cut network, a frozen node; ZeroMQ heartbeats find it in 3 s) and is not made again
    within 5 s.
    """
    if isinstance(node_name, Remote):
        _remote_events(node_name, as_json, timeout)
        return
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


def _remote_events(remote: Remote, as_json: bool, timeout: float) -> None:
    """``otpy events --endpoint``: the node's TCP events (``node.remote_events``)."""
    from ..node.remote_events import RemoteEvents

    try:
        stream = RemoteEvents(remote.endpoint, remote.keys)
    except ValueError as exc:
        fail(f"otpy: events: {exc}", EXIT_USAGE)
    with stream:
        try:
            stream.connect(timeout)
            for event in stream:
                _print_event(event, as_json)
        except KeyboardInterrupt:
            return
        except TimeoutError as exc:
            fail(f"events: {exc}" + REMOTE_HINT.replace("serves control_tcp at that endpoint",
                                                        "serves control_tcp at --endpoint (its events: port + 2)"))
        except ConnectionError as exc:  # refused (not authorized, revoked), or lost
            fail(f"events: {exc}")
    click.echo(f"otpy: node at {remote.endpoint} stopped", err=True)


def _print_event(event: NodeEvent, as_json: bool) -> None:
    click.echo(json.dumps(msgspec.to_builtins(event)) if as_json else _event_line(event))
    sys.stdout.flush()


def _print_events(socket: zmq.Socket, as_json: bool, wait_ms: int = 0) -> None:
    """Every event received (waiting up to ``wait_ms`` for each next one), one line each."""
    while socket.poll(wait_ms):
        _print_event(EVENT.decode(socket.recv()), as_json)


def _event_line(event: NodeEvent) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    return f"{stamp} otpy[{event.node}]: {describe_event(event)[1]}"
