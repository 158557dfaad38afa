"""The commands on one child: ``start-child``, ``terminate-child``, ``restart-child``,
``delete-child`` (OTP's operations, one request each), and the operator's ``restart`` and
``signal`` (``supervisorctl restart``, ``kill``).

Exit codes as everywhere: 0 success, 1 the operation failed (the message says why), 2 usage or
input error. ``--json`` prints the outcome as one JSON document (``exits.outcome_json``).
"""

from __future__ import annotations

import shlex

import click

from .exits import ask, json_object_or_exit, outcome_exit, usage_exit
from .options import (JSON_OPTION, SUP_OPTION, node_options, SignalParam, checked_name, child_id_argument,
                      complete_child_ids)
from ..wire.client import Client
from ..wire.protocol import Outcome, TreeEntry
from ..specs.model import ChildSpec
from ..specs.rules import spec_problems


@click.command("start-child")
@click.argument("sup", shell_complete=complete_child_ids)
@click.option("--id", "child_id", required=True, callback=lambda ctx, param, value: checked_name(value, "id"),
              help="The new child's id.")
@click.option("--template", help="A template of the dynamic supervisor SUP.")
@click.option("--program", help="A Python program, MODULE:ATTR.")
@click.option("--command", help="A command line (split like a shell does).")
@click.option("--args", "args_json", default="{}", help="JSON object: the program's or template's args.")
@click.option("--restart", type=click.Choice(["permanent", "transient", "temporary"]), default="permanent",
              show_default=True, help="Restart type (with --program or --command).")
@node_options
@JSON_OPTION
def start_child(sup, child_id, template, program, command, args_json, restart, node_name, as_json) -> None:
    """Start a child under SUP from a template, a program or a command."""
    args = json_object_or_exit(args_json)
    if sum(x is not None for x in (template, program, command)) != 1:
        usage_exit("start-child: give exactly one of --template, --program and --command")
    try:
        argv = tuple(shlex.split(command)) if command is not None else None
    except ValueError as exc:
        usage_exit(f"start-child: --command cannot be split like a shell line: {exc}")
    spec = ChildSpec(id=child_id, program=program, args=args, restart=restart, command=argv)
    checked = spec if template is None else ChildSpec(id=child_id, command=("-",), args=args)  # its args alone
    if problems := spec_problems(checked):
        usage_exit(f"start-child: {'; '.join(problems)}")
    if template is not None:
        outcome_exit("start-child", ask(node_name, "start-child",
                                          lambda c: c.start_from_template(sup, template, child_id, args)),
                     as_json, id=child_id)
    outcome_exit("start-child", ask(node_name, "start-child", lambda c: c.start_child(sup, spec)), as_json, id=child_id)


@click.command("terminate-child")
@child_id_argument()
@SUP_OPTION
@node_options
@JSON_OPTION
def terminate_child(child_id: str, sup: str | None, node_name: str | None, as_json: bool) -> None:
    """Stop child ID (its spec is kept unless temporary; no restart)."""
    outcome_exit("terminate-child", ask(node_name, "terminate-child", lambda c: c.terminate_child(child_id, sup)),
                 as_json, id=child_id)


@click.command("restart-child")
@child_id_argument()
@SUP_OPTION
@node_options
@JSON_OPTION
def restart_child(child_id: str, sup: str | None, node_name: str | None, as_json: bool) -> None:
    """Start child ID again after terminate-child."""
    outcome_exit("restart-child", ask(node_name, "restart-child", lambda c: c.restart_child(child_id, sup)),
                 as_json, id=child_id)


@click.command("delete-child")
@child_id_argument()
@SUP_OPTION
@node_options
@JSON_OPTION
def delete_child(child_id: str, sup: str | None, node_name: str | None, as_json: bool) -> None:
    """Forget the spec of stopped child ID."""
    outcome_exit("delete-child", ask(node_name, "delete-child", lambda c: c.delete_child(child_id, sup)),
                 as_json, id=child_id)


@click.command()
@child_id_argument()
@SUP_OPTION
@node_options
@JSON_OPTION
def restart(child_id: str, sup: str | None, node_name: str | None, as_json: bool) -> None:
    """Stop child ID and start it again (a stopped child is started), in one command.

    The same as terminate-child then restart-child, for a worker or a supervisor: no restart
    is counted toward the intensity, and it ends an override. Refused, untouched: a plain child
    of a dynamic supervisor (terminate-child would remove it with its spec), a supervisor above
    children started at run time (they would be lost), and the root (`otpy stop`, `otpy start`).
    """
    outcome_exit("restart", ask(node_name, "restart", lambda c: restart_outcome(c, child_id, sup)),
                 as_json, id=child_id)


