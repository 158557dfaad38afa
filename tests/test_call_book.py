"""The rules of agent calls (``otpy.wire.call_book``), without sockets or processes: what a reply,
a drain notice, a connection change and a deadline do to the calls in flight."""

from __future__ import annotations

import concurrent.futures
import itertools

import msgspec

from otpy.wire.call_book import Answered, BlockingResult, CallBook, Fail, LinkState, Pending, Reattempt, Renew, Resend
from otpy.wire.errors import AgentCrashed, CallTimeout, Overloaded, RemoteError
from otpy.wire.protocol import DRAIN_NOTICE, Call, CallFailed, Reply


def book() -> CallBook:
    return CallBook(itertools.count(100).__next__)


def sent(book: CallBook, link: LinkState, call_id: int, *, now: float = 0.0, timeout: float = 1.0,
         retries: int = 0, future=None) -> Pending:
    pending = Pending(link.agent, {"i": call_id}, timeout, retries, future or BlockingResult(), b"", call_id)
    book.start(pending, now)
    book.sent(pending, link)
    return pending


def connected(agent: str = "a") -> LinkState:
    return LinkState(agent, connected=True)


def test_a_reply_resolves_its_call_and_a_late_one_is_dropped():
    calls, link = book(), connected()
    pending = sent(calls, link, 1)
    assert calls.on_reply(link, Reply(call_id=1, outputs={"x": 1})) == Answered(pending, {"x": 1})
    assert link.idle and calls.pending == {}
    assert calls.on_reply(link, Reply(call_id=1, outputs={"x": 2})) is None  # answered already
    assert calls.on_reply(link, Reply(call_id=7, outputs={})) is None  # never ours


def test_a_drain_notice_renews_the_link_and_the_calls_on_it_are_still_answered():
    calls, link = book(), connected()
    pending = sent(calls, link, 1)
    assert calls.on_reply(link, CallFailed(call_id=DRAIN_NOTICE, kind="draining")) == Renew(link)
    assert link.draining
    assert calls.on_reply(link, Reply(call_id=1, outputs={})) == Answered(pending, {})


def test_a_call_refused_while_draining_is_resent_same_id_same_deadline():
    calls, link = book(), connected()
    pending = sent(calls, link, 1, now=10.0, timeout=2.0)
    assert calls.on_reply(link, CallFailed(call_id=1, kind="draining")) == Resend(pending)
    assert (pending.call_id, pending.deadline, pending.attempts_left) == (1, 12.0, 0)
    fresh = connected()
    calls.sent(pending, fresh)  # what the engine does with a Resend: a new link, no new deadline
    assert pending.link is fresh and fresh.in_flight == {1} and link.idle
    assert [type(d) for d in calls.expire(11.9)] == []
    [timed_out] = calls.expire(12.0)
    assert isinstance(timed_out, Fail) and isinstance(timed_out.error, CallTimeout)


def test_a_disconnect_crashes_the_calls_in_flight_and_leaves_the_queued_ones():
    calls, link = book(), LinkState("a")
    early = sent(calls, link, 1)  # sent while the agent was down: queued
    calls.on_connected(link)
    assert link.in_flight == {1} and not link.queued
    [crashed] = calls.on_disconnected(link)
    assert crashed == Fail(early, crashed.error) and isinstance(crashed.error, AgentCrashed)
    later = sent(calls, link, 2)  # the replacement is not there yet: queued, on no wire
    assert calls.on_disconnected(link) == [] and link.queued == {2} and calls.pending == {2: later}
    calls.on_connected(link)
    assert calls.on_reply(link, Reply(call_id=2, outputs={})) == Answered(later, {})


def test_never_sent_twice_unless_asked_a_crash_with_retries_is_a_new_attempt():
    calls, link = book(), connected()
    once = sent(calls, link, 1)
    twice = sent(calls, link, 2, retries=1, now=5.0, timeout=3.0)
    decisions = calls.on_disconnected(link)
    assert Fail(once, decisions[0].error) in decisions and Reattempt(twice) in decisions
    assert twice.call_id == 100 and twice.attempts_left == 0  # a new id, so a late reply of the first is dropped
    assert msgspec.msgpack.decode(twice.payload, type=Call) == Call(call_id=100, inputs={"i": 2})
    calls.start(twice, 6.0)
    calls.sent(twice, link)
    assert twice.deadline == 9.0
    assert calls.on_reply(link, Reply(call_id=2, outputs={})) is None


def test_timeouts_in_deadline_order_then_the_late_reply_is_dropped():
    calls, link = book(), connected()
    slow = sent(calls, link, 1, now=0.0, timeout=2.0)
    fast = sent(calls, link, 2, now=0.0, timeout=1.0)
    assert calls.next_deadline() == 1.0
    [first] = calls.expire(1.5)
    assert first.pending is fast and isinstance(first.error, CallTimeout) and "within 1.0 s" in str(first.error)
    [second] = calls.expire(2.0)
    assert second.pending is slow
    assert calls.on_reply(link, Reply(call_id=1, outputs={})) is None
    assert link.idle and calls.next_deadline() is None


def test_a_timeout_leaves_the_link_the_call_was_on_not_the_agents_current_one():
    calls, old = book(), connected()
    pending = sent(calls, old, 1, timeout=1.0)
    calls.on_reply(old, CallFailed(call_id=DRAIN_NOTICE, kind="draining"))
    current = connected()
    sent(calls, current, 2, timeout=5.0)
    calls.expire(1.0)
    assert old.idle and current.in_flight == {2} and pending.call_id not in calls.pending


def test_failures_that_are_not_retryable_fail_at_once_even_with_retries():
    calls, link = book(), connected()
    pending = sent(calls, link, 1, retries=3)
    raised = CallFailed(call_id=1, kind="raised", error_type="ValueError", message="no")
    decision = calls.on_reply(link, raised)
    assert decision == Fail(pending, decision.error) and isinstance(decision.error, RemoteError)
    again = sent(calls, link, 2, retries=1)
    assert calls.on_reply(link, CallFailed(call_id=2, kind="overloaded")) == Reattempt(again)
    overloaded = sent(calls, link, 3)
    decision = calls.on_reply(link, CallFailed(call_id=3, kind="overloaded"))
    assert decision.pending is overloaded and isinstance(decision.error, Overloaded)


def test_a_cancelled_future_is_not_retried():
    calls, link = book(), connected()
    future = concurrent.futures.Future()
    pending = sent(calls, link, 1, retries=2, future=future)
    future.cancel()
    [decision] = calls.expire(5.0)
    assert decision == Fail(pending, decision.error)


def test_close_fails_every_call_still_awaited():
    calls, link = book(), connected()
    pending = sent(calls, link, 1)
    [decision] = calls.close(lambda p: CallTimeout("closed", agent=p.agent))
    assert decision.pending is pending and calls.pending == {} and calls.next_deadline() is None


def test_an_unreadable_reply_with_a_call_id_fails_that_call():
    from otpy.wire.call_messages import read_reply
    from otpy.wire.errors import Unencodable

    calls, link = book(), connected()
    pending = sent(calls, link, 4)
    garbled = msgspec.msgpack.encode({"type": "Reply", "call_id": 4, "outputs": 5})
    decision = calls.on_reply(link, read_reply(garbled))
    assert decision.pending is pending and isinstance(decision.error, Unencodable)
