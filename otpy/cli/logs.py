"""``otpy logs``: the last lines of one child's log, or the node's, and follow them (``tail -F``).

The files are found from the node's name alone (``host.log_files.known_log_dir``), so a stopped
node's logs are read too. ``-f`` follows the file across rotations (the rest of the renamed file,
then the new one from its start) and ends, after the last lines, when the node ends.

Exit codes as everywhere: 0 success, 1 the operation failed, 2 usage or input error (an unknown
child, no node to read).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

import click

from .exits import EXIT_USAGE, fail
from .options import NODE_OPTION, checked_name, complete_child_ids
from ..host.log_files import CHILDREN, NODE_LOG, child_log_path, known_log_dir, nodes_with_logs

FOLLOW_PERIOD = 0.2  # seconds between two looks at a followed file (and at the node's lock)
BLOCK = 64 * 1024


@click.command()
@click.argument("child_id", metavar="[ID]", required=False, shell_complete=complete_child_ids)
@click.option("-n", "--lines", "count", default=10, show_default=True, type=click.IntRange(min=0),
              help="How many of the last lines to print.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the node ends (Ctrl-C stops).")
@NODE_OPTION
def logs(child_id: str | None, count: int, follow: bool, node_name: str | None) -> None:
    """Print the last lines of child ID's log, or of the node's own log without ID.

    Each line: its local time, then `out|` or `err|` (what the child wrote on stdout or
    stderr) or `otpy|` (its starts and exits). The node's log has a separator line at each
    start. The files are in $XDG_STATE_HOME/otpy/NODE/logs/ (or the topology's [logs]
    folder), rotated by size; a stopped node's logs are read too.
    """
    child_id = checked_name(child_id, "id")  # before any path is built from it
    name = _node(node_name)
    folder = known_log_dir(name)
    path = folder / NODE_LOG if child_id is None else _child_log(name, folder, child_id)
    out = sys.stdout.buffer
    try:
        for line in last_lines(path, count):
            out.write(line)
        out.flush()
        if follow:
            _follow(name, path, out)
    except BrokenPipeError:  # `otpy logs ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


def _node(name: str | None) -> str:
    """The named node; else the one that runs; else the one with logs; else a usage error."""
    from ..host.runtime_dir import running_nodes
    from ..wire.client import node_alive

    if name is not None:
        return name
    live = [node for node in running_nodes() if node_alive(node)]
    if len(live) == 1:
        return live[0]
    if live:
        fail(f"otpy logs: several nodes are running ({', '.join(live)}): name one with --node", EXIT_USAGE)
    known = nodes_with_logs()
    if len(known) == 1:
        return known[0]
    if not known:
        fail("otpy logs: no node has logs here yet; start one (`otpy start FILE`) or name it with --node", EXIT_USAGE)
    fail(f"otpy logs: no node runs, and several have logs ({', '.join(known)}): name one with --node", EXIT_USAGE)


def _child_log(name: str, folder: Path, child_id: str) -> Path:
    """Child ``child_id``'s log; a usage error (exit 2) for an id with no log that is not in the
    running node's tree, naming the ids that have logs."""
    path = child_log_path(folder, child_id)
    if path.exists() or child_id in _running_ids(name):
        return path
    try:
        known = sorted(p.name.removesuffix(".log") for p in (folder / CHILDREN).glob("*.log"))
    except OSError:
        known = []
    listed = f"; children with logs: {', '.join(known)}" if known else ""
    fail(f"otpy logs: node {name!r} has no child {child_id!r} and no log of it in {folder / CHILDREN}{listed}",
         EXIT_USAGE)


def _running_ids(name: str) -> set[str]:
    """The ids of node ``name``'s tree, if it runs and answers; else none."""
    from ..wire.client import Client, node_alive

    if not node_alive(name):
        return set()
    try:
        with Client(name, timeout=2.0) as client:
            tree = client.status().tree
    except Exception:  # a node that does not answer: the file decides
        return set()
    ids, stack = set(), list(tree.children or ())
    while stack:
        entry = stack.pop()
        ids.add(entry.id)
        stack.extend(entry.children or ())
    return ids


def last_lines(path: Path, count: int) -> list[bytes]:
    """The last ``count`` lines of ``path``, continued into its backups (``.1``, ``.2``, ...) when
    the current file has fewer; read from the end, a block at a time (a 50 MB file costs a few reads)."""
    lines: deque[bytes] = deque()
    backup = 0
    while len(lines) < count:
        file = path if backup == 0 else path.with_name(f"{path.name}.{backup}")
        try:
            found = _tail_of(file, count - len(lines))
        except FileNotFoundError:
            break
        lines.extendleft(reversed(found))
        backup += 1
    return list(lines)


def _tail_of(path: Path, count: int) -> list[bytes]:
    with open(path, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= count:
            step = min(BLOCK, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
    lines = data.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
    return lines[-count:] if count else []


def _follow(name: str, path: Path, out: BinaryIO) -> None:
    """Print what is appended to ``path`` until the node ends (or Ctrl-C). A rotation (``path`` is a
    new file) is followed: the rest of the old file first, then the new one from its start."""
    from ..wire.client import node_alive

    if not node_alive(name):
        click.echo(f"otpy logs: node {name!r} is not running: nothing more to follow", err=True)
        return
    file = _open_at_end(path)
    try:
        while True:
            alive = node_alive(name)  # asked before reading: lines written before it ended are printed
            if file is None:  # not made yet, or rotated away: read the new one from its start
                file = _open(path)
            _copy(file, out)
            if file is not None and _replaced(path, file):
                _copy(file, out)
                file.close()
                file = _open(path)
                continue
            if not alive:
                click.echo(f"otpy logs: node {name!r} ended", err=True)
                return
            time.sleep(FOLLOW_PERIOD)
    except KeyboardInterrupt:
        pass
    finally:
        if file is not None:
            file.close()


def _open(path: Path) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def _open_at_end(path: Path) -> BinaryIO | None:
    file = _open(path)
    if file is not None:
        file.seek(0, os.SEEK_END)
    return file


def _copy(file: BinaryIO | None, out: BinaryIO) -> None:
    if file is None:
        return
    while chunk := file.read(BLOCK):
        out.write(chunk)
    out.flush()


def _replaced(path: Path, file: BinaryIO) -> bool:
    """``path`` is no longer the file open as ``file`` (rotated: renamed and made again), or it
    was truncated."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False  # renamed, not made again yet: look next time
    opened = os.fstat(file.fileno())
    return (now.st_ino, now.st_dev) != (opened.st_ino, opened.st_dev) or now.st_size < file.tell()
