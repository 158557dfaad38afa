"""A connection cap's lines name the listener it guards (the registry's events socket is not
"the agent's socket")."""

from __future__ import annotations

import threading

import pytest
import zmq

from otpy.wire.connections import AgentConnectionCap, ThreadConnectionCap

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("threaded", [False, True])
def test_a_reset_names_its_listener(tmp_path, threaded):
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.linger = 0
    endpoint = f"ipc://{tmp_path}/events.sock"
    sock.bind(endpoint)
    said: list[str] = []
    if threaded:
        cap = ThreadConnectionCap(sock, 8, lambda: sock.bind(endpoint), threading.Lock(), said.append)
        agent_cap, expected = cap.cap, "the registry's events socket"
    else:
        cap = agent_cap = AgentConnectionCap(sock, 8, lambda: sock.bind(endpoint), said.append, listener="x.sock")
        expected = "x.sock"
    try:
        agent_cap.tally.count = 8
        agent_cap._reset()
        assert said and expected in said[0] and "agent" not in said[0], said
    finally:
        cap.close()
        sock.close(linger=0)
        context.term()
