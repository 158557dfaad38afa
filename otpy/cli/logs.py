"""``otpy logs``: the last lines of one child's log, or the node's, and follow them (``tail -F``).

The files are found from the node's name alone (``host.log_files.known_log_dir``), so a stopped
node's logs are read too. ``-f`` follows the file by inode across rotations (``Follower``: the
rest of the renamed file, the backups rotated after it, then the new one from its start) and
ends, after the last lines, when the node ends.

Exit codes as everywhere: 0 success, 1 the operation failed, 2 usage or input error (an unknown
child, no node to read).
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

import click

from .exits import EXIT_FAILED, EXIT_USAGE, Target, fail, local_only
from .options import checked_name, complete_child_ids, node_options
from ..host.log_files import CHILDREN, NODE_LOG, child_log_path, known_log_dir, nodes_with_logs

FOLLOW_PERIOD = 0.2  # seconds between two looks at a followed file (and at the node's lock)
BLOCK = 64 * 1024


@click.command()
@click.argument("child_id", metavar="[ID]", required=False, shell_complete=complete_child_ids)
@click.option("-n", "--lines", "count", default=10, show_default=True, type=click.IntRange(min=0),
              help="How many of the last lines to print.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the node ends (Ctrl-C stops).")
@node_options
def logs(child_id: str | None, count: int, follow: bool, node_name: Target) -> None:
    """Print the last lines of child ID's log, or of the node's own log without ID.

    Each line: its local time, then `out|` or `err|` (what the child wrote on stdout or
    stderr) or `otpy|` (its starts and exits). The node's log has a separator line at each
    start. The files are in $XDG_STATE_HOME/otpy/NODE/logs/ (or the topology's [logs]
    folder), rotated by size; a stopped node's logs are read too. Not over --endpoint: run
    it on the node's host.
    """
    node_name = local_only(node_name, "logs", "the logs are files on the node's host (`otpy events --endpoint` "
                                              "follows its events from here)")
    child_id = checked_name(child_id, "id")  # before any path is built from it
    name = _node(node_name)
    folder = known_log_dir(name)
    if node_name is not None:
        _known_or_exit(name, folder)
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
    except SymlinkRefused as exc:
        fail(str(exc), EXIT_FAILED)


def _known_or_exit(name: str, folder: Path) -> None:
    """A node named with --node that neither runs nor ever wrote logs here is a typo: exit 2."""
    from ..wire.client import node_alive

    if folder.exists() or node_alive(name):
        return
    known = nodes_with_logs()
    listed = f"; nodes with logs: {', '.join(known)}" if known else "; no node has logs here yet"
    fail(f"otpy logs: no node {name!r}: it is not running and has no log folder ({folder}){listed}", EXIT_USAGE)


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
    """Child ``child_id``'s log; a usage error (exit 2) for a supervisor (the root included: it
    has no file, its events are in the node's log) and for an id with no log that is not in the
    running node's tree, naming the ids that have logs."""
    path = child_log_path(folder, child_id)
    if path.exists():
        return path
    kinds = _running_kinds(name)
    if kinds.get(child_id, "worker") != "worker":
        fail(f"otpy logs: {child_id!r} is a supervisor: supervisors have no log of their own; their events (their "
             f"children's starts, exits and restarts) are in the node's log: `otpy logs --node {name}`", EXIT_USAGE)
    if child_id in kinds:
        return path
    try:
        known = sorted(p.name.removesuffix(".log") for p in (folder / CHILDREN).glob("*.log"))
    except OSError:
        known = []
    listed = f"; children with logs: {', '.join(known)}" if known else ""
    fail(f"otpy logs: node {name!r} has no child {child_id!r} and no log of it in {folder / CHILDREN}{listed}",
         EXIT_USAGE)


