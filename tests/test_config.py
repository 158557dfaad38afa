"""Topology files: good files become specs with defaults filled; bad files name the key at fault."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from otpy.topology.load import (
    Topology,
    TopologyError,
    check_programs,
    load_topology,
    parse_topology,
    topology_json_schema,
)
from otpy.specs.model import ChildSpec, DynamicSupervisorSpec, SupervisorSpec, from_template

HERE = Path(__file__).parent
BAD_FILES = sorted((HERE / "topologies" / "bad").glob("*.toml"))
DOCS = HERE.parent / "docs" / "topology.md"
PROGRAM = 'program = "otpy.agent.program:Program"'
TEST_MODULES = ("otpy_test_agents", "pkg_b", "examples")  # the modules these tests make or import


@pytest.fixture(autouse=True)
def restore_imports(monkeypatch):
    """Whatever a test imports or puts on sys.path is undone after it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [name for name in sys.modules if name.startswith(TEST_MODULES)]:
        del sys.modules[name]


def expected_path(file: Path) -> str:
    first_line = file.read_text().splitlines()[0]
    assert first_line.startswith("# expect: "), f"{file.name} must start with '# expect: <key path>'"
    return first_line.removeprefix("# expect: ")


def test_bad_corpus_is_large_enough():
    assert len(BAD_FILES) >= 30


@pytest.mark.parametrize("file", BAD_FILES, ids=[f.stem for f in BAD_FILES])
def test_bad_file_names_the_key_at_fault(file):
    with pytest.raises(TopologyError) as caught:
        load_topology(file)
    error = caught.value
    assert error.problems
    assert str(error) == "\n".join(error.problems)
    assert all(problem.startswith(f"{file}: ") for problem in error.problems)
    assert expected_path(file) in str(error)


def test_message_format_matches_the_issue():
    text = f"""
[supervisor]
[[supervisor.children]]
id = "a"
{PROGRAM}
[[supervisor.children]]
id = "b"
{PROGRAM}
restart = "sometimes"
"""
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, source="topology.toml")
    assert str(caught.value) == (
        "topology.toml: supervisor.children[1].restart: got 'sometimes'; "
        "expected one of 'permanent', 'transient', 'temporary'"
    )


def test_unknown_key_lists_accepted_keys():
    with pytest.raises(TopologyError) as caught:
        parse_topology("[node]\nhost = 1\n[supervisor]\n", source="t.toml")
    assert caught.value.problems == ["t.toml: node.host: unknown key 'host'; accepted keys: 'control_tcp', 'name'"]


def test_every_type_problem_is_reported_at_once():
    text = f"""
[supervisor]
strategy = "x"
max_seconds = 0
[[supervisor.children]]
id = "a"
{PROGRAM}
shutdown = -1
"""
    with pytest.raises(TopologyError) as caught:
        parse_topology(text)
    paths = [problem.split(": ")[1] for problem in caught.value.problems]
    assert paths == ["supervisor.strategy", "supervisor.max_seconds", "supervisor.children[0].shutdown"]


def test_bad_toml_reports_line_and_column():
    with pytest.raises(TopologyError) as caught:
        parse_topology("[supervisor]\nstrategy one_for_one\n", source="t.toml")
    assert re.match(r"t\.toml: line 2, column \d+: invalid TOML: ", str(caught.value))


def test_missing_file_is_a_topology_error(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "nope.toml")


def test_defaults_come_from_the_specs():
    text = f"""
[supervisor]
[[supervisor.children]]
id = "worker"
{PROGRAM}
[[supervisor.children]]
id = "team"
type = "supervisor"
[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
"""
    root = parse_topology(text).node.root
    worker, team, pool = root.children
    assert (root.id, root.strategy, root.max_restarts, root.max_seconds) == ("root", "one_for_one", 3, 5)
    assert root.auto_shutdown == "never"
    assert worker == ChildSpec(id="worker", program="otpy.agent.program:Program")
    assert (worker.shutdown, worker.restart, worker.start_timeout, worker.ready) == (5.0, "permanent", 10.0, "exec")
    assert team == SupervisorSpec(id="team")
    assert team.shutdown == "infinity"
    assert pool == DynamicSupervisorSpec(id="pool")
    assert (pool.shutdown, pool.max_children, pool.max_restarts, pool.max_seconds) == ("infinity", None, 3, 5)


