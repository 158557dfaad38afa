"""The registry with real processes: configuration at setup, on_config, restarts for new values,
refusals and compare-and-set over the wire, durability across a SIGKILL, and `otpy vars`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import zmq
from click.testing import CliRunner

import otpy
from otpy.cli.vars import vars_group
from otpy.wire.protocol import VARIABLE_CHANGED
from tests.helpers import Events, pids, unique_name

pytestmark = pytest.mark.timeout(60)

CHILDREN = """
[[supervisor.children]]
id = "hooked"
program = "tests.registry_agents:Shows"

[[supervisor.children]]
id = "team"
type = "supervisor"

  [[supervisor.children.children]]
  id = "plain"
  program = "tests.registry_agents:ShowsNoHook"

  [[supervisor.children.children]]
  id = "critic"
  program = "tests.registry_agents:Shows"
"""

VARIABLES = """
[variables.global]
temperature = { type = "float", low = 0.0, high = 2.0, default = 1.0 }

[variables.team]
timeout = { type = "float", low = 0.1, high = 10.0, default = 2.0 }

[variables.critic]
timeout = { type = "float", low = 0.1, high = 1.0, default = 0.5 }

[variables.hooked]
a0 = { type = "integer", low = 0, high = 1000000, default = 0 }
a1 = { type = "integer", low = 0, high = 1000000, default = 0 }
a2 = { type = "integer", low = 0, high = 1000000, default = 0 }
b = { type = "integer", low = 0, high = 1000000, default = 0 }
c = { type = "integer", low = 0, high = 1000000, default = 0 }
"""


def write_topology(tmp_path, name: str, children: str = CHILDREN, variables: str = VARIABLES):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[node]\nname = "{name}"\n\n[supervisor]\nmax_restarts = 10\nmax_seconds = 5\n'
                    f"{children}\n{variables}")
    return path


@pytest.fixture
def node(tmp_path):
    with otpy.Node.from_toml(write_topology(tmp_path, unique_name("vars"))) as node:
        yield node


def registry(node, **request) -> dict:
    return node.call("registry", request, timeout=5.0)


def wait_for(check, timeout: float = 10.0, what: str = "the condition"):
    """``check()``'s first truthy result, polled until a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except otpy.CallError:
            result = None  # the agent is restarting
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


def test_setup_gets_the_resolved_configuration(node):
    assert node.call("hooked")["config"] == {"temperature": 1.0, "a0": 0, "a1": 0, "a2": 0, "b": 0, "c": 0}
    assert node.call("plain")["config"] == {"temperature": 1.0, "timeout": 2.0}
    assert node.call("critic")["config"] == {"temperature": 1.0, "timeout": 0.5}


def test_on_config_gets_each_change_of_the_resolved_configuration(node):
    assert registry(node, op="set", scope="global", name="temperature", value=0.3)["ok"]
    got = wait_for(lambda: (r := node.call("critic"))["config"]["temperature"] == 0.3 and r, what="on_config")
    assert got["changes"] == 1 and got["config"] == {"temperature": 0.3, "timeout": 0.5}
    # team's timeout: critic declares its own, so its resolved configuration does not change ...
    assert registry(node, op="set", scope="team", name="timeout", value=4.0)["ok"]
    # ... while plain (no on_config, in team) is restarted with the new value
    wait_for(lambda: node.call("plain")["config"]["timeout"] == 4.0, what="plain's restart")
    assert registry(node, op="set", scope="critic", name="timeout", value=0.9)["ok"]
    got = wait_for(lambda: (r := node.call("critic"))["config"]["timeout"] == 0.9 and r, what="on_config")
    assert got["changes"] == 2  # the team change was not delivered: it did not change critic's values


def test_a_program_without_on_config_is_restarted_with_the_new_values(node):
    events = Events(node)
    before = pids(node, "team")["plain"]
    critic_pid = pids(node, "team")["critic"]
    assert registry(node, op="set", scope="hooked", name="b", value=7)["ok"]  # not plain's chain
    assert registry(node, op="set", scope="global", name="temperature", value=1.5)["ok"]
    got = wait_for(lambda: (r := node.call("plain"))["pid"] != before and r, what="the restart")
    assert got["config"] == {"temperature": 1.5, "timeout": 2.0}
    exited = events.wait("exited", "plain")
    assert "75" in exited["detail"], exited
    assert pids(node, "team")["critic"] == critic_pid  # it has on_config: not restarted
    assert [e for e in events.drain() if e["kind"] == "exited"] == [exited]  # one restart only


def test_refused_values_and_conflicts_over_the_wire(node):
    refused = registry(node, op="set", scope="global", name="temperature", value=3.5)
    assert refused["ok"] is False and refused["error"] == "invalid"
    assert "temperature" in refused["problems"][0] and "3.5" in refused["problems"][0]
    assert "[0.0, 2.0]" in refused["problems"][0]
    refused = registry(node, op="set_many", values={"global": {"temperature": 0.2}, "team": {"timeout": 99}})
    assert refused["ok"] is False and any("timeout" in p and "99" in p for p in refused["problems"])
    assert registry(node, op="get", scope="global", name="temperature")["reason"] == "default"
    v1 = registry(node, op="set", scope="team", name="timeout", value=3.0, expected_version=0)["version"]
    lost = registry(node, op="set", scope="team", name="timeout", value=5.0, expected_version=0)
    assert lost["ok"] is False and lost["error"] == "conflict" and lost["current"] == v1
    assert registry(node, op="get", scope="team", name="timeout")["value"] == 3.0
    assert registry(node, op="bogus")["error"] == "bad_request"


