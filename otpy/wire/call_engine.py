"""One call engine: the sockets of one I/O thread, driven by a ``CallBook``'s decisions.

A ``CallEngine`` keeps one DEALER per agent (and the monitor of its connection), sends calls,
reads replies and connection events, and carries out what the book decides (``call_book``).
Whichever thread does the socket I/O owns one engine: the caller's background thread for
``submit``/``acall`` (its loop polls ``poller`` and calls ``handle``, ``expire``,
``retire_idle``), and each thread that uses ``call`` (``start`` then ``wait``, on the calling
thread: no hand-off). The same rules hold on both.

No send blocks: a DEALER whose queue is full (an agent down while ~1000 calls wait for it)
makes the call fail with ``Overloaded``. A call refused while its agent drains (or made after
the drain notice) is *parked*: it waits, up to its deadline, until another process holds the
name (the agent's socket file is a new one, or gone), and only then goes out, once.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..host.runtime_dir import agent_endpoint, agent_socket_path
from .call_book import Answered, BlockingResult, CallBook, Decision, Fail, LinkState, Pending, Reattempt, Renew, Resend
from .call_messages import read_reply
from .codec import MAX_CALL_BYTES
from .errors import CallError, NoSuchAgent, Overloaded
from .protocol import CallFailed, Reply

RECONNECT_IVL_MS = 2
PARKED_CHECK_MS = 2  # how often parked calls look for the name's next holder
POLL_MAX_MS = 2**31 - 1  # zmq_poll's timeout is a C int (~24.8 days): a longer call wakes then and polls again
_MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED


@dataclass(slots=True, eq=False)
class Link(LinkState):
    """A ``LinkState`` with its sockets: the DEALER, its connection monitor, a poller of both."""

    dealer: Any = None
    monitor: Any = None
    poller: Any = field(default_factory=zmq.Poller)
    holder: tuple[int, int] | None = None  # the socket file this link was opened to (``_holder``)


class CallEngine:
    """The links of one I/O thread and the calls on them."""

    def __init__(self, context: zmq.Context, node: str, new_id: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic, stop: int | None = None) -> None:
        self.context = context
        self.node = node
        self.clock = clock
        self.book = CallBook(new_id)
        self.stop = stop  # a file descriptor that, once readable, ends ``wait`` (the caller closes)
        self.poller = zmq.Poller()  # every socket of every link (and what the owner adds)
        if stop is not None:
            self.poller.register(stop, zmq.POLLIN)
        self.parked: list[Pending] = []  # calls waiting for the name's next holder (a drain)
        self.links: dict[str, Link] = {}  # each agent's current link
        self.retiring: list[Link] = []  # links a drain notice replaced: closed once idle
        self.by_socket: dict[zmq.Socket, tuple[str, Link]] = {}

    # --- the owner's calls -----------------------------------------------------------------

    def start(self, pending: Pending) -> None:
        """A new call (or a new attempt of one): deadline from now, on the agent's current link."""
        self.book.start(pending, self.clock())
        self._send(pending, None)

    def wait(self, pending: Pending) -> None:
        """Do the I/O on this thread until ``pending`` ends (``call``) or ``stop`` is readable (then
        ``pending`` may be left undone); others on the way are handled."""
        outcome = pending.future
        self.retire_idle()  # a notice read before the send replaced a link
        while not outcome.done():
            link = pending.link
            poller = link.poller if link is not None and self.links.get(link.agent) is link else self.poller
            for socket, _ in poller.poll(self.poll_timeout_ms()):
                if socket == self.stop:
                    return
                self.handle(socket, until=outcome)
            if not outcome.done():
                self.expire()
            self.retire_idle()

    def handle(self, socket: zmq.Socket, until: BlockingResult | None = None) -> None:
        """``socket`` (a link's DEALER or monitor) is readable; ``until``: stop reading once it is done."""
        match self.by_socket.get(socket):  # None: not a link's socket (any more)
            case ("dealer", link):
                self._receive_replies(link, until)
            case ("monitor", link):
                self._receive_events(link)

    def poll_timeout_ms(self) -> int | None:
        deadline = self.book.next_deadline()
        timeout = None if deadline is None else min(POLL_MAX_MS, max(0, int((deadline - self.clock()) * 1000) + 1))
        if self.parked and (timeout is None or timeout > PARKED_CHECK_MS):
            return PARKED_CHECK_MS
        return timeout

    def expire(self) -> None:
        """Fail (or retry) the calls past their deadline; send the parked ones whose agent's name
        has a new holder."""
        for decision in self.book.expire(self.clock()):
            self._carry_out(decision)
        if self.parked:
            self._unpark()

    def retire_idle(self) -> None:
        """Close the replaced links that have no call left on them. Only between reads (the
        owner's loop), never while a link is being read."""
        if not self.retiring:
            return
        for link in [link for link in self.retiring if link.idle]:
            self.retiring.remove(link)
            self._close(link)

    def close(self, error_for: Callable[[Pending], CallError]) -> None:
        """Fail the calls still awaited, close every link."""
        for decision in self.book.close(error_for):
            self._carry_out(decision)
        self.parked.clear()
        for link in {id(link): link for _, link in self.by_socket.values()}.values():
            _close_link(link)
        self.links.clear()
        self.by_socket.clear()

    # --- sending ---------------------------------------------------------------------------

    def _send(self, pending: Pending, link: Link | None) -> None:
        """Send ``pending`` on ``link``, or on the agent's current link (what came before on it is
        read first: a drain notice moves the name to a new link, a disconnect already reported
        must not fail this call). A draining holder gets no call: it waits (``parked``) for the
        next one. Never blocks: a full queue is ``Overloaded``."""
        try:
            if link is None:
                link = self._current(pending.agent)
            if link.draining and (link := self._next_holder(link)) is None:
                self.book.park(pending)
                self.parked.append(pending)
                return
            link = self._put(link, pending.payload)
        except CallError as error:
            self.book.forget(pending.call_id)
            fail_future(pending.future, error)
            return
        self.book.sent(pending, link)

    def _put(self, link: Link, payload: bytes) -> Link:
        """``payload`` onto ``link``'s queue, without blocking; the link it went on. A full queue of
        an agent that is down, holding only calls that ended (timed out): a new link drops them."""
        try:
            link.dealer.send(payload, zmq.NOBLOCK, copy=False)
            return link
        except zmq.Again:
            if link.connected or not link.idle or self.links.get(link.agent) is not link:
                raise Overloaded(f"{len(link.in_flight | link.queued)} calls already wait for agent "
                                 f"{link.agent!r} (it is {'not reading' if link.connected else 'down'})",
                                 agent=link.agent) from None
        self._close(link)
        fresh = self._connect(link.agent)
        fresh.dealer.send(payload, zmq.NOBLOCK, copy=False)  # an empty queue takes it
        return fresh

    def _next_holder(self, draining: Link) -> Link | None:
        """The link to the holder after ``draining``'s (a new one if the socket file changed since
        ``draining`` was opened), or None while the draining holder still has the name."""
        current = self.links.get(draining.agent)
        if current is not None and current is not draining and not current.draining:
            return current
        if _holder(self.node, draining.agent) == draining.holder:
            return None
        return self._renew(draining)

    def _unpark(self) -> None:
        parked, self.parked = self.parked, []
        for pending in parked:
            if self.book.pending.get(pending.call_id) is pending:  # not timed out meanwhile
                self._send(pending, None)  # goes out, or is parked again

    def _current(self, agent: str) -> Link:
        link = self.links.get(agent) or self._connect(agent)
        for socket, _ in link.poller.poll(0):
            if socket is link.dealer:
                self._receive_replies(link, None)
            else:
                self._receive_events(link)
        return self.links.get(agent) or self._connect(agent)

    def _renew(self, old: Link) -> Link:
        """The name has a new holder: new calls go on a new connection; the old link stays until the
        calls still on it are answered or lost (``retire_idle``)."""
        if self.links.get(old.agent) is old:
            self.retiring.append(old)
            return self._connect(old.agent)
        return self.links.get(old.agent) or self._connect(old.agent)

    def _close(self, link: Link) -> None:
        """Close ``link`` now (it has no call on it)."""
        if self.links.get(link.agent) is link:
            del self.links[link.agent]
        for socket in (link.dealer, link.monitor):
            self.poller.unregister(socket)
            del self.by_socket[socket]
        _close_link(link)

    def _connect(self, agent: str) -> Link:
        link = self.links[agent] = _open_link(self.context, self.node, agent)  # NoSuchAgent: nothing kept
        self.by_socket[link.dealer] = ("dealer", link)
        self.by_socket[link.monitor] = ("monitor", link)
        self.poller.register(link.dealer, zmq.POLLIN)
        self.poller.register(link.monitor, zmq.POLLIN)
        if self.stop is not None:
            link.poller.register(self.stop, zmq.POLLIN)
        return link

    # --- receiving -------------------------------------------------------------------------

    def _receive_replies(self, link: Link, until: BlockingResult | None) -> None:
        while (message := _next_reply(link)) is not None:
            if (decision := self.book.on_reply(link, message)) is not None:
                self._carry_out(decision)
                if until is not None and until.done():
                    return  # what else is waiting is read before the next send

    def _receive_events(self, link: Link) -> None:
        while (event := _next_event(link)) is not None:
            if event == zmq.EVENT_CONNECTED:
                self.book.on_connected(link)
            elif event == zmq.EVENT_DISCONNECTED:
                self._receive_replies(link, None)  # replies that beat the disconnect still count
                for decision in self.book.on_disconnected(link):
                    self._carry_out(decision)

    def _carry_out(self, decision: Decision) -> None:
        match decision:
            case Answered(pending, outputs):
                resolve_future(pending.future, outputs)
            case Fail(pending, error):
                fail_future(pending.future, error)
            case Resend(pending):  # refused while draining: to the next holder, or parked until one comes
                self._send(pending, None)
            case Reattempt(pending):
                self.start(pending)
            case Renew(link):  # the holder drains: a next one that is there already gets the next calls
                try:
                    if _holder(self.node, link.agent) != link.holder:
                        self._renew(link)
                except CallError:
                    pass  # the next call to the agent connects again (or says why it cannot)


