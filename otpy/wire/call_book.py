"""The rules of agent calls, once: what each reply, drain notice, connection change and deadline
does to the calls in flight. No sockets, no threads, no clock (``now`` is passed in).

A ``CallBook`` belongs to whichever thread does the socket I/O (the caller's I/O thread for
``submit``/``acall``, the calling thread itself for ``call``); ``calls.CallEngine`` reads the
sockets, asks the book, and carries out what it answers:

- ``Answered(pending, outputs)`` / ``Fail(pending, error)``: the call is over.
- ``Resend(pending)``: the agent refused it while draining, so it did not run: send it again,
  same id and deadline, once the name has a next holder (until then it is parked).
- ``Reattempt(pending)``: a retryable error with attempts left: the book has given the call a new
  id, payload and deadline; send it on the agent's current connection.
- ``Renew(link)``: a drain notice: new calls to this agent wait for the name's next holder.

At most once: a call is sent again only when the agent said it did not run it (``draining``)
or when the caller asked for ``retries``. A call sent while the agent is down waits on its
link (``queued``) and counts as in flight once the link connects; a disconnect fails the calls
in flight with ``AgentCrashed`` and leaves the queued ones waiting for the next holder.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from .call_messages import encode_call, error_of
from .errors import AgentCrashed, CallError, CallTimeout
from .protocol import DRAIN_NOTICE, CallFailed, Reply


@dataclass(slots=True, eq=False)
class LinkState:
    """One connection to an agent and the calls on it: sent while connected (in flight) or
    while it was down (queued)."""

    agent: str
    connected: bool = False
    draining: bool = False  # the agent sent its drain notice: new calls go on a new link
    in_flight: set[int] = field(default_factory=set)
    queued: set[int] = field(default_factory=set)

    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.queued


class BlockingResult:
    """A blocking ``call``'s result, set by the engine: ``concurrent.futures.Future``'s
    ``done``/``set_result``/``set_exception`` without its lock (one thread sets and reads it)."""

    __slots__ = ("outputs", "error", "finished")

    def __init__(self) -> None:
        self.outputs: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, outputs: dict[str, Any]) -> None:
        self.outputs, self.finished = outputs, True

    def set_exception(self, error: BaseException) -> None:
        self.error, self.finished = error, True

    def result(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return self.outputs  # type: ignore[return-value]


@dataclass(slots=True, eq=False)
class Pending:
    """One call until its end: its attempts, the current one's id, payload, deadline and link.
    ``future`` is a ``concurrent.futures.Future`` (``submit``) or a ``BlockingResult`` (``call``)."""

    agent: str
    inputs: dict[str, Any]
    timeout: float
    attempts_left: int
    future: Any
    payload: bytes = b""
    call_id: int = 0
    deadline: float = 0.0
    link: LinkState | None = None


class Answered(NamedTuple):
    pending: Pending
    outputs: dict[str, Any]


class Fail(NamedTuple):
    pending: Pending
    error: CallError


class Resend(NamedTuple):
    pending: Pending


class Reattempt(NamedTuple):
    pending: Pending


class Renew(NamedTuple):
    link: LinkState


Decision = Answered | Fail | Resend | Reattempt | Renew


class CallBook:
    """The calls of one I/O thread: by id, with their deadlines (earliest first)."""

    def __init__(self, new_id: Callable[[], int]) -> None:
        self.new_id = new_id  # shared by a caller's books: an id is never reused
        self.pending: dict[int, Pending] = {}
        self.deadlines: list[tuple[float, int]] = []

    # --- a call goes out -------------------------------------------------------------------

    def start(self, pending: Pending, now: float) -> None:
        """A new attempt begins: its deadline is ``timeout`` from ``now``."""
        pending.deadline = now + pending.timeout

    def sent(self, pending: Pending, link: LinkState) -> None:
        """``pending`` went out on ``link``; awaited until the attempt's deadline (set by ``start``;
        a resend keeps it)."""
        pending.link = link
        self.pending[pending.call_id] = pending
        heapq.heappush(self.deadlines, (pending.deadline, pending.call_id))
        (link.in_flight if link.connected else link.queued).add(pending.call_id)

    def park(self, pending: Pending) -> None:
        """``pending`` waits, unsent, for the name's next holder (its holder drains); awaited until
        its deadline like a call on a link."""
        pending.link = None
        self.pending[pending.call_id] = pending
        heapq.heappush(self.deadlines, (pending.deadline, pending.call_id))

    # --- what comes back -------------------------------------------------------------------

    def on_reply(self, link: LinkState, message: Reply | CallFailed) -> Decision | None:
        """An agent's message on ``link``; None: nothing to do (a late reply: its call ended)."""
        if message.call_id == DRAIN_NOTICE:  # new calls go on a new link; calls on this one are answered
            link.draining = True
            return Renew(link)
        pending = self.forget(message.call_id)
        if pending is None:
            return None
        match message:
            case Reply(outputs=outputs):
                return Answered(pending, outputs)
            case CallFailed(kind="draining"):  # not run: again, on a new connection, same attempt
                link.draining = True
                return Resend(pending)
            case CallFailed() as failed:
                return self.fail_or_retry(pending, error_of(failed, link.agent))

    def on_connected(self, link: LinkState) -> None:
        link.connected = True
        link.in_flight |= link.queued
        link.queued.clear()

    def on_disconnected(self, link: LinkState) -> list[Decision]:
        """The connection broke: the calls on the wire may have run: ``AgentCrashed``. Queued calls
        stay for the name's next holder. (Read the replies that beat the disconnect first.)"""
        link.connected = False
        crashed, link.in_flight = link.in_flight, set()
        decisions = []
        for call_id in crashed:
            pending = self.pending.pop(call_id, None)
            if pending is not None:
                error = AgentCrashed(f"agent {link.agent!r} went down during the call", agent=link.agent)
                decisions.append(self.fail_or_retry(pending, error))
        return decisions

    # --- endings ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.deadlines[0][0] if self.deadlines else None

    def expire(self, now: float) -> list[Decision]:
        """The calls whose attempt's deadline has passed: ``CallTimeout`` (a late reply is dropped)."""
        decisions = []
        while self.deadlines and self.deadlines[0][0] <= now:
            _, call_id = heapq.heappop(self.deadlines)
            pending = self.forget(call_id)
            if pending is not None:
                error = CallTimeout(f"no reply from {pending.agent!r} within {pending.timeout} s",
                                    agent=pending.agent)
                decisions.append(self.fail_or_retry(pending, error))
        return decisions

    def fail_or_retry(self, pending: Pending, error: CallError) -> Fail | Reattempt:
        """A retryable error with attempts left: a new attempt (new id and payload; its deadline
        is set when it is sent again); otherwise the call fails."""
        if not error.retryable or pending.attempts_left <= 0 or pending.future.done():
            return Fail(pending, error)
        pending.attempts_left -= 1
        pending.call_id = self.new_id()
        pending.payload = encode_call(pending.call_id, pending.inputs)
        return Reattempt(pending)

    def forget(self, call_id: int) -> Pending | None:
        """The call ``call_id`` is no longer awaited (answered, timed out): off its link too."""
        pending = self.pending.pop(call_id, None)
        if pending is not None and (link := pending.link) is not None:
            link.in_flight.discard(call_id)
            link.queued.discard(call_id)
        if not self.pending:
            self.deadlines.clear()  # all stale: the heap stays as small as the calls in flight
        return pending

    def close(self, error_for: Callable[[Pending], CallError]) -> list[Fail]:
        """Every call still awaited fails (the caller is closing)."""
        failed = [Fail(pending, error_for(pending)) for pending in self.pending.values()]
        self.pending.clear()
        self.deadlines.clear()
        return failed
