"""The scratch node trials run on: started from the topology, its children's output kept short.

``otpy optimize`` starts ``<node>-optimize`` from the same topology, so the running node is
untouched while a search runs. Its children's output is not printed (each trial's restarts
would flood the terminal) but the last few lines of each child are kept in a ring buffer: when
the scratch node cannot start, the error is one line naming the child, its last lines, and
what to run to see it start, instead of a traceback through the node's internals.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import sys
import threading

from ..specs.model import NodeSpec
from .optimizer import OptimizeError

LAST_LINES = 3  # lines of a child's output quoted in a start failure
LINE_WIDTH = 200  # characters of one quoted line


class ChildOutput:
    """The last ``size`` lines each child wrote (``on_output(child_id, stream, line)``)."""

    def __init__(self, size: int = LAST_LINES) -> None:
        self.size = size
        self.lines: dict[str, collections.deque[str]] = {}
        self.latest: str | None = None  # the child that wrote last
        self._lock = threading.Lock()  # lines come from the node's loop thread

    def __call__(self, child_id: str, stream: str, line: str) -> None:
        with self._lock:
            self.lines.setdefault(child_id, collections.deque(maxlen=self.size)).append(line.rstrip())
            self.latest = child_id

    def last(self, child_id: str) -> list[str]:
        with self._lock:
            return list(self.lines.get(child_id, ()))

    def named_in(self, message: str) -> str | None:
        """The child whose id the message quotes (``'manager'``), else the one that wrote last."""
        with self._lock:
            named = [child for child in self.lines if repr(child) in message]
            return max(named, key=len) if named else self.latest


def start_failure(scratch: str, topology_path: str | None, reason: str, output: ChildOutput) -> str:
    """One line: why the scratch node did not start, the failing child's last output, a hint."""
    line = f"the scratch node {scratch!r} did not start: {reason.strip().splitlines()[0] if reason.strip() else reason}"
    child = output.named_in(reason)
    last = output.last(child) if child else []
    if last:
        quoted = " | ".join(_clip(text) for text in last if text.strip())
        line += f"; last output of {child!r}: {quoted}"
    start = f"`otpy start {topology_path}`" if topology_path else "`otpy start FILE`"
    return line + f"; run {start} to watch it start with its output"


class ScratchNameTaken(OptimizeError):
    """The scratch node's name is a running node's (a worker then tries the next slot)."""


def name_taken(scratch: str, reason: str) -> str:
    """One line: the scratch node's name is a running node's (another ``otpy optimize`` of the
    same node, or a node started by that name), and how to free it."""
    return (f"the scratch node's name {scratch!r} is taken by a running node ({reason}); wait for the other "
            f"`otpy optimize` of this node to end, or stop that node with `otpy stop --node {scratch}`, "
            "then run this again")


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= LINE_WIDTH else text[:LINE_WIDTH - 3] + "..."


def scratch_spec(topology, name: str | None = None) -> NodeSpec:
    """The scratch node's spec: the topology's tree under the name ``<node>-optimize`` (or
    ``name``: a trial worker's own, ``<node>-optimize-<pid>``, see ``workers``)."""
    node = topology.node
    return NodeSpec(name=name or f"{node.name}-optimize", root=node.root, program_folders=node.program_folders)


@contextlib.contextmanager
def scratch_node(topology, topology_path: str | None = None, name: str | None = None):
    """The scratch node of ``topology``, running for the block; ``OptimizeError`` (one line, see
    ``start_failure``) when it cannot start. ``name``: another name than ``<node>-optimize``."""
    from ..node.errors import NodeAlreadyRunning, NodeStartError
    from ..node.node import Node

    spec = scratch_spec(topology, name)
    output = ChildOutput()
    node = Node(spec, on_output=output)
    with deferred_interrupt() as interrupted:  # a start cut short would leave its children behind
        try:
            node.start()
        except NodeAlreadyRunning as exc:  # not a start that failed: watching one would not help
            raise ScratchNameTaken(name_taken(spec.name, str(exc))) from None
        except NodeStartError as exc:
            raise OptimizeError(start_failure(spec.name, topology_path, str(exc), output)) from None
    try:
        if interrupted:
            raise KeyboardInterrupt
        yield node
    finally:
        with deferred_interrupt() as late:
            node.stop()
        if late and sys.exc_info()[0] is None:
            raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_interrupt():
    """Ctrl-C (SIGINT) waits until the block is done, then raises ``KeyboardInterrupt``; the
    list yielded says whether one came. Only in the main thread (the only one signals reach)."""
    interrupted: list[int] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield interrupted
        return
    signal.signal(signal.SIGINT, lambda number, frame: interrupted.append(number))
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