def restart_outcome(client: Client, child_id: str, sup: str | None) -> Outcome:
    """``restart``'s steps. ``restart_child`` asked first changes nothing for a running child
    (``running``) and starts a stopped one (``ok``: done); a dynamic supervisor's plain child
    answers ``not_supported``, before anything is stopped."""
    first = client.restart_child(child_id, sup)
    if first.outcome == "not_supported":
        return Outcome("not_supported", detail=(
            f"{child_id!r} is a child of a dynamic supervisor: terminate-child would remove it with its spec, so "
            f"it is not restarted (it keeps running); stop it with terminate-child and start it again with start-child"))
    if first.outcome == "not_found" and sup is None and client.status().tree.id == child_id:
        return Outcome("not_supported", detail=(
            f"{child_id!r} is the root supervisor: it cannot be restarted (the node runs it); to start the whole "
            "tree again, `otpy stop` then `otpy start TOPOLOGY`"))
    if first.outcome not in ("running", "restarting"):
        return first  # ok (it was stopped: now started), not_found, invalid (disabled), start_failed
    entry = _find(client.status().tree, child_id)
    if entry is not None and entry.restart == "temporary":
        return Outcome("not_supported", detail=(
            f"{child_id!r} is temporary: terminate-child would remove it with its spec (as OTP's does), so it is "
            "not restarted (it keeps running); stop it with terminate-child and start it again with start-child"))
    if entry is not None and (lost := run_time_children(client, entry)):
        return _would_lose(child_id, lost)
    stopped = client.terminate_child(child_id, sup)
    if not stopped.ok:
        return stopped
    started = client.restart_child(child_id, sup)
    if started.outcome == "not_found":
        return Outcome("not_found", detail=(
            f"{child_id!r} was stopped and its spec is gone (a temporary child: terminate-child removes it, as "
            "OTP's does); start it again with start-child"))
    return started


def _would_lose(child_id: str, lost: list[str]) -> Outcome:
    one = len(lost) == 1
    shown = ", ".join(lost[:5]) + (", ..." if len(lost) > 5 else "")
    return Outcome("not_supported", detail=(
        f"{child_id!r} is not restarted (it keeps running): {len(lost)} child{'' if one else 'ren'} started at run "
        f"time ({shown}) would be lost with it, as a dynamic supervisor comes back with its templates' replicas "
        f"only; if {'it' if one else 'they'} may go, stop {'it' if one else 'them'} first (`otpy terminate-child "
        f"{lost[0] if one else 'ID'}`), then restart {child_id!r}; or restart its other children one at a time"))


def _find(entry: TreeEntry, child_id: str) -> TreeEntry | None:
    """The entry of ``child_id`` in the status tree ``entry`` (itself included), None if it is not there."""
    if entry.id == child_id:
        return entry
    for child in entry.children or ():
        if (found := _find(child, child_id)) is not None:
            return found
    return None


def run_time_children(client: Client, entry: TreeEntry) -> list[str]:
    """The ids of the children under ``entry`` (itself included) that dynamic supervisors hold
    from start-child: a restart of ``entry`` ends them and nothing brings them back, unlike a
    template's replicas. The node tells which is which: its ``restart_child`` is
    ``not_supported`` for a run-time child and a no-op for a replica that is not stopped (a
    stopped child of a dynamic supervisor is a replica: the others are removed when they end)."""
    lost = []
    for child in entry.children or ():
        if (entry.kind == "dynamic_supervisor" and child.state != "stopped"
                and client.restart_child(child.id, entry.id).outcome == "not_supported"):
            lost.append(child.id)
        else:
            lost += run_time_children(client, child)
    return lost


@click.command("signal")
@click.argument("signal_number", metavar="SIG", type=SignalParam())
@child_id_argument()
@SUP_OPTION
@node_options
@JSON_OPTION
def signal_(signal_number: int, child_id: str, sup: str | None, node_name: str | None, as_json: bool) -> None:
    """Send signal SIG (TERM, SIGHUP, usr1, 9, ...) to the process of running worker ID.

    Like kill: its supervisor then sees whatever the signal does (an exit is restarted as its
    restart type says). A stopped child is `not_running`; a supervisor is `invalid` (exit 1).
    """
    outcome_exit("signal", ask(node_name, "signal", lambda c: signal_outcome(c, child_id, signal_number, sup)),
                 as_json, id=child_id, signal=signal_number)


def signal_outcome(client: Client, child_id: str, signal_number: int, sup: str | None) -> Outcome:
    """``signal``'s request; the root supervisor, which the node does not count among its
    children (``not_found``), is refused as every supervisor is (``invalid``)."""
    outcome = client.signal_child(child_id, signal_number, sup)
    if outcome.outcome == "not_found" and sup is None and client.status().tree.id == child_id:
        return Outcome("invalid", detail=(
            f"{child_id!r} is the root supervisor: a supervisor is not signalled; signal its workers "
            "(`otpy status` lists them), or stop the node with `otpy stop`"))
    return outcome