def test_changes_are_published_after_commit(node):
    context = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.linger = 0
    path = os.path.join(str(node.aio.dir), "registry-events.sock")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    sub.connect(f"ipc://{path}")
    try:
        def published():
            registry(node, op="set", scope="global", name="temperature", value=0.25)
            return sub.poll(100) and VARIABLE_CHANGED.decode(sub.recv())
        event = wait_for(published, what="a VariableChanged")  # the first sets may precede the subscription
        assert (event.scope, event.name, event.value) == ("global", "temperature", 0.25)
        assert event.version == registry(node, op="get", scope="global", name="temperature")["version"]
        registry(node, op="set", scope="global", name="temperature", value=9.0)  # refused: nothing published
        assert not sub.poll(200)
    finally:
        sub.close()


@pytest.mark.timeout(60)
def test_acknowledged_writes_survive_a_sigkill_during_a_burst(node):
    caller = otpy.Caller(node.name)
    stop = threading.Event()
    acked: dict[str, list[int]] = {"a0": [], "a1": [], "a2": [], "bc": []}
    attempted: dict[str, list[int]] = {key: [] for key in acked}

    def writer(key: str) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            attempted[key].append(i)
            if key == "bc":
                request = {"op": "set_many", "values": {"hooked": {"b": i, "c": i}}}
            else:
                request = {"op": "set", "scope": "hooked", "name": key, "value": i}
            try:
                reply = caller.call("registry", request, timeout=5.0)
            except otpy.CallError:
                continue  # not acknowledged: may or may not be there
            assert reply["ok"], reply
            acked[key].append(i)

    threads = [threading.Thread(target=writer, args=(key,)) for key in acked]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(len(a) >= 20 for a in acked.values()), what="the burst")
        victim = pids(node)["registry"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: pids(node)["registry"] not in (None, victim), what="the registry's restart")
        wait_for(lambda: all(a and a[-1] > attempted[k][0] + 40 for k, a in acked.items()), what="more writes")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    values = {key: registry(node, op="get", scope="hooked", name=key)["value"] for key in ("a0", "a1", "a2", "b", "c")}
    for key in ("a0", "a1", "a2"):
        # writes of one thread are sequential: the last one acknowledged, or a later one not acknowledged
        assert values[key] == acked[key][-1] or (values[key] in attempted[key] and values[key] > acked[key][-1])
    assert values["b"] == values["c"]  # set_many is atomic
    assert values["b"] >= acked["bc"][-1]
    caller.close()
    # the agent with on_config ends with the last values too
    wait_for(lambda: {k: node.call("hooked")["config"][k] for k in values} == values, what="hooked's config")


def run_cli(*args: str):
    return CliRunner().invoke(vars_group, list(args), catch_exceptions=False)


def test_cli_get_set_list_explain(node):
    name = node.name
    result = run_cli("set", "global.temperature", "0.5", "--node", name)
    assert result.exit_code == 0, result.output
    result = run_cli("get", "global.temperature", "--node", name)
    assert (result.exit_code, json.loads(result.output)) == (0, 0.5)
    whole = json.loads(run_cli("get", "global.temperature", "--json", "--node", name).output)
    assert whole["reason"] == "set" and whole["version"] >= 1
    refused = run_cli("set", "global.temperature", "7", "--node", name)
    assert refused.exit_code == 1 and "temperature" in refused.output and "7" in refused.output
    assert run_cli("set", "global.nope", "1", "--node", name).exit_code == 1
    listed = run_cli("list", "team", "--node", name)
    assert listed.exit_code == 0 and "timeout" in listed.output and "default" in listed.output
    explained = run_cli("explain", "critic", "timeout", "--node", name)
    assert explained.exit_code == 0 and "critic" in explained.output and "0.5" in explained.output
    assert run_cli("get", "temperature", "--node", name).exit_code == 2  # not SCOPE.NAME


def test_cli_says_to_declare_variables_without_a_registry(tmp_path):
    name = unique_name("novars")
    with otpy.Node.from_toml(write_topology(tmp_path, name, variables="")) as node:
        result = run_cli("list", "--node", node.name)
    assert result.exit_code == 1 and "[variables]" in result.output


def test_cli_as_a_real_process(node):
    import subprocess
    import sys

    command = [sys.executable, "-c", "from otpy.cli.vars import vars_group; vars_group()"]
    done = subprocess.run([*command, "set", "team.timeout", "6", "--node", node.name],
                          check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*command, "get", "team.timeout", "--node", node.name],
                          check=False, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "6.0\n")
    done = subprocess.run([*command, "set", "team.timeout", "high", "--node", node.name],
                          check=False, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "'high'" in done.stderr
