"""``otpy reload``: make a running node match its edited topology file (``supervisorctl update``).

    otpy reload [FILE] [--node NAME] [--code] [--dry-run] [--json]

FILE is checked here first (an invalid file exits 2 before the node is asked); the node reads
it again itself (its absolute path is sent) and applies the difference (``node/reload.py``).
Without FILE the node reads the file it was started from. Without ``--node``, the node FILE
names (else the only one running). ``--code`` also replaces every program child, one at a
time, make-before-break, so each runs its source as it is on disk now.

Exit codes: 0 done (or nothing to do), 1 a start failed (what was done is printed), 2 an
invalid file, a change a running node cannot take, or a usage error.
"""

from __future__ import annotations

import json
import os
import sys

import click
import msgspec

from .exits import EXIT_FAILED, EXIT_USAGE, Remote, ask, load_or_exit, node_or_exit, usage_exit
from .options import JSON_OPTION, node_options
from .vars import change_line
from ..wire.protocol import Change, Outcome

RELOAD_TIMEOUT = 600.0  # seconds: every replacement starts and becomes ready before the reply


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@node_options
@click.option("--code", is_flag=True, help="Also replace every program child (one at a time, make-before-break) "
                                            "so each runs its source as it is on disk now.")
@click.option("--dry-run", is_flag=True, help="Print what the reload would do; change nothing.")
@JSON_OPTION
def reload(file: str | None, node_name: str | Remote | None, code: bool, dry_run: bool, as_json: bool) -> None:
    """Apply the edited topology FILE (default: the node's own file) to the running node:
    added children are started, removed ones stopped, changed ones replaced make-before-break,
    supervisors' settings updated in place; unchanged children keep their processes. Over
    --endpoint, without FILE only: the node reads its own file, on its own host."""
    if isinstance(node_name, Remote) and file is not None:
        usage_exit("otpy: reload FILE does not take --endpoint: the node reads FILE on its own host; give no "
                   "FILE (the node reloads the file it was started from), or run it there")
    path = ""
    if file is not None:
        topology = load_or_exit(file)  # exit 2, naming the problems, before the node is asked
        node_name = node_name or topology.node.name
        path = os.path.abspath(file)
    node = node_or_exit(node_name)
    outcome: Outcome = ask(node, "otpy: reload", lambda client: client.reload(path, code=code, dry_run=dry_run),
                           timeout=RELOAD_TIMEOUT)
    if as_json:
        click.echo(json.dumps(msgspec.to_builtins(outcome)))
    else:
        for change in outcome.changes:
            click.echo(reload_line(change))
        if outcome.ok:
            count = len(outcome.changes)
            click.echo(("no changes" if not count else f"{count} change{'s' if count > 1 else ''}")
                       + (" (dry run: nothing changed)" if dry_run else ""))
    if outcome.ok:
        sys.exit(0)
    click.echo(f"otpy: reload: {outcome.detail or outcome.outcome} ({outcome.outcome})", err=True)  # --json too
    sys.exit(EXIT_USAGE if outcome.outcome == "invalid" else EXIT_FAILED)


def reload_line(change: Change) -> str:
    """One change as ``otpy reload`` prints it: ``otpy vars set``'s lines (``start team/b
    m:B (pid 12)``), and ``update team: max_restarts 3 -> 5`` for a supervisor's settings."""
    if change.action != "update":
        return change_line(change)
    if change.name == "[cluster]":  # node.reload.cluster_change
        return f"update [cluster]: {cluster_line(change.before, change.after)}"
    settings = ", ".join(f"{name} {_setting(change.before.get(name))} -> {_setting(value)}"
                         for name, value in (change.after or {}).items())
    where = f"{change.supervisor}/{change.child}" if change.child else change.supervisor
    return f"update {where}: {settings}"


def cluster_line(before: dict | None, after: dict | None) -> str:
    """``b tcp://h:1 -> tcp://h:2, c added (tcp://h:3), d removed``; ``none -> ...`` when added."""
    if before is None or after is None:
        def show(cluster):
            nodes = ", ".join(f"{n} {e['endpoint']}" for n, e in cluster["nodes"].items()) or "no nodes"
            return f"{nodes} (from {cluster['source']})"
        return f"{show(before) if before is not None else 'none'} -> {show(after) if after is not None else 'none'}"
    parts = [f"from {before['source']} -> {after['source']}"] if before["source"] != after["source"] else []
    before, after = before["nodes"], after["nodes"]
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if old is None:
            parts.append(f"{name} added ({new['endpoint']})")
        elif new is None:
            parts.append(f"{name} removed")
        else:
            parts += [f"{name} {field} {old[field]} -> {new[field]}" for field in ("endpoint", "keys")
                      if old[field] != new[field]]
    return ", ".join(parts)


def _setting(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