def _running_kinds(name: str) -> dict[str, str]:
    """The kind of every id in node ``name``'s tree, the root's included, if it runs and answers;
    else none."""
    from ..wire.client import Client, node_alive

    if not node_alive(name):
        return {}
    try:
        with Client(name, timeout=2.0) as client:
            tree = client.status().tree
    except Exception:  # a node that does not answer: the file decides
        return {}
    kinds, stack = {}, [tree]
    while stack:
        entry = stack.pop()
        kinds[entry.id] = entry.kind
        stack.extend(entry.children or ())
    return kinds


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
    """The last ``count`` lines of ``path``: only ``\\n`` ends a line (a progress bar's ``\\r`` does not)."""
    file = _open(path)
    if file is None:
        raise FileNotFoundError(path)
    with file:
        end = file.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= count:
            step = min(BLOCK, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
    *ended, last = data.split(b"\n")
    lines = [line + b"\n" for line in ended] + ([last + b"\n"] if last else [])
    return lines[-count:] if count else []


def _follow(name: str, path: Path, out: BinaryIO) -> None:
    """Print what is appended to ``path`` until the node ends (or Ctrl-C), across rotations (``Follower``)."""
    from ..wire.client import node_alive

    if not node_alive(name):
        click.echo(f"otpy logs: node {name!r} is not running: nothing more to follow", err=True)
        return
    follower = Follower(path)
    try:
        while True:
            alive = node_alive(name)  # asked before reading: lines written before it ended are printed
            follower.poll(out)
            if not alive:
                click.echo(f"otpy logs: node {name!r} ended", err=True)
                return
            time.sleep(FOLLOW_PERIOD)
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()


class Follower:
    """``path`` followed by inode, as ``tail -F`` and more: when it is rotated (renamed ``.1``, a new
    one made), the rest of the renamed file is read through the descriptor kept open, then the
    backups rotated after it (``.N`` ... ``.1``, found by inode, oldest first), then the new file
    from its start. Lines are lost only when more than ``backups`` rotations happen between two
    looks: that is said on stderr. A file truncated in place (``backups = 0``) is read from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = _open(path)
        if self.file is not None:
            self.file.seek(0, os.SEEK_END)

    def poll(self, out: BinaryIO) -> None:
        """Print every line written since the last look."""
        while True:
            if self.file is None:  # not made yet
                self.file = _open(self.path)
                if self.file is None:
                    return
            _copy(self.file, out)
            current = _open(self.path)
            if current is None:  # renamed, not made again yet: look next time
                return
            if _ident(current) != _ident(self.file):
                _copy(self.file, out)  # the rest of the renamed file
                self._copy_rotated_between(_ident(self.file), os.fstat(self.file.fileno()).st_mtime,
                                           _ident(current), out)
            elif os.fstat(current.fileno()).st_size < self.file.tell():
                pass  # truncated in place: read it again from its start
            else:
                current.close()
                return
            self.file.close()
            self.file = current

    def _copy_rotated_between(self, old: tuple[int, int], old_mtime: float, new: tuple[int, int],
                              out: BinaryIO) -> None:
        """The backups written after the file ``old`` and before ``new`` (both by inode), oldest first."""
        between: list[tuple[int, tuple[int, int]]] = []
        index, found = 1, False
        while True:
            try:
                info = os.stat(self._backup(index))
            except FileNotFoundError:
                break
            ident = (info.st_ino, info.st_dev)
            if ident == old:
                found = True
                break
            if ident == new:  # rotated again since: only the older ones are between
                between = []
            elif info.st_mtime >= old_mtime:
                between.append((index, ident))
            index += 1
        if not found:  # the old file itself was rotated away: so may others, unread
            click.echo(f"otpy logs: {self.path.name} was rotated more than its backups allow between two looks: "
                       "some lines were not shown (they are gone from the disk)", err=True)
        for index, ident in reversed(between):
            backup = self._open_ident(index, ident)
            if backup is not None:
                with backup:
                    _copy(backup, out)

    def _open_ident(self, index: int, ident: tuple[int, int]) -> BinaryIO | None:
        """The backup with inode ``ident``, at ``.index`` or moved up by rotations since."""
        for moved in range(index, index + 8):
            file = _open(self._backup(moved))
            if file is None:
                return None
            if _ident(file) == ident:
                return file
            file.close()
        return None

    def _backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class SymlinkRefused(OSError):
    """A symlink in place of a log file: never followed (as the writer refuses it)."""


def _open(path: Path) -> BinaryIO | None:
    """``path`` for reading, never through a symlink; None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkRefused(f"otpy logs: {path} is a symlink, not a log file: refused (never followed); "
                                 "remove it (the node writes no lines there either)") from None
        raise
    return open(fd, "rb")


def _ident(file: BinaryIO) -> tuple[int, int]:
    info = os.fstat(file.fileno())
    return info.st_ino, info.st_dev


def _copy(file: BinaryIO | None, out: BinaryIO) -> None:
    if file is None:
        return
    while chunk := file.read(BLOCK):
        out.write(chunk)
    out.flush()