def test_issue_example_parses_into_nested_specs(tmp_path):
    text = f"""
[node]
name = "hello"
[supervisor]
id = "top"
strategy = "one_for_all"
max_restarts = 0
max_seconds = 1
auto_shutdown = "all_significant"
[[supervisor.children]]
id = "greeter"
{PROGRAM}
args = {{ greeting = "hi", nested = {{ n = 1 }} }}
restart = "transient"
shutdown = 2
significant = true
start_timeout = 1
[[supervisor.children]]
id = "legacy"
command = ["python3", "-u", "tools/legacy.py"]
env = {{ LOG_LEVEL = "info" }}
cwd = "tools"
ready = "notify"
shutdown = "brutal_kill"
[[supervisor.children]]
id = "team"
type = "supervisor"
strategy = "rest_for_one"
  [[supervisor.children.children]]
  id = "planner"
  {PROGRAM}
[[supervisor.children]]
id = "pool"
type = "dynamic_supervisor"
max_children = 100
  [supervisor.children.templates.echo]
  {PROGRAM}
  args = {{ prefix = ">" }}
  restart = "temporary"
"""
    node = parse_topology(text, base_dir=str(tmp_path)).node
    assert node.name == "hello"
    root = node.root
    assert (root.id, root.strategy, root.max_restarts, root.max_seconds) == ("top", "one_for_all", 0, 1)
    greeter, legacy, team, pool = root.children
    assert greeter.args == {"greeting": "hi", "nested": {"n": 1}}
    assert (greeter.restart, greeter.shutdown, greeter.significant, greeter.start_timeout) == (
        "transient", 2.0, True, 1.0,
    )
    assert isinstance(greeter.shutdown, float)
    assert legacy.command == ("python3", "-u", "tools/legacy.py")
    assert legacy.env == {"LOG_LEVEL": "info"}
    assert legacy.cwd == str(tmp_path / "tools")
    assert (legacy.ready, legacy.shutdown) == ("notify", "brutal_kill")
    assert isinstance(team, SupervisorSpec) and team.strategy == "rest_for_one"
    assert [child.id for child in team.children] == ["planner"]
    assert isinstance(pool, DynamicSupervisorSpec) and pool.max_children == 100
    echo = pool.templates["echo"]
    assert isinstance(echo, ChildSpec)
    assert (echo.program, echo.restart, echo.args) == ("otpy.agent.program:Program", "temporary", {"prefix": ">"})
    started = from_template(echo, "echo-1", {"text": "x"})
    assert (started.id, started.args) == ("echo-1", {"prefix": ">", "text": "x"})


def test_node_name_defaults_to_the_file_stem(tmp_path):
    file = tmp_path / "hello.toml"
    file.write_text(f'[supervisor]\n[[supervisor.children]]\nid = "a"\n{PROGRAM}\n')
    topology = load_topology(file)
    assert isinstance(topology, Topology)
    assert topology.node.name == "hello"
    assert topology.path == str(file)


def test_node_name_from_the_file_is_respected(tmp_path):
    file = tmp_path / "topology.toml"
    file.write_text('[node]\nname = "prod"\n[supervisor]\n')
    assert load_topology(file).node.name == "prod"


def test_a_file_stem_that_is_not_a_name_is_reported(tmp_path):
    file = tmp_path / "my topology.toml"
    file.write_text("[supervisor]\n")
    with pytest.raises(TopologyError, match=r"node\.name: got 'my topology'"):
        load_topology(file)


def test_relative_cwd_is_taken_from_the_file_folder(tmp_path):
    file = tmp_path / "conf" / "node.toml"
    file.parent.mkdir()
    file.write_text('[supervisor]\n[[supervisor.children]]\nid = "a"\ncommand = ["true"]\ncwd = "../work"\n')
    (tmp_path / "work").mkdir()  # validate checks that the folder exists
    (child,) = load_topology(file).node.root.children
    assert child.cwd == str(tmp_path / "work")
    assert os.path.isabs(child.cwd)


def test_raw_tables_are_kept_as_written():
    text = """
[supervisor]
[variables.global.temperature]
type = "float"
low = 0.0
high = 2.0
[pipelines.review]
steps = ["greeter", "critic"]
[optimizer]
trials = 20
"""
    topology = parse_topology(text)
    assert topology.raw_variables == {"global": {"temperature": {"type": "float", "low": 0.0, "high": 2.0}}}
    assert topology.raw_pipelines == {"review": {"steps": ["greeter", "critic"]}}
    assert topology.raw_optimizer == {"trials": 20}


def test_significant_child_is_accepted_where_otp_accepts_it():
    text = f"""
[supervisor]
auto_shutdown = "any_significant"
[[supervisor.children]]
id = "job"
{PROGRAM}
restart = "temporary"
significant = true
[[supervisor.children]]
id = "team"
type = "supervisor"
restart = "transient"
significant = true
"""
    job, team = parse_topology(text).node.root.children
    assert job.significant and team.significant


def test_programs_import_from_the_topology_folder(tmp_path):
    (tmp_path / "otpy_test_agents_a.py").write_text(
        "class Agent:\n    def setup(self, args, config):\n        pass\n\n    def forward(self, **inputs):\n"
        "        return inputs\n")
    file = tmp_path / "node.toml"
    file.write_text(
        '[supervisor]\n[[supervisor.children]]\nid = "pool"\ntype = "dynamic_supervisor"\n'
        '[supervisor.children.templates.echo]\nprogram = "otpy_test_agents_a:Agent"\n'
    )
    topology = load_topology(file)
    assert check_programs(topology) == []
    assert str(tmp_path) in topology.node.program_folders and str(tmp_path) not in sys.path


