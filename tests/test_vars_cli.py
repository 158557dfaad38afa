"""`otpy vars set` goes through the node (the tree follows, then the value is stored) and prints
what changed; `--expected-version` stays the registry's compare-and-set and cannot set a bound
variable; `otpy status` shows each program child's program, binding and override (#13)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import otpy
from otpy.cli import vars as vars_cli
from otpy.cli.status_view import render_status, status_json
from otpy.cli.vars import change_line, vars_group
from otpy.wire.protocol import BoundInfo, Change, Outcome, Status, TreeEntry
from tests.helpers import unique_name

pytestmark = pytest.mark.timeout(60)

# The registry placed by hand, told that global.classifier is bound (no child of this tree runs
# it: the node's side of bound writes is not what these tests are about).
TOPOLOGY = """
[node]
name = "{name}"

[supervisor]

[[supervisor.children]]
id = "registry"
program = "otpy.variables.registry:Registry"
args = {{ bound = ["global.classifier"] }}

[[supervisor.children]]
id = "shows"
program = "tests.registry_agents:Shows"

[variables.global]
temperature = {{ type = "float", low = 0.0, high = 2.0, default = 1.0 }}
classifier = {{ type = "module", modules = ["pkg.a:KNN", "pkg.a:SVM"], default = "pkg.a:KNN" }}
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    name = unique_name("varscli")
    path = tmp_path_factory.mktemp("varscli") / f"{name}.toml"
    path.write_text(TOPOLOGY.format(name=name))
    with otpy.Node.from_toml(path) as running:
        yield running


def run(node, *args: str):
    return CliRunner().invoke(vars_group, [*args, "--node", node.name], catch_exceptions=False)


def value_of(node, variable: str):
    return json.loads(run(node, "get", variable).output)


def test_set_goes_through_the_node_and_prints_what_changed(node):
    before = value_of(node, "global.temperature")
    result = run(node, "set", "global.temperature", "0.5")
    assert result.exit_code == 0, result.output
    assert f"set global.temperature {json.dumps(before)} -> 0.5" in result.output.splitlines()
    assert value_of(node, "global.temperature") == 0.5


def test_a_bound_variable_is_set_through_the_node_not_refused(node):
    # the registry refuses a direct write of global.classifier (see the next test): this one
    # is accepted because the node writes it, reconciled
    result = run(node, "set", "global.classifier", "pkg.a:SVM")
    assert result.exit_code == 0, result.output
    assert value_of(node, "global.classifier") == "pkg.a:SVM"
    run(node, "set", "global.classifier", "pkg.a:KNN")


def test_expected_version_is_a_compare_and_set_through_the_node(node):
    """--expected-version goes through the node (adversary-17b finding 1: it wrote the registry
    directly, skipping the programs' checks), a bound variable too."""
    current = json.loads(run(node, "get", "global.classifier", "--json").output)["version"]
    stale = run(node, "set", "global.classifier", "pkg.a:SVM", "--expected-version", str(current + 7))
    assert stale.exit_code == 1, stale.output
    assert f"expected version {current + 7}, but the current version is {current}" in stale.output
    written = run(node, "set", "global.classifier", "pkg.a:SVM", "--expected-version", str(current))
    assert written.exit_code == 0, written.output
    assert value_of(node, "global.classifier") == "pkg.a:SVM"
    run(node, "set", "global.classifier", "pkg.a:KNN")
    current = json.loads(run(node, "get", "global.temperature", "--json").output)["version"]
    written = run(node, "set", "global.temperature", "0.75", "--expected-version", str(current))
    assert written.exit_code == 0 and written.output.startswith("set global.temperature "), written.output
    stale = run(node, "set", "global.temperature", "0.8", "--expected-version", str(current))
    assert stale.exit_code == 1 and "expected version" in stale.output


def test_dry_run_prints_the_plan_and_changes_nothing(node):
    before = value_of(node, "global.temperature")
    result = run(node, "set", "global.temperature", "0.25", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"set global.temperature {json.dumps(before)} -> 0.25",
                                          "(dry run: nothing changed)"]
    assert value_of(node, "global.temperature") == before
    refused = run(node, "set", "global.temperature", "7", "--dry-run")
    assert refused.exit_code == 1 and "got 7" in refused.output


def test_json_prints_the_changes(node):
    result = run(node, "set", "global.temperature", "1.5", "--json")
    assert result.exit_code == 0, result.output
    (change,) = json.loads(result.output)
    assert (change["action"], change["scope"], change["name"], change["after"]) == ("set", "global", "temperature", 1.5)


def test_a_refused_write_exits_1_naming_the_problem(node):
    result = run(node, "set", "global.temperature", "high")
    assert result.exit_code == 1 and "'high'" in result.output and "(invalid)" in result.output


