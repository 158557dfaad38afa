"""User objects that raise wherever otpy reads them (an output's field, an exception's
``__str__``), and exceptions too long to format: the caller gets a typed error at once and
the agent goes on answering."""

from __future__ import annotations

import time

import pytest

import otpy
from otpy.wire.codec import describe
from tests.helpers import unique_name
from tests.bad_answer_agents import EvilError

pytestmark = pytest.mark.timeout(60)

EVIL = "tests.bad_answer_agents:Evil"


@pytest.fixture(scope="module")
def node():
    root = otpy.SupervisorSpec(id="root", children=(otpy.ChildSpec(id="evil", program=EVIL),))
    with otpy.Node.from_spec(root, name=unique_name("evil")) as node:
        yield node


def test_describe_never_raises():
    assert describe(EvilError()).startswith("EvilError: (its message could not be read")
    assert len(describe(ValueError("x" * 10_000))) == 500


def test_an_output_whose_field_raises_an_evil_exception_is_unencodable_and_the_agent_answers_on(node):
    """Before: ``describe`` of the evil exception raised inside ``run_call`` and again in
    ``_reply_to``; the call thread died and every later call timed out."""
    pid = node.call("evil")["pid"]
    for _ in range(3):  # the agent has one call thread: each of these would have killed it
        with pytest.raises(otpy.Unencodable, match="'v'"):
            node.call("evil", {"kind": "evil_output"}, timeout=5)
    assert node.call("evil", timeout=5)["pid"] == pid


def test_an_exception_whose_str_raises_is_a_remote_error(node):
    with pytest.raises(otpy.RemoteError) as raised:
        node.call("evil", {"kind": "evil_raise"}, timeout=5)
    assert raised.value.error_type == "EvilError"
    assert node.call("evil", timeout=5)["pid"]


def test_a_long_chain_of_causes_is_formatted_quickly(node):
    """Before: ``traceback.format_exc()`` walked 100k chained causes for 5.6 s."""
    started = time.monotonic()
    with pytest.raises(otpy.RemoteError) as raised:
        node.call("evil", {"kind": "long_chain", "n": 100_000}, timeout=10)
    took = time.monotonic() - started
    assert "more left out" in raised.value.remote_traceback
    assert "99999" in raised.value.remote_traceback  # the last raised is shown
    assert took < 2.0, took


def test_a_reply_over_the_size_limit_is_unencodable(node):
    from otpy.wire.codec import MAX_CALL_BYTES

    with pytest.raises(otpy.Unencodable, match=str(MAX_CALL_BYTES)):
        node.call("evil", {"kind": "big", "n": MAX_CALL_BYTES + 1}, timeout=10)
    assert node.call("evil", timeout=5)["pid"]
