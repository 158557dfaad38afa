"""`otpy vars` over a node's CURVE TCP endpoint (`--endpoint`, `--keys`): reads through the
registry reached over the node's call gateway (`RemoteCaller`), writes through the node's
SetVariables over the control endpoint; loopback only, ports the OS gave."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

import otpy
from otpy.cli.main import main
from otpy.wire.curve import keys_dir
from tests.helpers import unique_name
from tests.test_remote_cli import free_port, stderr_of

pytestmark = pytest.mark.timeout(60)

TOPOLOGY = """
[node]
name = "{name}"
control_tcp = "{endpoint}"

[supervisor]

[[supervisor.children]]
id = "helper"
program = "tests.bound_agents:Alpha"
enabled = {{ variable = "global.extra" }}

[variables.global]
temperature = {{ type = "float", low = 0.0, high = 2.0, default = 0.7 }}
extra = {{ type = "bool", default = false }}
"""


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    name = unique_name("rvars")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    folder = tmp_path_factory.mktemp("rvars")
    path = folder / f"{name}.toml"
    path.write_text(TOPOLOGY.format(name=name, endpoint=endpoint))
    with otpy.Node.from_toml(path) as running:
        keys = folder / "keys"
        keys.mkdir(mode=0o700)
        shutil.copy(keys_dir(name) / "server.key", keys)
        shutil.copy(keys_dir(name) / "client.key_secret", keys)
        yield running, endpoint, str(keys)


def vars_cli(remote, *args: str):
    _, endpoint, keys = remote
    return CliRunner().invoke(main, ["vars", *args, "--endpoint", endpoint, "--keys", keys])


def local_value(node, variable: str):
    result = CliRunner().invoke(main, ["vars", "get", variable, "--node", node.name])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_vars_list_and_get_over_tcp(remote):
    listed = vars_cli(remote, "list", "global", "--json")
    assert listed.exit_code == 0, listed.output
    values = {(e["scope"], e["name"]): e["value"] for e in json.loads(listed.stdout)}
    assert values[("global", "temperature")] == 0.7 and values[("global", "extra")] is False
    got = vars_cli(remote, "get", "global.temperature")
    assert got.exit_code == 0, got.output
    assert got.stdout == "0.7\n"
    entry = vars_cli(remote, "get", "global.temperature", "--json")
    assert json.loads(entry.stdout)["name"] == "temperature"


def test_vars_set_over_tcp_goes_through_the_node(remote):
    node = remote[0]
    result = vars_cli(remote, "set", "global.temperature", "1.5")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("set global.temperature 0.7 -> 1.5")
    assert local_value(node, "global.temperature") == 1.5
    started = vars_cli(remote, "set", "global", "extra=true", "--json")  # NAME=VALUE: the registry's space read too
    assert started.exit_code == 0, started.output
    actions = {(c["action"], c.get("child")) for c in json.loads(started.stdout)}
    assert ("start", "helper") in actions
    assert any(c.id == "helper" and c.pid for c in node.which_children())
    conflict = vars_cli(remote, "set", "global.temperature", "0.2", "--expected-version", "0")
    assert conflict.exit_code == 1
    assert "expected version 0, but the current version is 1" in conflict.stderr
    assert local_value(node, "global.temperature") == 1.5


def test_vars_explain_over_tcp(remote):
    result = vars_cli(remote, "explain", "helper", "temperature")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("helper.temperature = ") and "in scope 'global'" in result.stdout
    as_json = vars_cli(remote, "explain", "helper", "temperature", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["scope"] == "global"
    assert set(json.loads(as_json.stdout)) == {"child", "name", "scope", "value", "reason"}


def test_vars_refusals_over_tcp_are_the_registrys(remote):
    result = vars_cli(remote, "get", "global.nope")
    assert result.exit_code == 1
    assert stderr_of(result).startswith("otpy: refused (")


def test_vars_over_tcp_of_a_node_without_a_registry(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    spec = otpy.NodeSpec(name=unique_name("rnoreg"), control_tcp=endpoint,
                         root=otpy.SupervisorSpec(id="root", children=()))
    with otpy.Node(spec) as node:
        keys = tmp_path / "keys"
        keys.mkdir(mode=0o700)
        shutil.copy(keys_dir(node.name) / "server.key", keys)
        shutil.copy(keys_dir(node.name) / "client.key_secret", keys)
        result = vars_cli((node, endpoint, str(keys)), "list")
    assert result.exit_code == 1, result.output
    assert stderr_of(result) == (f"otpy: node at {endpoint} has no variable registry: declare [variables] (e.g. "
                             "[variables.global]) in its topology\n")


@pytest.mark.timeout(30)
def test_vars_over_tcp_with_a_key_the_node_does_not_know(remote, tmp_path):
    node, endpoint, _ = remote
    folder = tmp_path / "stranger"
    assert CliRunner().invoke(main, ["keys", "new", str(folder)]).exit_code == 0
    shutil.copy(keys_dir(node.name) / "server.key", folder)
    result = CliRunner().invoke(main, ["vars", "get", "global.temperature", "--endpoint", endpoint, "--keys",
                                       str(folder)])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert stderr_of(result).startswith("otpy: the registry did not answer: ")
    assert "curve/authorized/" in stderr_of(result) and len(stderr_of(result).splitlines()) == 1
