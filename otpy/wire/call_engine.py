"""One call engine: the sockets of one I/O thread, driven by a ``CallBook``'s decisions.

A ``CallEngine`` keeps one DEALER per agent (and the monitor of its connection), sends calls,
reads replies and connection events, and carries out what the book decides (``call_book``).
Whichever thread does the socket I/O owns one engine: the caller's background thread for
``submit``/``acall`` (its loop polls ``poller`` and calls ``handle``, ``expire``,
``retire_idle``), and each thread that uses ``call`` (``start`` then ``wait``, on the calling
thread: no hand-off). The same rules hold on both.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..host.runtime_dir import agent_endpoint
from .call_book import Answered, BlockingResult, CallBook, Decision, Fail, LinkState, Pending, Reattempt, Renew, Resend
from .call_messages import read_reply
from .codec import MAX_CALL_BYTES
from .errors import CallError, NoSuchAgent
from .protocol import CallFailed, Reply

RECONNECT_IVL_MS = 2
_MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED


@dataclass(slots=True, eq=False)
class Link(LinkState):
    """A ``LinkState`` with its sockets: the DEALER, its connection monitor, a poller of both."""

    dealer: Any = None
    monitor: Any = None
    poller: Any = field(default_factory=zmq.Poller)


class CallEngine:
    """The links of one I/O thread and the calls on them."""

    def __init__(self, context: zmq.Context, node: str, new_id: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.context = context
        self.node = node
        self.clock = clock
        self.book = CallBook(new_id)
        self.poller = zmq.Poller()  # every socket of every link (and what the owner adds)
        self.links: dict[str, Link] = {}  # each agent's current link
        self.retiring: list[Link] = []  # links a drain notice replaced: closed once idle
        self.by_socket: dict[zmq.Socket, tuple[str, Link]] = {}

    # --- the owner's calls -----------------------------------------------------------------

    def start(self, pending: Pending) -> None:
        """A new call (or a new attempt of one): deadline from now, on the agent's current link."""
        self.book.start(pending, self.clock())
        self._send(pending, None)

    def wait(self, pending: Pending) -> None:
        """Do the I/O on this thread until ``pending`` ends (``call``); others on the way are handled."""
        outcome = pending.future
        self.retire_idle()  # a notice read before the send replaced a link
        while not outcome.done():
            link = pending.link
            poller = link.poller if link is not None and self.links.get(link.agent) is link else self.poller
            for socket, _ in poller.poll(self.poll_timeout_ms()):
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
        return None if deadline is None else max(0, int((deadline - self.clock()) * 1000) + 1)

    def expire(self) -> None:
        for decision in self.book.expire(self.clock()):
            self._carry_out(decision)

    def retire_idle(self) -> None:
        """Close the replaced links that have no call left on them. Only between reads (the
        owner's loop), never while a link is being read."""
        if not self.retiring:
            return
        for link in [link for link in self.retiring if link.idle]:
            self.retiring.remove(link)
            for socket in (link.dealer, link.monitor):
                self.poller.unregister(socket)
                del self.by_socket[socket]
            _close_link(link)

    def close(self, error_for: Callable[[Pending], CallError]) -> None:
        """Fail the calls still awaited, close every link."""
        for decision in self.book.close(error_for):
            self._carry_out(decision)
        for link in {id(link): link for _, link in self.by_socket.values()}.values():
            _close_link(link)
        self.links.clear()
        self.by_socket.clear()

    # --- sending ---------------------------------------------------------------------------

    def _send(self, pending: Pending, link: Link | None) -> None:
        """Send ``pending`` on ``link``, or on the agent's current link (what came before on it is
        read first: a drain notice moves the name to a new link, a disconnect already reported
        must not fail this call)."""
        try:
            if link is None:
                link = self._current(pending.agent)
        except CallError as error:
            _fail(pending.future, error)
            return
        self.book.sent(pending, link)
        link.dealer.send(pending.payload, copy=False)

    def _current(self, agent: str) -> Link:
        link = self.links.get(agent) or self._connect(agent)
        for socket, _ in link.poller.poll(0):
            if socket is link.dealer:
                self._receive_replies(link, None)
            else:
                self._receive_events(link)
        return self.links.get(agent) or self._connect(agent)

    def _renew(self, old: Link) -> Link:
        """A draining agent: new calls go on a new connection (to the name's next holder); the old
        link stays until the calls still on it are answered or lost (``retire_idle``)."""
        if self.links.get(old.agent) is old:
            self.retiring.append(old)
            return self._connect(old.agent)
        return self.links.get(old.agent) or self._connect(old.agent)

    def _connect(self, agent: str) -> Link:
        link = self.links[agent] = _open_link(self.context, self.node, agent)  # NoSuchAgent: nothing kept
        self.by_socket[link.dealer] = ("dealer", link)
        self.by_socket[link.monitor] = ("monitor", link)
        self.poller.register(link.dealer, zmq.POLLIN)
        self.poller.register(link.monitor, zmq.POLLIN)
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
                _resolve(pending.future, outputs)
            case Fail(pending, error):
                _fail(pending.future, error)
            case Resend(pending):
                try:
                    link = self._renew(pending.link)
                except CallError as error:
                    _fail(pending.future, error)
                    return
                self._send(pending, link)
            case Reattempt(pending):
                self.start(pending)
            case Renew(link):
                try:
                    self._renew(link)
                except CallError:
                    pass  # the next call to the agent connects again (or says why it cannot)


def _open_link(context: zmq.Context, node: str, agent: str) -> Link:
    """A DEALER to ``agent`` (queues while the agent is down) and the monitor of its connection."""
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    dealer.setsockopt(zmq.IMMEDIATE, 0)
    dealer.setsockopt(zmq.MAXMSGSIZE, MAX_CALL_BYTES)  # agents send no bigger reply
    monitor = dealer.get_monitor_socket(_MONITORED)
    link = Link(agent, dealer=dealer, monitor=monitor)
    try:
        dealer.connect(agent_endpoint(node, agent))
    except zmq.ZMQError as exc:  # a path too long for AF_UNIX, ...: an open socket would hang Context.term()
        _close_link(link)
        raise NoSuchAgent(f"cannot connect to agent {agent!r} of node {node!r}: {exc}", agent=agent) from None
    link.poller.register(dealer, zmq.POLLIN)
    link.poller.register(monitor, zmq.POLLIN)
    return link


def _close_link(link: Link) -> None:
    link.dealer.disable_monitor()
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


def _resolve(future: Any, outputs: dict) -> None:
    if not future.done():
        try:
            future.set_result(outputs)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile


def _fail(future: Any, error: BaseException) -> None:
    if not future.done():
        try:
            future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass
