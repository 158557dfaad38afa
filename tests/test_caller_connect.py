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


_OUT_OF_FILES = """
import os, resource, sys
import otpy
from otpy.host.runtime_dir import agent_socket_path, make_agents_dir
node = sys.argv[1]
make_agents_dir(node)
for i in range(40):
    agent_socket_path(node, f"a{i}").touch()
caller = otpy.Caller(node)
assert isinstance(caller.submit("a0", {}, timeout=0.2).exception(10), otpy.CallTimeout)  # the I/O thread is up
n = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 12, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
futures = [caller.submit(f"a{i}", {}, timeout=0.5) for i in range(1, 40)]
kinds = sorted({type(future.exception(10)).__name__ for future in futures})
try:
    caller.call("a39", {}, timeout=0.5)
    raised = "nothing"
except BaseException as exc:
    raised = type(exc).__name__
print(kinds, raised, flush=True)
os._exit(0)
"""


def test_a_caller_out_of_file_descriptors_fails_each_call_with_overloaded(tmp_path):
    """Before: the socket that could not be made (EMFILE) left the call's future undone for ever
    (``submit``), and ``call`` raised a raw ``zmq.ZMQError``. Now each call ends: ``Overloaded``
    (nothing was sent) or, for those that got a socket, ``CallTimeout``."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OTPY_RUNTIME_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _OUT_OF_FILES, unique_name("emfile")], env=env,
                          capture_output=True, text=True, timeout=40)
    assert done.stdout.strip() == "['CallTimeout', 'Overloaded'] Overloaded", done.stdout + done.stderr[-3000:]
