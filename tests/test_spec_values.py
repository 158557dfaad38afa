"""Values that ``validate`` passed and ``start`` could not use are refused by the value rules.

Each case failed at start before: a control endpoint on another machine's address, a spec
too big for the node->zygote datagram, an exec string over the kernel's limit, a missing
working folder or command, a start timeout of 1e-300 s, a program that is not a program.
"""

from __future__ import annotations

import pytest

from otpy.topology.load import TopologyError, parse_topology
from otpy.specs.rules import node_problems, spec_problems
from otpy.specs.model import ChildSpec, NodeSpec, SupervisorSpec

pytestmark = pytest.mark.timeout(60)


def node(control_tcp: str) -> NodeSpec:
    return NodeSpec(name="n", root=SupervisorSpec(id="root"), control_tcp=control_tcp)


@pytest.mark.parametrize("endpoint", ["tcp://8.8.8.8:47712", "tcp://[2001:db8::1]:47712", "tcp://192.0.2.1:7400"])
def test_a_control_endpoint_on_an_address_of_another_machine_is_refused(endpoint):
    problems = node_problems(node(endpoint))
    assert problems and "not an address of this machine" in problems[0], problems


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:7400", "tcp://[::1]:7400", "tcp://localhost:7400"])
def test_a_local_control_endpoint_passes(endpoint):
    assert node_problems(node(endpoint)) == []


def test_a_foreign_control_endpoint_in_a_file_is_refused_at_its_key():
    with pytest.raises(TopologyError) as caught:
        parse_topology('[node]\ncontrol_tcp = "tcp://8.8.8.8:47712"\n[supervisor]\n', source="t.toml")
    assert "node.control_tcp" in str(caught.value) and "not an address of this machine" in str(caught.value)


# --- what the zygote and exec can carry ---------------------------------------------------

CHILD = '[supervisor]\n[[supervisor.children]]\nid = "w"\n'


def worker(**fields) -> ChildSpec:
    return ChildSpec(id="w", **{"command": ("true",), **fields})


@pytest.mark.parametrize("spec, field", [
    (worker(program="m:f", command=None, args={"s": "x" * 215_000}), "args"),
    (worker(program="m:f", command=None, args={f"k{i}": i for i in range(40_000)}), "args"),
    (worker(command=("true", *["x" * 100_000] * 30)), "command"),
    (worker(program="m:f", command=None, env={f"K{i}": "v" * 100 for i in range(9_000)}), "env"),
])
def test_a_spec_too_big_for_the_zygote_datagram_is_refused_at_its_biggest_field(spec, field):
    problems = spec_problems(spec)
    assert len(problems) == 1 and problems[0].startswith(f"child 'w': {field}: got "), problems
    assert "131,072 bytes" in problems[0]


def test_a_spec_just_under_the_bound_passes():
    assert spec_problems(worker(program="m:f", command=None, args={"s": "x" * 120_000})) == []


@pytest.mark.parametrize("spec, field", [
    (worker(command=("true", "x" * 131_072)), "command[1]"),
    (worker(env={"A": "x" * 131_070}), "env.A"),
])
def test_an_exec_string_over_the_kernels_limit_is_refused(spec, field):
    problems = spec_problems(spec)
    assert problems and problems[0].startswith(f"child 'w': {field}: got ") and "MAX_ARG_STRLEN" in problems[0]


def test_exec_strings_at_the_kernels_limit_are_left_to_the_size_bound():
    """At 131,071 bytes a string is exec's limit; the whole spec is then over its own bound."""
    for spec in (worker(command=("true", "x" * 131_071)), worker(env={"A": "x" * 131_069})):
        problems = spec_problems(spec)
        assert len(problems) == 1 and "MAX_ARG_STRLEN" not in problems[0] and "datagram" in problems[0]


def test_a_big_value_in_a_file_is_refused_at_its_key_path():
    text = CHILD + f'program = "m:f"\nargs = {{ s = "{"x" * 215_000}" }}\n'
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, source="t.toml")
    assert "supervisor.children[0].args: got" in str(caught.value)


@pytest.mark.parametrize("timeout, ok", [(1e-300, False), (0.001, False), (0.01, True), (30, True)])
def test_start_timeout_has_a_sane_minimum(timeout, ok):
    problems = spec_problems(worker(start_timeout=timeout))
    assert (problems == []) == ok, problems


# --- messages never carry raw control or bidi characters ------------------------------------


def test_key_paths_escape_control_and_bidi_characters_as_toml_does():
    from otpy.specs.rules import toml_key

    assert toml_key('a\0b\nc\u202ed"e\\f\t') == '"a\\u0000b\\nc\\u202Ed\\"e\\\\f\\t"'
    assert toml_key("caf\u00e9") == '"caf\u00e9"' and toml_key("x_1-y") == "x_1-y"
    assert toml_key("\U000E0001\u200b") == '"\\U000E0001\\u200B"'


