"""A caller whose connect fails (an agent path too long for AF_UNIX) raises at once and closes."""

from __future__ import annotations

import threading

import pytest

import otpy
from otpy.host.runtime_dir import agent_socket_path, make_agents_dir
from tests.helpers import unique_name

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("how", ["call", "submit"])
def test_a_call_to_an_agent_path_too_long_raises_and_the_caller_closes(how, tmp_path, monkeypatch):
    """Before: the socket whose connect raised was never closed; ``Caller.close`` then hung in
    ``Context.term()`` for ever (``otpy call`` ignored its timeout)."""
    root = tmp_path / ("r" * 60)
    root.mkdir(mode=0o700)
    monkeypatch.setenv("OTPY_RUNTIME_DIR", str(root))
    node = unique_name("longpath")
    agent = "a" * 60  # its socket path is over the 107 bytes of sun_path
    assert len(str(agent_socket_path(node, agent))) > 107
    make_agents_dir(node)
    path = agent_socket_path(node, agent)
    path.touch()  # seen by the caller's existence check
    outcome: dict = {}

    def run() -> None:
        caller = otpy.Caller(node)
        try:
            if how == "call":
                caller.call(agent, timeout=5)
            else:
                caller.submit(agent, timeout=5).result(timeout=6)
        except Exception as exc:
            outcome["error"] = exc
        caller.close()
        outcome["closed"] = True

    try:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(8)
        assert outcome.get("closed"), "the caller hung"
        assert isinstance(outcome["error"], otpy.NoSuchAgent), outcome
        assert "cannot connect" in str(outcome["error"])
    finally:
        path.unlink()
