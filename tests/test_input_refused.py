"""Hostile input is refused before anything touches the file system or the wire.

Ids and node names are never paths (one rule: ``_specs.name_problem``); values that would pass
``validate`` but fail at start (NUL in paths, '=' in an env key, integers msgpack cannot encode,
durations asyncio cannot wait, ports that do not exist) are refused by the one value checker of
``_spec_rules``, at their key path in a topology file, and ``otpy validate`` exits 2 for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otpy.topology.load import TopologyError, load_topology, parse_topology
from otpy.specs.rules import ARGS_MAX_DEPTH, MAX_SECONDS, node_problems, spec_problems
from otpy.specs.model import NAME_PATTERN, ChildSpec, DynamicSupervisorSpec, NodeSpec, SupervisorSpec

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
HOSTILE_NAMES = ["../control", "../../x", "", ".", "..", "a/b", "a" * 65, "-x", "a\0b", "/abs", " a"]


def worker(child_id: str = "w", **fields) -> ChildSpec:
    return ChildSpec(id=child_id, command=("true",), **fields)


# --- 1. names are never paths -----------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_ids_are_refused_wherever_they_stand(name):
    as_child = spec_problems(SupervisorSpec(id="root", children=(worker(name),)))
    as_supervisor = spec_problems(SupervisorSpec(id="root", children=(SupervisorSpec(id=name),)))
    as_dynamic = spec_problems(DynamicSupervisorSpec(id=name))
    as_template = spec_problems(DynamicSupervisorSpec(id="pool", templates={name: worker("x")}))
    as_node = node_problems(NodeSpec(name=name, root=SupervisorSpec(id="root")))
    assert any(p.startswith(f"child {name!r}: id: got {name!r}; expected a name") for p in as_child), as_child
    assert any(p.startswith(f"supervisor {name!r}: id: got") for p in as_supervisor), as_supervisor
    assert any(p.startswith(f"dynamic supervisor {name!r}: id: got") for p in as_dynamic), as_dynamic
    assert any(p.startswith(f"dynamic supervisor 'pool': templates: got template name {name!r}")
               for p in as_template), as_template
    assert as_node and as_node[0].startswith(f"node name: got {name!r}"), as_node


def test_a_long_template_display_id_is_not_checked_as_a_name():
    """The message id ``owner.templates.name`` may exceed 64 chars: only the template name is a name."""
    pool = DynamicSupervisorSpec(id="p" * 64, templates={"t" * 64: worker("ignored")})
    assert spec_problems(SupervisorSpec(id="root", children=(pool,))) == []


@given(st.text(max_size=70))
@settings(max_examples=300, deadline=None)
def test_an_id_passes_exactly_when_it_matches_the_one_pattern(name):
    import re

    problems = spec_problems(worker(name))
    assert (problems == []) == bool(re.fullmatch(NAME_PATTERN, name)), problems


# --- 2. values that would fail at start, from Python ------------------------------------------


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("spec, expected", [
    (worker(env={"A": "x\0y"}), "child 'w': env.A: got"),
    (worker(env={"A=B": "x"}), "child 'w': env.\"A=B\": got key"),
    (worker(env={"": "x"}), "child 'w': env.\"\": got key"),
    (worker(env={"A\0": "x"}), "child 'w': env."),
    (ChildSpec(id="w", command=("true", "a\0b")), "child 'w': command[1]: got"),
    (ChildSpec(id="w", command=("tr\0ue",)), "child 'w': command[0]: got"),
    (worker(cwd="/tmp/\0x"), "child 'w': cwd: got"),
    (worker(cwd=""), "child 'w': cwd: got"),
    (ChildSpec(id="w", program="m:f\0"), "child 'w': program: got"),
    (ChildSpec(id="w", program="../m:f"), "child 'w': program: got"),
    (worker(args={"n": 2 ** 64}), "child 'w': args.n: got"),
    (worker(args={"n": [1, -(2 ** 63) - 1]}), "child 'w': args.n[1]: got"),
    (worker(args={"n": 2 ** 63}), "child 'w': args.n: got"),
    (worker(args={"deep": nested(ARGS_MAX_DEPTH + 5)}), "child 'w': args.deep"),
    (worker(args={1: "x"}), "child 'w': args: got key 1"),
    (worker(args={"o": object()}), "child 'w': args.o: got"),
    (worker(args={"s": "\ud800"}), "child 'w': args.s: got"),
    (worker(shutdown=1e29), "child 'w': shutdown: got 1e+29"),
    (worker(shutdown=float("nan")), "child 'w': shutdown: got nan"),
    (worker(shutdown="5"), "child 'w': shutdown: got '5'"),
    (worker(start_timeout=float(MAX_SECONDS + 1)), "child 'w': start_timeout: got"),
    (worker(start_timeout=float("inf")), "child 'w': start_timeout: got inf"),
    (worker(max_rss=float("inf")), "child 'w': max_rss: got inf"),
    (SupervisorSpec(id="s", max_seconds=10 ** 29), "supervisor 's': max_seconds: got"),
    (SupervisorSpec(id="s", max_seconds=1e29), "supervisor 's': max_seconds: got 1e+29"),
    (SupervisorSpec(id="s", max_restarts=10 ** 12), "supervisor 's': max_restarts: got"),
    (SupervisorSpec(id="s", shutdown=1e29), "supervisor 's': shutdown: got"),
    (DynamicSupervisorSpec(id="d", max_children=2 ** 64), "dynamic supervisor 'd': max_children: got"),
    (DynamicSupervisorSpec(id="d", templates={"t": worker("x", env={"A=": "1"})}),
     "child 'd.templates.t': env.\"A=\": got key"),
    (worker(restart="sometimes"), "child 'w': restart: got 'sometimes'; expected one of 'permanent'"),
    (worker(significant="yes"), "child 'w': significant: got 'yes'; expected true or false"),
    (SupervisorSpec(id="s", strategy="one_for_none"), "supervisor 's': strategy: got 'one_for_none'; expected one of"),
])
def test_values_that_fail_at_start_are_refused_naming_the_field(spec, expected):
    problems = spec_problems(spec)
    assert any(p.startswith(expected) for p in problems), problems


def test_plain_args_at_the_bounds_pass():
    args = {"big": 2 ** 63 - 1, "small": -(2 ** 63), "deep": nested(ARGS_MAX_DEPTH - 1), "f": float("nan"),
            "b": b"\0", "s": "nul \0 is fine in data", "t": (1, 2)}
    assert spec_problems(worker(args=args, shutdown=float(MAX_SECONDS), start_timeout=float(MAX_SECONDS))) == []


@pytest.mark.parametrize("endpoint, ok", [
    ("tcp://127.0.0.1:7400", True), ("tcp://*:7400", True), ("tcp://[::1]:7400", True),
    ("tcp://localhost:7400", True), ("tcp://lo:7400", True),
    ("tcp://127.0.0.1:99999", False), ("tcp://127.0.0.1:0", False), ("udp://127.0.0.1:7400", False),
    ("tcp://no-such-host.invalid:7400", False), ("tcp://127.0.0.1", False), ("ipc:///tmp/x", False),
    ("tcp://127.0.0.1:*", False),
])
def test_control_tcp_is_a_bindable_tcp_endpoint(endpoint, ok):
    problems = node_problems(NodeSpec(name="n", root=SupervisorSpec(id="root"), control_tcp=endpoint))
    assert (problems == []) == ok, problems
    if not ok:
        assert problems[0].startswith(f"node control_tcp: got {endpoint!r}")


# --- 2. the same values in a topology file, at their key paths ---------------------------------

CHILD = '[supervisor]\n[[supervisor.children]]\nid = "w"\n'
DEEP = "[" * (ARGS_MAX_DEPTH + 5) + "]" * (ARGS_MAX_DEPTH + 5)


@pytest.mark.parametrize("text, path", [
    (CHILD + 'command = ["true"]\nenv = { A = "x\\u0000y" }\n', "supervisor.children[0].env.A"),
    (CHILD + 'command = ["true"]\nenv = { "A=B" = "x" }\n', 'supervisor.children[0].env."A=B"'),
    (CHILD + 'command = ["true"]\nenv = { "" = "x" }\n', 'supervisor.children[0].env.""'),
    (CHILD + 'command = ["true", "a\\u0000b"]\n', "supervisor.children[0].command[1]"),
    (CHILD + 'command = ["true"]\ncwd = "x\\u0000y"\n', "supervisor.children[0].cwd"),
    (CHILD + 'command = ["true"]\ncwd = "~x\\u0000y"\n', "supervisor.children[0].cwd"),
    (CHILD + 'command = ["true"]\nargs = { n = 18446744073709551616 }\n', "supervisor.children[0].args.n"),
    (CHILD + f'command = ["true"]\nargs = {{ deep = {DEEP} }}\n', "supervisor.children[0].args.deep" + "[0]" * 6),
    (CHILD + 'command = ["true"]\nshutdown = 1e29\n', "supervisor.children[0].shutdown"),
    (CHILD + 'command = ["true"]\nstart_timeout = 1e300\n', "supervisor.children[0].start_timeout"),
    ('[supervisor]\nmax_seconds = 1e29\n', "supervisor.max_seconds"),
    ('[supervisor]\nmax_seconds = 100000000000000000\n', "supervisor.max_seconds"),
    ('[supervisor]\nmax_restarts = 100000000000000000\n', "supervisor.max_restarts"),
    ('[supervisor]\n[[supervisor.children]]\nid = "d"\ntype = "dynamic_supervisor"\n'
     'max_children = 100000000000000000\n', "supervisor.children[0].max_children"),
    ('[supervisor]\n[[supervisor.children]]\nid = "d"\ntype = "dynamic_supervisor"\n'
     '[supervisor.children.templates.t]\ncommand = ["true"]\nenv = { "A=B" = "x" }\n',
     'supervisor.children[0].templates.t.env."A=B"'),
    ('[node]\ncontrol_tcp = "tcp://127.0.0.1:99999"\n[supervisor]\n', "node.control_tcp"),
    ('[node]\ncontrol_tcp = "tcp://127.0.0.1:0"\n[supervisor]\n', "node.control_tcp"),
    ('[node]\ncontrol_tcp = "udp://127.0.0.1:7400"\n[supervisor]\n', "node.control_tcp"),
    ('[node]\ncontrol_tcp = "tcp://no-such-host.invalid:7400"\n[supervisor]\n', "node.control_tcp"),
    ('[node]\nname = ".."\n[supervisor]\n', "node.name"),
    ('[supervisor]\n[[supervisor.children]]\nid = "../control"\ncommand = ["true"]\n',
     "supervisor.children[0].id"),
])
def test_bad_values_in_a_file_are_refused_at_their_key_path(text, path):
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, source="t.toml")
    assert any(p.startswith(f"t.toml: {path}: got") for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("file_name", ["..toml", "...toml", ".toml"])
def test_a_node_named_by_a_dot_file_name_is_refused(tmp_path, file_name):
    file = tmp_path / file_name
    file.write_text("[supervisor]\n")
    with pytest.raises(TopologyError) as caught:
        load_topology(file)
    assert caught.value.problems[0].startswith(f"{file}: node.name: got "), caught.value.problems
    assert "(from the file name)" in caught.value.problems[0]


# --- otpy validate agrees, and makes nothing --------------------------------------------------


def validate(file: Path, runtime: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OTPY_RUNTIME_DIR": str(runtime)}
    return subprocess.run([sys.executable, "-m", "otpy", "validate", str(file)], capture_output=True,
                          text=True, env=env, cwd=file.parent, timeout=50)


@pytest.mark.parametrize("name, text, path", [
    ("env.toml", CHILD + 'command = ["true"]\nenv = { "A=B" = "x" }\n', 'supervisor.children[0].env."A=B"'),
    ("big.toml", CHILD + 'command = ["true"]\nargs = { n = 18446744073709551616 }\n',
     "supervisor.children[0].args.n"),
    ("port.toml", '[node]\ncontrol_tcp = "tcp://127.0.0.1:99999"\n[supervisor]\n', "node.control_tcp"),
    ("..toml", "[supervisor]\n", "node.name"),
])
def test_validate_exits_2_naming_the_key_and_makes_no_runtime_folder(tmp_path, name, text, path):
    file, runtime = tmp_path / name, tmp_path / "runtime"
    file.write_text(text)
    result = validate(file, runtime)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{file}: {path}: got" in result.stderr
    assert not runtime.exists()


# --- 3. a program's import runs in a child: it cannot end, freeze or change the caller ----------

BAD_IMPORTS = {
    "exits": "import os\nos._exit(0)\n",
    "killed": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "raises": "raise SystemExit(3)\n",
    "fine": "def agent(**inputs):\n    return inputs\n",
    "notcallable": "agent = 42\n",
}


def programs_file(folder: Path, modules: dict[str, str], name: str = "node.toml") -> Path:
    """A topology with one child per module, each module written next to it."""
    text = "[supervisor]\n"
    for module, source in modules.items():
        (folder / f"otpy_hard_{module}.py").write_text(source + "def agent(**inputs):\n    return inputs\n"
                                                       if module not in ("fine", "notcallable") else source)
        text += f'[[supervisor.children]]\nid = "{module}"\nprogram = "otpy_hard_{module}:agent"\n'
    file = folder / name
    file.write_text(text)
    return file


def test_each_program_that_ends_its_import_is_a_problem_and_the_others_are_still_checked(tmp_path):
    file = programs_file(tmp_path, BAD_IMPORTS)
    path_before, modules_before = list(sys.path), set(sys.modules)
    topology = load_topology(file, check_imports=False)
    from otpy.topology.load import check_programs

    problems = check_programs(topology)
    assert sys.path == path_before and not {m for m in sys.modules if m.startswith("otpy_hard_")} - modules_before
    assert problems == [
        f"{file}: supervisor.children[0].program: importing 'otpy_hard_exits:agent' ended the process "
        "(exit status 0)",
        f"{file}: supervisor.children[1].program: importing 'otpy_hard_killed:agent' ended the process "
        "(signal 9 (SIGKILL))",
        f"{file}: supervisor.children[2].program: cannot import 'otpy_hard_raises:agent': SystemExit: 3",
        f"{file}: supervisor.children[4].program: got 'otpy_hard_notcallable:agent', of type 'int'; "
        "expected a Program class or a function",
    ]


def test_a_program_whose_import_hangs_is_a_problem_after_the_timeout(tmp_path):
    file = programs_file(tmp_path, {"hangs": "import time\nwhile True:\n    time.sleep(1)\n", "fine": "x = 1\n"})
    from otpy.topology.load import check_programs

    problems = check_programs(load_topology(file, check_imports=False), timeout=2.0)
    assert problems[0] == (f"{file}: supervisor.children[0].program: importing 'otpy_hard_hangs:agent' "
                           "did not finish within 2 s")
    assert problems[1].startswith(f"{file}: supervisor.children[1].program: cannot import 'otpy_hard_fine:agent'")


def test_validate_of_a_program_that_exits_on_import_exits_2(tmp_path):
    file = programs_file(tmp_path, {"exits": BAD_IMPORTS["exits"]})
    result = validate(file, tmp_path / "runtime")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "supervisor.children[0].program: importing 'otpy_hard_exits:agent' ended the process" in result.stderr
    assert not (tmp_path / "runtime").exists()


# --- 4. the registry's file: never silently replaced, always private --------------------------

VARIABLES = {"global": {"t": {"type": "float", "low": 0.0, "high": 2.0, "default": 1.0}}}


def open_registry(path: Path):
    from otpy.variables.registry import Registry

    registry = Registry()
    registry.setup({"variables": VARIABLES, "path": str(path)}, {})
    return registry


def foreign_sqlite(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.commit()
    db.close()


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(b"this is not a database, it is a text file\n" * 50), "file is not a database"),
    (lambda p: p.write_bytes(b"SQLite format 3\0" + b"\xff" * 200), "expected otpy's registry"),
    (foreign_sqlite, "table 'value' has columns []"),
    (lambda p: p.mkdir(), "is not a regular file"),
], ids=["empty", "text", "corrupt-header", "foreign-sqlite", "folder"])
def test_an_existing_registry_file_that_is_not_otpys_is_refused_naming_it(tmp_path, make, why):
    from otpy.variables.registry import RegistryFileError

    path = tmp_path / "registry.db"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(RegistryFileError) as caught:
        open_registry(path)
    assert str(path) in str(caught.value) and why in str(caught.value), caught.value
    assert (path.read_bytes() if path.is_file() else None) == before  # left as it was


def test_a_registry_database_keeps_acknowledged_values_and_a_crashed_creation_is_redone(tmp_path):
    path = tmp_path / "registry.db"
    (tmp_path / "registry.db.new").write_bytes(b"")  # a creation killed half-way
    registry = open_registry(path)
    assert registry.forward(op="set", scope="global", name="t", value=1.5)["ok"]
    registry.teardown()
    assert open_registry(path).forward(op="get", scope="global", name="t")["value"] == 1.5
    assert not (tmp_path / "registry.db.new").exists()


def test_registry_files_are_private_whatever_the_umask(tmp_path):
    path = tmp_path / "registry.db"
    old = os.umask(0)
    try:
        registry = open_registry(path)
        assert registry.forward(op="set", scope="global", name="t", value=0.5)["ok"]
        modes = {name: oct(os.stat(tmp_path / name).st_mode & 0o777)
                 for name in ("registry.db", "registry.db-wal", "registry.db-shm")}
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(modes, "0o600")


def test_a_node_over_an_empty_registry_file_does_not_start_and_says_which_file(tmp_path):
    import otpy
    from otpy.host.runtime_dir import node_dir
    from tests.helpers import unique_name

    name = unique_name("emptyreg")
    planted = node_dir(name) / "registry.db"
    planted.write_bytes(b"")
    file = tmp_path / f"{name}.toml"
    file.write_text('[supervisor]\n[variables.global.t]\ntype = "float"\nlow = 0.0\nhigh = 2.0\ndefault = 1.0\n')
    with pytest.raises(otpy.NodeStartError) as caught:
        otpy.Node.from_toml(file).start()
    assert f"registry database {planted} is empty" in str(caught.value), caught.value
    assert planted.read_bytes() == b""


# --- start_child from a template: the caller's id and args are checked too ----------------------


@pytest.mark.parametrize("child_id, args, expected", [
    ("../control", {}, "child '../control': id: got '../control'"),
    ("ok", {"n": 2 ** 64}, "child 'ok': args.n: got"),
    ("ok", ["not", "a", "table"], "child 'ok': args: got"),
])
def test_a_child_from_a_template_is_checked_like_any_spec(child_id, args, expected):
    from otpy.specs.rules import template_start_problems

    pool = DynamicSupervisorSpec(id="pool", templates={"t": worker("x")})
    problems = template_start_problems(pool, "t", child_id, args)
    assert any(p.startswith(expected) for p in problems), problems
    assert template_start_problems(pool, "t", "fine", {"n": 1}) == []
    assert template_start_problems(pool, "missing", "../x", {}) == []  # the supervisor answers not_found


# --- the explicit rules are complete: what they pass, msgpack carries --------------------------

LEAVES = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
          | st.floats(allow_nan=False) | st.text(alphabet=st.characters(), max_size=5) | st.binary(max_size=4))
KEYS = st.one_of(st.text(max_size=4), st.integers(), st.none())
ARGS = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(KEYS, inner, max_size=3), max_leaves=12)


@given(st.dictionaries(st.text(max_size=4), ARGS, max_size=3),
       st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3))
@settings(max_examples=300, deadline=None)
def test_values_the_rules_pass_cross_the_wire(args, env):
    import msgspec

    from otpy.specs.rules import value_problems

    spec = worker(args=args, env=env)
    if value_problems(spec) == []:
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=ChildSpec).args == args
        assert all(key and "=" not in key and "\0" not in key + value for key, value in env.items())


# --- validate and start agree: what a file passes, the node's own check passes ------------------


def toml_value(value) -> str:
    """A TOML literal for the test's values (strings as JSON strings, which TOML reads alike)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value > 0 else "-inf") if abs(value) == float("inf") \
            else repr(value)
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{json.dumps(key)} = {toml_value(item)}" for key, item in value.items()) + "}"


TOML_LEAVES = (st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70) | st.floats()
               | st.text(max_size=4))
TOML_ARGS = st.recursive(TOML_LEAVES, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=10)
DURATIONS = st.integers(min_value=-1, max_value=2 ** 70) | st.floats()


@given(env=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
       args=st.dictionaries(st.text(max_size=4), TOML_ARGS, max_size=3),
       command=st.lists(st.text(max_size=4), min_size=1, max_size=3), cwd=st.text(max_size=4),
       shutdown=DURATIONS, start_timeout=DURATIONS, max_seconds=DURATIONS)
@settings(max_examples=300, deadline=None)
def test_a_file_that_validates_is_a_node_that_may_start(env, args, command, cwd, shutdown, start_timeout,
                                                       max_seconds):
    fields = {"env": env, "args": args, "command": command, "cwd": cwd, "shutdown": shutdown,
              "start_timeout": start_timeout}
    text = f"[supervisor]\nmax_seconds = {toml_value(max_seconds)}\n[[supervisor.children]]\nid = \"w\"\n"
    text += "".join(f"{key} = {toml_value(value)}\n" for key, value in fields.items())
    try:
        topology = parse_topology(text, source="t.toml")
    except TopologyError:
        return
    assert node_problems(topology.node) == []
