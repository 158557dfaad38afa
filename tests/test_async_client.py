"""AsyncClient finds a missing node as the blocking client does: NodeNotFound at once, not after the timeout.

A node that is gone (never started, stopped: its control socket removed, or its folder's lock held by
something that is no node) answers nothing; waiting the request's whole timeout for it, as AsyncClient
did, hides the cause for 30 s.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import otpy
from otpy.host.node_run import RunLock, new_run_id
from otpy.host.runtime_dir import node_dir
from otpy.wire.client import InvalidNodeName, NodeNotFound
from tests.helpers import sleeper, unique_name

pytestmark = pytest.mark.timeout(30)


def ask_status(name: str, timeout: float = 10.0):
    """The exception an AsyncClient's status() raises for ``name``, and how long it took."""
    async def talk():
        async with otpy.AsyncClient(name, timeout=timeout) as client:
            await client.status()

    began = time.monotonic()
    with pytest.raises(NodeNotFound) as raised:
        asyncio.run(talk())
    return raised.value, time.monotonic() - began


def test_a_node_that_never_ran_is_not_found_not_stale():
    name = unique_name("never")
    error, took = ask_status(name)
    assert type(error) is NodeNotFound and f"no node {name!r} is running" in str(error)
    for blocking in (lambda: otpy.connect(name), lambda: otpy.Client(name).status()):  # the blocking client says the same
        with pytest.raises(NodeNotFound) as raised:
            blocking()
        assert type(raised.value) is NodeNotFound
    assert took < 5


def test_a_folder_without_a_control_socket_is_not_found_at_once():
    """The folder is there and its lock is held (a node stopped, something of it still holds the
    lock): no control socket, so nothing will answer; the blocking connect() says so at once."""
    name = unique_name("gone")
    lock = RunLock.take(node_dir(name), new_run_id())
    try:
        error, took = ask_status(name, timeout=10.0)
        assert type(error) is NodeNotFound and took < 5, (error, took)
    finally:
        lock.release()


def test_a_bad_name_is_refused_as_connect_refuses_it():
    with pytest.raises(InvalidNodeName):
        otpy.AsyncClient("../etc")


def test_a_node_stopped_between_two_requests_is_not_found(tmp_path):
    name = unique_name("stopped")
    node = otpy.Node.from_spec(otpy.SupervisorSpec(id="root", children=(sleeper("s"),)), name=name).start()

    async def talk():
        async with otpy.AsyncClient(name, timeout=10) as client:
            assert (await client.status()).tree.state == "running"
            await asyncio.to_thread(node.stop)
            began = time.monotonic()
            with pytest.raises(NodeNotFound) as raised:
                await client.status()
            return raised.value, time.monotonic() - began

    try:
        error, took = asyncio.run(talk())
    finally:
        node.stop()
    assert type(error) is NodeNotFound and took < 5, (error, took)  # not NodeStale: it stopped, it did not die