def test_a_failed_start_exits_1_with_the_nodes_detail(monkeypatch):
    monkeypatch.setattr(vars_cli, "_declared", lambda *a: {})  # no node: the value's type is not asked
    detail = "pool/classifier: cannot import 'pkg.a:RF'; the old program keeps running and nothing was stored"
    monkeypatch.setattr(vars_cli, "_set_through_node", lambda *a: Outcome("start_failed", detail=detail))
    result = CliRunner().invoke(vars_group, ["set", "global.classifier", "pkg.a:RF"])
    assert result.exit_code == 1
    assert result.output.strip() == f"otpy: vars set global.classifier: {detail} (start_failed)"


def test_each_change_is_one_line(monkeypatch):
    monkeypatch.setattr(vars_cli, "_declared", lambda *a: {})  # no node: the value's type is not asked
    changes = [
        Change(action="set", scope="global", name="classifier", before="a:KNN", after="a:SVM"),
        Change(action="reconfigure", supervisor="pool", child="classifier", before="a:KNN", after="a:SVM", pid=123),
        Change(action="start", supervisor="pool", child="cache", after="a:Cache", pid=124),
        Change(action="stop", supervisor="pool", child="worker-3", before="a:W"),
    ]
    monkeypatch.setattr(vars_cli, "_set_through_node", lambda *a: Outcome("ok", changes=changes))
    result = CliRunner().invoke(vars_group, ["set", "global.classifier", "a:SVM"])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        'set global.classifier "a:KNN" -> "a:SVM"',
        "reconfigure pool/classifier a:KNN -> a:SVM (pid 123)",
        "start pool/cache a:Cache (pid 124)",
        "stop pool/worker-3 a:W",
    ]
    assert change_line(Change(action="start", child="top")) == "start top"
    same = change_line(Change(action="set", scope="pool", name="workers", before=1, after=1))
    assert same == "set pool.workers 1 -> 1 (unchanged)"


def tree() -> TreeEntry:
    long = "examples.tabular.steps:AVeryLongProgramNameThatDoesNotFit"
    return TreeEntry(id="root", kind="supervisor", state="running", pid=10, children=[
        TreeEntry(id="classifier", kind="worker", state="running", pid=11, program="a:SVM",
                  bound=BoundInfo("global.classifier", 3)),
        TreeEntry(id="cache", kind="worker", state="stopped", program="a:Cache", override=True),
        TreeEntry(id="long", kind="worker", state="running", pid=12, program=long),
    ])


def test_status_json_gives_program_bound_and_override_keeping_the_keys():
    report = json.loads(json.dumps(status_json(Status(0, node="n", pid=10, tree=tree()))))
    root = report["tree"]
    assert {"id", "kind", "state", "pid", "restarts", "uptime", "children"} <= set(root)
    classifier, cache, _ = root["children"]
    assert "children" not in classifier
    assert classifier["program"] == "a:SVM" and classifier["bound"] == {"variable": "global.classifier", "version": 3}
    assert (cache["override"], cache["bound"], classifier["override"]) == (True, None, False)
    assert root["program"] is None


def test_status_table_has_a_program_column_and_shows_the_override():
    lines = render_status(status_json(Status(0, node="n", pid=10, tree=tree()))).splitlines()
    assert "PROGRAM" in lines[1]
    classifier, cache, long = lines[3:]
    assert "a:SVM @global.classifier" in classifier
    assert "stopped (override)" in cache
    assert "NotFit" in long and "examples.tabular" in long and "…" not in long  # nothing cut: the column fits it
    start = lines[1].index("PROGRAM")
    assert all(line[start - 1] == " " for line in lines[2:])  # the column stays in place


def test_status_of_a_live_node_is_json(node):
    report = status_json(node.status())
    json.dumps(report)
    shows = next(child for child in report["tree"]["children"] if child["id"] == "shows")
    assert {"program", "bound", "override"} <= set(shows)


def test_a_long_id_widens_its_column_rather_than_running_into_kind():
    long_id = "manager.impute.MeanImputer-5f6b5c5b"
    tree = TreeEntry(id="root", kind="supervisor", state="running", pid=1, children=[
        TreeEntry(id="pool", kind="dynamic_supervisor", state="running", pid=1, children=[
            TreeEntry(id=long_id, kind="worker", state="running", pid=7)])])
    lines = render_status(status_json(Status(0, node="n", pid=1, tree=tree))).splitlines()
    row = next(line for line in lines if long_id in line)
    assert f"{long_id}  worker" in row
    assert lines[1].index("KIND") == row.index("worker")


def test_a_stored_write_with_late_programs_says_so_on_stderr(monkeypatch):
    late = "stored; 1 program(s) had not confirmed running it after 30 s: hangs"
    change = Change(action="set", scope="global", name="knob", before=0.5, after=0.7)
    monkeypatch.setattr(vars_cli, "_set_through_node", lambda *a: Outcome("ok", detail=late, changes=[change]))
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(vars_group, ["set", "global.knob", "0.7", *extra])
        assert result.exit_code == 0 and late in result.stderr and late not in result.stdout
