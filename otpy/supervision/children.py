"""The children of one supervisor: OTP's ``#state.children`` and the only ways to change it.

Both machines keep their children in a ``ChildTable`` and touch it only through the operations
below, as ``supervisor.erl`` does in its "Access #state.children" section (``save_child``,
``del_child``, ``set_pid``, ``split_child``, ``children_fold``). The table is ordered: children
in start order (a static supervisor's spec order, then ``start_child`` order), stopped in
reverse order.

A child's state is one of three values: ``running`` (with an incarnation and a pid),
``stopped`` (OTP's ``pid = undefined``: the spec is kept) and ``restarting`` (a failed restart
waiting for its ``Retry`` on the supervisor's inbox, or a delayed restart waiting for its
``RestartDue``: then ``restart_at`` says when, on the machine's clock, and ``group`` what it
starts). Whatever leaves ``running`` loses its incarnation, pid and ``running`` spec at once:
an exit that names them later is stale. Whatever leaves ``restarting`` ends its wait: the
token of a ``Retry`` or ``RestartDue`` still queued no longer matches.

``streak`` counts the restarts of a child in a row (its backoff: the n-th waits
``restart_delay * 2**(n-1)``, see ``base``) and ``since`` is when its current incarnation
started (the machine's clock): an incarnation that stayed up ``restart_delay_max`` seconds
ends the streak.

``spec`` is the DECLARED spec (its fields may be bound to variables); ``running`` is the spec
the current incarnation was launched with, resolved with the variables of that moment: a
reconcile compares the two (``reconcile.decide``). Two flags say why a stopped child is
stopped when its restart type does not: ``disabled`` (its ``enabled`` resolved to false: the
variables switched it off, a reconcile starts it when they switch it on) and ``override``
(an operator's ``terminate_child``: nothing but an operator's start brings it back). Any start
clears both.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

from .effects import Outcome, RestartDue, Retry
from ..specs.model import AnySpec

ChildState = Literal["running", "stopped", "restarting"]


@dataclass(slots=True)
class Child:
    spec: AnySpec
    state: ChildState = "stopped"
    incarnation: int | None = None  # the current start, while running
    pid: int | None = None
    restarts: int = 0
    retry: int | None = None  # the token of the Retry (or RestartDue) now due, while restarting
    restart_at: float | None = None  # while waiting for a delayed restart: when it is due
    group: tuple[str, ...] = ()  # while waiting: the ids its delayed restart starts (its strategy's)
    streak: int = 0  # restarts in a row (the backoff's n); 0 once an incarnation stayed up long enough
    since: float | None = None  # when the current (or last) incarnation started
    running: AnySpec | None = None  # the resolved spec of the current incarnation, while running
    disabled: bool = False  # stopped because its resolved ``enabled`` is false
    override: bool = False  # stopped by an operator's terminate_child

    @property
    def id(self) -> str:
        return self.spec.id


class ChildTable:
    """The children of one supervisor, in start order."""

    def __init__(self, specs: Iterable[AnySpec] = ()) -> None:
        self._children: dict[str, Child] = {}  # insertion order is start order
        self._tokens = itertools.count(1)  # Retry tokens, this supervisor's own
        for spec in specs:
            self.save(spec)

    # --- reading ----------------------------------------------------------------------------

    @property
    def order(self) -> list[str]:
        return list(self._children)

    def get(self, id: str) -> Child | None:
        return self._children.get(id)

    def __getitem__(self, id: str) -> Child:
        return self._children[id]

    def __contains__(self, id: object) -> bool:
        return id in self._children

    def __len__(self) -> int:
        return len(self._children)

    def __iter__(self) -> Iterator[str]:
        """The ids, in start order."""
        return iter(self._children)

    def values(self) -> Iterator[Child]:
        return iter(self._children.values())

    def running_in_reverse(self, ids: Iterable[str] | None = None) -> tuple[str, ...]:
        """The running children among ``ids`` (default: all), last started first."""
        ids = list(self._children) if ids is None else list(ids)
        return tuple(i for i in reversed(ids) if self._children[i].state == "running")

    def split(self, id: str) -> list[str]:
        """``id`` and the children after it (``rest_for_one``'s group; OTP's ``split_child``)."""
        order = list(self._children)
        return order[order.index(id):]

    def significant_left(self) -> bool:
        """Whether a significant child is not stopped (a restarting one counts: its pid is
        OTP's ``{restarting, _}``, not ``undefined``)."""
        return any(c.spec.significant and c.state != "stopped" for c in self._children.values())

    def start_refusal(self, spec: AnySpec) -> Outcome | None:
        """Why ``start_child(spec)`` cannot add ``spec``: its id is in the table already."""
        existing = self._children.get(spec.id)
        if existing is None:
            return None
        if existing.state == "running":
            return Outcome("already_started", pid=existing.pid)
        return Outcome("already_present")

    def is_due(self, id: str, token: int) -> bool:
        """Whether the Retry (or RestartDue) ``token`` of ``id`` is the one its restarts wait for."""
        child = self._children.get(id)
        return child is not None and child.state == "restarting" and child.retry == token

    # --- writing ----------------------------------------------------------------------------

    def save(self, spec: AnySpec) -> Child:
        """Add ``spec`` last, stopped."""
        child = self._children[spec.id] = Child(spec)
        return child

    def delete(self, id: str) -> Child | None:
        return self._children.pop(id, None)

    def set_running(self, id: str, incarnation: int, pid: int | None, running: AnySpec | None = None,
                    spec: AnySpec | None = None) -> None:
        """``id`` runs as ``incarnation``, launched as ``running`` (its resolved spec); ``spec``:
        a new declared spec (a replacement). A start clears ``disabled`` and ``override``."""
        child = self._children[id]
        child.state, child.incarnation, child.pid = "running", incarnation, pid
        child.restart_at, child.group = None, ()
        child.running = running if running is not None else child.spec
        child.disabled = child.override = False
        if spec is not None:
            child.spec = spec

    def set_stopped(self, ids: tuple[str, ...]) -> tuple[str, ...]:
        """Mark ``ids`` stopped (before the shell stops them: their exits are then stale)."""
        for i in ids:
            child = self._children[i]
            child.state, child.incarnation, child.pid, child.running = "stopped", None, None, None
            child.restart_at, child.group = None, ()
        return ids

    def set_restarting(self, id: str) -> Retry:
        """Mark ``id`` restarting and make the one Retry that may restart it."""
        child = self._children[id]
        child.state, child.retry = "restarting", next(self._tokens)
        child.restart_at, child.group = None, ()
        return Retry(id, child.retry)

    def set_waiting(self, id: str, due: float) -> RestartDue:
        """Mark ``id`` restarting, its restart delayed until ``due``, and make the one
        ``RestartDue`` that may restart it."""
        child = self._children[id]
        child.state, child.retry, child.restart_at = "restarting", next(self._tokens), due
        return RestartDue(id, child.retry)

    def restart_dues(self) -> dict[str, float]:
        """When a delayed restart will start each child it will (the others are absent): a
        waiting child's own ``restart_at``; a stopped child in a waiting child's group (a
        one_for_all/rest_for_one bystander), the earliest such group's."""
        dues: dict[str, float] = {}
        for waiting in self._children.values():
            if waiting.restart_at is None:
                continue
            dues[waiting.id] = waiting.restart_at
            for id in waiting.group:
                other = self._children.get(id)
                if other is not None and other.state == "stopped" and other.restart_at is None:
                    dues[id] = min(dues.get(id, waiting.restart_at), waiting.restart_at)
        return dues

    def held_by_wait(self, id: str) -> tuple[str, ...]:
        """The stopped bystanders (one_for_all / rest_for_one) that the delayed restart ``id``
        waits for would start with it: its group but itself, still in the table and stopped
        (not those an operator terminated meanwhile: ``override``)."""
        child = self._children.get(id)
        if child is None or child.restart_at is None:
            return ()
        return tuple(i for i in child.group if i != id and i in self._children
                     and self._children[i].state == "stopped" and self._children[i].restart_at is None
                     and not self._children[i].override)

    def take_exit(self, id: str, incarnation: int) -> Child | None:
        """The child whose current incarnation this exit ends, now stopped; None when the
        incarnation is not current (the exit is stale)."""
        child = self._children.get(id)
        if child is None or child.incarnation != incarnation or child.state != "running":
            return None
        self.set_stopped((id,))
        return child