def _open_link(context: zmq.Context, node: str, agent: str) -> Link:
    """A DEALER to ``agent`` (queues while the agent is down) and the monitor of its connection.
    No socket to be had (EMFILE, ...): ``Overloaded``, nothing was sent."""
    holder = _holder(node, agent)
    try:
        dealer = context.socket(zmq.DEALER)
    except zmq.ZMQError as exc:
        raise Overloaded(f"the caller cannot open a socket to agent {agent!r}: {exc}", agent=agent) from None
    dealer.linger = 0
    dealer.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    dealer.setsockopt(zmq.IMMEDIATE, 0)
    dealer.setsockopt(zmq.MAXMSGSIZE, MAX_CALL_BYTES)  # agents send no bigger reply
    try:
        monitor = dealer.get_monitor_socket(_MONITORED)
    except zmq.ZMQError as exc:
        dealer.close(linger=0)
        raise Overloaded(f"the caller cannot open a socket to agent {agent!r}: {exc}", agent=agent) from None
    link = Link(agent, dealer=dealer, monitor=monitor, holder=holder)
    try:
        dealer.connect(agent_endpoint(node, agent))
    except zmq.ZMQError as exc:  # a path too long for AF_UNIX, ...: an open socket would hang Context.term()
        _close_link(link)
        raise NoSuchAgent(f"cannot connect to agent {agent!r} of node {node!r}: {exc}", agent=agent) from None
    link.poller.register(dealer, zmq.POLLIN)
    link.poller.register(monitor, zmq.POLLIN)
    return link


