"""Reconfigure, end to end: make-before-break under a dynamic supervisor, calls during the swap."""

from __future__ import annotations

import threading

import pytest

import otpy
from otpy.wire.protocol import ChildInfo
from tests.helpers import alive, unique_name, wait_until

pytestmark = pytest.mark.timeout(60)

ECHO = "tests.call_agents:Echo"
UPPER = "tests.call_agents:upper"


@pytest.fixture
def node():
    root = otpy.SupervisorSpec(id="root", children=(otpy.DynamicSupervisorSpec(id="pool"),))
    node = otpy.Node.from_spec(root, name=unique_name("reconf")).start()
    assert node.start_child("pool", otpy.ChildSpec(id="agent", program=ECHO)).ok
    yield node
    node.stop()


def test_the_target_serves_under_the_same_name_with_a_new_pid(node):
    before = node.which_children("pool")[0].pid
    result = node.reconfigure("pool", "agent", otpy.ChildSpec(id="agent", program=UPPER))
    assert result.ok and result.pid != before
    assert node.which_children("pool") == [ChildInfo(id="agent", kind="worker", state="running", pid=result.pid,
                                                    restarts=0, program=UPPER)]
    assert node.call("agent", {"text": "hi"}) == {"text": "HI"}


def test_calls_in_a_loop_during_reconfigures_all_succeed(node):
    failures, answers, done = [], [], threading.Event()

    def caller():
        with otpy.Caller(node.name) as c:
            while not done.is_set():
                try:
                    answers.append(c.call("agent", {"text": "x"}, timeout=5))
                except otpy.CallError as exc:
                    failures.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(answers) >= 4, timeout=10, what="the callers calling")
        for program, mark in ((UPPER, "X"), (ECHO, "x"), (UPPER, "X"), (ECHO, "x")):
            before = len(answers)
            assert node.reconfigure("pool", "agent", otpy.ChildSpec(id="agent", program=program)).ok
            # the callers go on, and reach the new program
            wait_until(lambda: any(a["text"] == mark for a in answers[before:]), timeout=10,
                       what=f"an answer from {program}")
    finally:
        done.set()
        for t in threads:
            t.join(10)
    assert failures == []


def test_a_target_that_fails_to_start_leaves_the_source_serving(node):
    before = node.which_children("pool")[0].pid
    result = node.reconfigure("pool", "agent", otpy.ChildSpec(id="agent", program="tests.agents:FailingSetup"))
    assert result.outcome == "start_failed" and "boom" in result.detail
    assert node.which_children("pool")[0].pid == before
    assert node.call("agent", {"text": "still"})["text"] == "still"


def test_reconfigure_through_the_control_socket(node):
    with otpy.connect(node.name) as client:
        result = client.reconfigure("pool", "agent", otpy.ChildSpec(id="agent", program=UPPER))
        assert result.ok
        assert client.reconfigure("pool", "ghost", otpy.ChildSpec(id="ghost", program=UPPER)).outcome == "not_found"


def test_terminate_child_right_after_a_reconfigure_returns_only_once_the_source_is_dead(node, tmp_path):
    # The source is draining a 1.5 s call when terminate_child arrives: OTP's terminate_child
    # returns when the child is dead, and no incarnation of "agent" may outlive it.
    assert node.reconfigure("pool", "agent", otpy.ChildSpec(id="agent", program="tests.call_agents:Slow")).ok
    source = node.which_children("pool")[0].pid
    mark, answers = tmp_path / "running", []

    def call_slowly():
        with otpy.Caller(node.name) as c:
            answers.append(c.call("agent", {"seconds": 1.5, "mark": str(mark)}, timeout=10))

    caller = threading.Thread(target=call_slowly)
    caller.start()
    wait_until(mark.exists, timeout=10, what="the slow call to start")
    assert node.reconfigure("pool", "agent", otpy.ChildSpec(id="agent", program=ECHO)).ok
    assert alive(source)  # still draining its call
    result = node.terminate_child("agent", "pool")
    assert result.ok, result
    assert not alive(source)
    caller.join(10)
    assert answers and answers[0]["seconds"] == 1.5  # the call it took was answered


@pytest.mark.parametrize("how", ["call", "submit"])
def test_a_caller_idle_through_a_reconfigure_reaches_the_target_not_the_exiting_source(node, tmp_path, how):
    # The source is in its teardown (its socket no longer read) when the caller, whose link to
    # it has been idle since before the Reconfigure, calls again: the source's drain notice
    # must have moved the caller to a new connection, or the call is lost with the source.
    mark = tmp_path / "tearing-down"
    slow = otpy.ChildSpec(id="agent", program="tests.call_agents:SlowTeardown",
                          args={"mark": str(mark), "seconds": 1.0})
    assert node.reconfigure("pool", "agent", slow).ok
    with otpy.Caller(node.name) as caller:
        # each form has its own link: the sync one the thread's, submit the I/O thread's
        call = (lambda inputs: caller.call("agent", inputs, timeout=5)) if how == "call" else (
            lambda inputs: caller.submit("agent", inputs, timeout=5).result(10))
        source = call({"x": 1})["pid"]
        assert node.reconfigure("pool", "agent", otpy.ChildSpec(id="agent", program=ECHO)).ok
        wait_until(mark.exists, timeout=10, what="the source's teardown")
        answer = call({"x": 2})
    assert answer["x"] == 2 and answer.get("pid") != source