def test_loading_and_checking_leave_sys_path_as_it_was(tmp_path, monkeypatch):
    """Program folders travel with the node spec (``program_folders``), not through this
    process's ``sys.path``: loading a topology changes nothing for the rest of the process."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "otpy_test_agents_c.py").write_text("def agent(**inputs):\n    return inputs\n")
    file = tmp_path / "conf" / "node.toml"
    file.write_text('[supervisor]\n[[supervisor.children]]\nid = "a"\nprogram = "otpy_test_agents_c:agent"\n')
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    topology = load_topology(file, check_imports=True)
    assert sys.path == before
    assert topology.node.program_folders == (str(tmp_path), str(tmp_path / "conf"))
    assert "otpy_test_agents_c" not in sys.modules


def test_programs_import_from_the_current_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "pkg_b").mkdir(parents=True)
    (work / "pkg_b" / "__init__.py").write_text("")
    (work / "pkg_b" / "agents.py").write_text("def greet(**inputs):\n    return inputs\n")
    (tmp_path / "conf").mkdir()
    file = tmp_path / "conf" / "node.toml"
    file.write_text('[supervisor]\n[[supervisor.children]]\nid = "a"\nprogram = "pkg_b.agents:greet"\n')
    monkeypatch.chdir(work)
    assert load_topology(file).node.root.children[0].program == "pkg_b.agents:greet"


def test_import_problems_name_the_key_path():
    text = """
[supervisor]
[[supervisor.children]]
id = "team"
type = "supervisor"
  [[supervisor.children.children]]
  id = "a"
  program = "otpy_no_such_module_q:Agent"
  [[supervisor.children.children]]
  id = "b"
  program = "otpy.specs.model:DEFAULT_MAX_SECONDS"
"""
    topology = parse_topology(text, source="t.toml")
    assert check_programs(topology) == [
        "t.toml: supervisor.children[0].children[0].program: cannot import "
        "'otpy_no_such_module_q:Agent': No module named 'otpy_no_such_module_q'",
        "t.toml: supervisor.children[0].children[1].program: got 'otpy.specs.model:DEFAULT_MAX_SECONDS', "
        "of type 'int'; expected a Program class or a function",
    ]
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, source="t.toml", check_imports=True)
    assert len(caught.value.problems) == 2


def test_load_can_skip_imports(tmp_path):
    file = tmp_path / "node.toml"
    file.write_text('[supervisor]\n[[supervisor.children]]\nid = "a"\nprogram = "otpy_no_such_module_q:A"\n')
    assert load_topology(file, check_imports=False).node.root.children[0].program == "otpy_no_such_module_q:A"


def test_json_schema_describes_the_format():
    schema = topology_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"node", "logs", "supervisor", "variables", "constraints", "pipelines",
                                         "optimizer", "registry", "cluster"}
    assert schema["required"] == ["supervisor"]
    worker = schema["$defs"]["WorkerTable"]["properties"]
    assert worker["restart"]["enum"] == ["permanent", "transient", "temporary"]
    assert worker["shutdown"]["default"] == 5.0
    assert schema["$defs"]["SupervisorTable"]["properties"]["shutdown"]["default"] == "infinity"


def test_the_example_in_the_docs_is_valid():
    example = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.S)[1]
    topology = parse_topology(example, source=str(DOCS), check_imports=False)
    assert topology.node.name == "hello"
    assert [child.id for child in topology.node.root.children] == ["registry", "greeter", "legacy", "team", "pool"]


@pytest.mark.parametrize("file", sorted(f for f in (HERE.parent / "examples").glob("**/*.toml")
                                         if not f.stem.endswith("-broken")),  # invalid on purpose (docs/reload.md)
                         ids=lambda f: f.stem)
def test_example_topologies_load_with_their_programs(file, monkeypatch):
    monkeypatch.chdir(HERE.parent)
    topology = load_topology(file.relative_to(HERE.parent))
    assert topology.node.root.children


def test_declared_variables_put_the_registry_first_under_the_root():
    text = f"""
[supervisor]
[[supervisor.children]]
id = "a"
{PROGRAM}
[variables.global]
t = {{ type = "float", low = 0.0, high = 2.0, default = 1.0 }}
"""
    root = parse_topology(text).node.root
    assert [c.id for c in root.children] == ["registry", "a"]
    assert root.children[0].program == "otpy.variables.registry:Registry"
    assert root.children[0].args["parents"] == {"a": "root"}


def test_an_impossible_variable_is_a_topology_error_naming_the_key():
    text = """
[supervisor]
[variables.global]
t = { type = "integer", low = 0, high = 1, default = 5 }
"""
    with pytest.raises(TopologyError, match=r"variables\.global\.t\.default"):
        parse_topology(text)