def _holder(node: str, agent: str) -> tuple[int, int] | None:
    """Which socket file holds ``agent``'s name now (inode, change time), None: no file. A
    replacement binds (or renames) a new file: the value changes."""
    try:
        st = os.stat(agent_socket_path(node, agent))
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


def _close_link(link: Link) -> None:
    try:
        link.dealer.disable_monitor()
    except zmq.ZMQError:
        pass  # the context is ending: closing is all that is left
    link.monitor.close(linger=0)
    link.dealer.close(linger=0)


def _next_reply(link: Link) -> Reply | CallFailed | None:
    """The next message waiting on the link's DEALER (undecodable ones are dropped), or None."""
    while True:
        try:
            frame = link.dealer.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        if (message := read_reply(frame.buffer)) is not None:
            return message


def _next_event(link: Link) -> int | None:
    try:
        return recv_monitor_message(link.monitor, zmq.NOBLOCK)["event"]
    except zmq.Again:
        return None


def resolve_future(future: Any, outputs: dict) -> None:
    """Give a call's future (a ``concurrent.futures.Future`` or a ``BlockingResult``) its outputs,
    unless it ended already (cancelled, closed): local and remote calls (``remote_calls``) alike."""
    if not future.done():
        try:
            future.set_result(outputs)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile


def fail_future(future: Any, error: BaseException) -> None:
    """Give a call's future its error, unless it ended already."""
    if not future.done():
        try:
            future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass


_NUMBERS = frozenset({int, float})
_INF = float("inf")


def call_limits_problem(timeout: object, retries: object) -> str | None:
    """Why ``timeout`` (seconds per attempt) or ``retries`` cannot be a call's, or None: one
    rule for ``call``, ``submit`` and ``acall`` (a timeout of 0 or None would never let a reply in)."""
    if type(timeout) in _NUMBERS and 0 < timeout < _INF and type(retries) is int and retries >= 0:
        return None  # the usual case, at the cost of three type checks (bool is not int here)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        return f"timeout: got {timeout!r}; expected a number of seconds > 0"
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        return f"retries: got {retries!r}; expected an integer >= 0"
    return None
