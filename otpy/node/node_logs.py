"""A node's log files while it runs: one per child (every line its process writes, stamped and
marked ``out|`` or ``err|``, and otpy's own ``otpy|`` lines at its starts and exits) and
``node.log`` (a separator at each start, then what the ``otpy`` logger says about this node).

Files and rotation: ``host.log_files``. Writing is synchronous on the node's loop, as
supervisord writes its logs: lines are buffered, and each file is flushed (one ``write``) once
the loop is done with the lines and events at hand, with no fsync: a child that floods its
output, or a restart's three ``otpy|`` lines, never wait on the disk's flush.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Callable

from ..host.log_files import (
    CHILDREN, NODE_LOG, LogFolderError, PrivateRotatingFileHandler, child_log_path, line_formatter, lock_log_folder,
    log_dir, make_private_dir, record_log_dir, stamp,
)
from .errors import NodeStartError
from ..processes.manager import print_output
from ..specs.model import NodeSpec
from ..wire.protocol import NodeEvent

log = logging.getLogger("otpy")

OutputHandler = Callable[[str, str, str], None]
CHILD_EVENTS = frozenset({"started", "exited", "stopped", "restarting", "start_failed"})
ENDS = frozenset({"exited", "stopped", "start_failed"})  # after these, a child's file is closed


class NodeRecords(logging.Filter):
    """The ``otpy`` logger's records for node ``name``'s log: those naming it (``otpy[NAME]: ...``)
    and those naming no node (``otpy: ...``); not another node's of the same process."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.mine = f"otpy[{name}]"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return message.startswith(self.mine) or not message.startswith("otpy[")


class NodeLogs:
    """The log files of one node. ``child_line`` is the process manager's ``on_output``: it writes
    the child's file, then passes the line on (``on_output``; default: stderr with the id as prefix).
    ``follow_fds``: set by ``otpy start --detach`` (its stdout and stderr follow ``node.log``)."""

    def __init__(self, spec: NodeSpec, on_output: OutputHandler | None = None,
                 describe: Callable[[NodeEvent], tuple[int, str]] = lambda event: (0, event.kind)) -> None:
        """``describe``: the node's wording of an event (``node.describe_event``), for the ``otpy|`` lines."""
        self.name = spec.name
        self.describe = describe
        self.settings = spec.logs
        self.on_output = on_output or print_output
        self.follow_fds: tuple[int, ...] = ()
        self.folder: Path | None = None
        self.node_handler: PrivateRotatingFileHandler | None = None
        self._children: dict[str, PrivateRotatingFileHandler] = {}
        self._unflushed: set[PrivateRotatingFileHandler] = set()
        self._ended: set[str] = set()  # children whose last event was an end: their files close at the flush
        self._flush_soon = False
        self._folder_lock: int | None = None  # lock_log_folder's: held while the node runs
        self._pid = os.getpid()  # the node's, from open (its supervisors' events carry it)

    def open(self, topology_path: str | None, listeners: list[Callable[[NodeEvent], None]]) -> None:
        """Make the folders, write ``node.log``'s start separator, and hear the node: its events
        (``listeners``) and the ``otpy`` logger. Called once the node holds its lock."""
        self._pid = os.getpid()
        try:
            folder = make_private_dir(log_dir(self.name, self.settings))
            self._folder_lock = lock_log_folder(folder, self.name)  # before any file: not another node's
            make_private_dir(folder / CHILDREN)
            record_log_dir(self.name, folder)
            self.node_handler = PrivateRotatingFileHandler(folder / NODE_LOG, self.settings, self.follow_fds)
            self.node_handler.stream = self.node_handler._open()  # refused here, not at the first line
        except (LogFolderError, OSError) as exc:
            self._release_folder()
            raise NodeStartError(f"cannot write the node's logs: {exc}") from None
        self.folder = folder
        self.node_handler.setFormatter(line_formatter("%(levelname)s %(message)s"))
        self.node_handler.addFilter(NodeRecords(self.name))
        where = f", topology {topology_path}" if topology_path else ""
        self._write(self.node_handler, logging.makeLogRecord({
            "levelname": "INFO", "msg": f"======== node {self.name!r} starts: pid {self._pid}{where} ========"}))
        log.addHandler(self.node_handler)
        listeners.append(self.on_event)

    def child_line(self, child_id: str, stream: str, line: str) -> None:
        """One line child ``child_id`` wrote on ``stream`` ("out" or "err"). The files are flushed
        once the loop is done with the lines of this read (one flush a batch, not a line)."""
        if self.folder is not None:
            handler = self._child_handler(child_id)
            handler.write_line(f"{stamp()} {stream}| {line}\n", flush=False)
            self._unflushed.add(handler)
            self._flush_later()
        self.on_output(child_id, stream, line)

    def _flush_later(self) -> None:
        """Flush (and close the ended children's files) once the loop is done with what it
        handles now: one write a file, not one a line."""
        if not self._flush_soon:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
                self._flush_soon = True
            except RuntimeError:  # no loop here: now
                self._flush()

    def _flush(self) -> None:
        self._flush_soon = False
        unflushed, self._unflushed = self._unflushed, set()
        for handler in unflushed:
            handler.flush()
        ended, self._ended = self._ended, set()
        for child_id in ended:
            if (handler := self._children.pop(child_id, None)) is not None:
                handler.release_file()

    def on_event(self, event: NodeEvent) -> None:
        """A worker's start and end, in its own log too (``otpy| started pid 123``): a restart is
        visible where its output is. An exited child's file is closed until its next line, at
        the flush after the events handled now: a restart's ``restarting`` right after its
        ``exited`` writes to the file still open (no close and open again a restart)."""
        if event.kind not in CHILD_EVENTS or not event.child or self.folder is None or event.pid == self._pid:
            return  # a supervisor (it runs in the node: its pid is the node's) has no output of its own
        _, text = self.describe(event)
        handler = self._child_handler(event.child)
        handler.write_line(f"{stamp(event.time or None)} otpy| {text}\n", flush=False)
        self._unflushed.add(handler)
        if event.kind in ENDS:
            self._ended.add(event.child)
        else:
            self._ended.discard(event.child)
        self._flush_later()

    def close(self) -> None:
        """After the tree and the process manager stopped (its last lines drained)."""
        if self.node_handler is not None:
            log.removeHandler(self.node_handler)
            self.node_handler.close()
            self.node_handler = None
        self._flush()
        for handler in self._children.values():
            handler.close()
        self._children.clear()
        self.folder = None
        self._release_folder()

    def _release_folder(self) -> None:
        if self._folder_lock is not None:
            os.close(self._folder_lock)
            self._folder_lock = None

    def _child_handler(self, child_id: str) -> PrivateRotatingFileHandler:
        handler = self._children.get(child_id)
        if handler is None:
            handler = PrivateRotatingFileHandler(child_log_path(self.folder, child_id), self.settings)
            self._children[child_id] = handler
        return handler

    @staticmethod
    def _write(handler: logging.Handler, record: logging.LogRecord) -> None:
        handler.handle(record)