@pytest.mark.parametrize("text", [
    '[supervisor]\n[[supervisor.children]]\nid = "d"\ntype = "dynamic_supervisor"\n'
    '[supervisor.children.templates."a\\u0000b\\nc\\u202E"]\ncommand = ["true"]\n',
    '[supervisor]\n[[supervisor.children]]\nid = "w"\ncommand = ["true"]\nenv = { "A=\\u202E\\u0007" = "x" }\n',
    '[supervisor]\n[[supervisor.children]]\nid = "w"\ncommand = ["true"]\n"bad\\u001b[31m" = 1\n',
])
def test_a_problem_in_a_file_prints_no_raw_control_or_bidi_character(text):
    import unicodedata

    with pytest.raises(TopologyError) as caught:
        parse_topology(text, source="t.toml")
    message = str(caught.value)
    raw = [c for c in message if c != "\n" and unicodedata.category(c) in ("Cc", "Cf")]
    assert raw == [] and message.count("\n") == len(caught.value.problems) - 1, message


# --- socket paths within AF_UNIX's limit ------------------------------------------------------


def test_an_id_whose_agent_socket_path_is_too_long_is_refused_at_its_key_path(monkeypatch, tmp_path):
    monkeypatch.setenv("OTPY_RUNTIME_DIR", "/tmp/" + "r" * 30)
    long_id, short_id = "a" * 64, "b"
    text = ('[node]\nname = "n"\n[supervisor]\n[[supervisor.children]]\nid = "team"\ntype = "supervisor"\n'
            f'[[supervisor.children.children]]\nid = "{long_id}"\ncommand = ["true"]\n'
            f'[[supervisor.children.children]]\nid = "{short_id}"\ncommand = ["true"]\n')
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, source="t.toml")
    path = f"/tmp/{'r' * 30}/n/agents/{long_id}.sock"
    assert caught.value.problems == [
        f"t.toml: supervisor.children[0].children[0].id: got {long_id!r}: its socket {path} would be "
        f"{len(path)} bytes long; expected at most 107 (AF_UNIX): a shorter id or node name, or a shorter "
        "runtime folder (OTPY_RUNTIME_DIR)"]


def test_a_node_name_whose_sockets_are_too_long_is_refused(monkeypatch):
    monkeypatch.setenv("OTPY_RUNTIME_DIR", "/tmp/" + "r" * 40)
    with pytest.raises(TopologyError) as caught:
        parse_topology(f'[node]\nname = "{"n" * 64}"\n[supervisor]\n', source="t.toml")
    assert caught.value.problems[0].startswith("t.toml: node.name: got") and "AF_UNIX" in caught.value.problems[0]


def test_validate_and_start_agree_on_the_longest_socket_the_node_binds(monkeypatch):
    """The zygote's spare binds ``agents/.spare-<pid>.sock``, longer than ``registry-events.sock``:
    a name that fits the control sockets but not the spare's is refused by validate as by start."""
    from otpy.host.runtime_dir import node_path_problem

    root = "/tmp/" + "r" * 40
    monkeypatch.setenv("OTPY_RUNTIME_DIR", root)
    room = 107 - len(f"{root}//")  # bytes left for the node name and its socket's own path
    name = "n" * (room - len("registry-events.sock"))  # fits registry-events.sock exactly
    assert node_path_problem(name) is not None  # start refuses it: the spare's socket is longer
    with pytest.raises(TopologyError, match="AF_UNIX"):
        parse_topology(f'[node]\nname = "{name}"\n[supervisor]\n', source="t.toml")


def test_ids_within_the_socket_limit_pass(monkeypatch):
    monkeypatch.setenv("OTPY_RUNTIME_DIR", "/tmp/r")
    text = f'[node]\nname = "n"\n[supervisor]\n[[supervisor.children]]\nid = "{"a" * 64}"\ncommand = ["true"]\n'
    assert parse_topology(text, source="t.toml").node.root.children[0].id == "a" * 64


# --- what this machine lacks: checked by validate (load_topology) -------------------------------


def load(tmp_path, child: str):
    from otpy.topology.load import load_topology

    file = tmp_path / "node.toml"
    file.write_text('[supervisor]\n[[supervisor.children]]\nid = "w"\n' + child)
    return load_topology(file)


@pytest.mark.parametrize("child, key, why", [
    ('command = ["true"]\ncwd = "/no/such/folder"\n', "cwd", "which does not exist"),
    ('command = ["true"]\ncwd = "missing-relative"\n', "cwd", "which does not exist"),
    ('command = ["true"]\ncwd = "node.toml"\n', "cwd", "which is not a folder"),
    ('command = [" "]\n', "command[0]", "not found on PATH"),
    ('command = ["otpy-no-such-command"]\n', "command[0]", "not found on PATH"),
    ('command = ["true"]\nenv = { PATH = "/nonexistent" }\n', "command[0]", "not found on PATH"),
    ('command = ["./node.toml"]\n', "command[0]", "not found or not executable"),
    ('command = ["/no/such/program"]\n', "command[0]", "not found or not executable"),
])
def test_what_this_machine_lacks_is_a_problem_at_its_key_path(tmp_path, child, key, why):
    with pytest.raises(TopologyError) as caught:
        load(tmp_path, child)
    problem = caught.value.problems[0]
    assert f"supervisor.children[0].{key}: got" in problem and why in problem, problem


def test_what_this_machine_has_passes(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o700)
    (tmp_path / "sub").mkdir()
    load(tmp_path, 'command = ["./run.sh"]\ncwd = "."\n')
    load(tmp_path, 'command = ["../run.sh"]\ncwd = "sub"\n')
    load(tmp_path, f'command = ["run.sh"]\nenv = {{ PATH = "{tmp_path}" }}\n')
    load(tmp_path, 'command = ["sh", "-c", "true"]\ncwd = "sub"\n')
