"""A program's ``on_config`` may refuse values it cannot run (``otpy.ConfigRefused``): it keeps
running its old ones, the node undoes the write (the previous values are stored again, and run
again by the programs that took the new ones), and the writer gets ``invalid`` naming the child
and the reason. Declared stays what runs."""

import json
import threading

import pytest
from click.testing import CliRunner

import otpy
from otpy.cli.vars import vars_group
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.timeout(60)

TOPOLOGY = """
[node]
name = "{name}"

[supervisor]

[[supervisor.children]]
id = "picky"
program = "tests.refusing_agents:Picky"

[[supervisor.children]]
id = "easy"
program = "tests.refusing_agents:Easy"

[variables.global]
k = {{ type = "integer", low = -5, high = 5, default = 2 }}
"""


@pytest.fixture
def node(tmp_path):
    name = unique_name("refuse")
    path = tmp_path / f"{name}.toml"
    path.write_text(TOPOLOGY.format(name=name))
    with otpy.Node.from_toml(path) as running:
        yield running


def test_a_refused_write_is_undone_and_every_program_runs_the_old_values(node):
    picky, easy = node.call("picky"), node.call("easy")
    result = node.set_variables("global", {"k": 0})
    assert result.outcome == "invalid", result
    assert "child 'picky' refused the new values: k: got 0; expected at least 1" in result.detail
    assert "the previous values are stored and run again" in result.detail
    stored = CliRunner().invoke(vars_group, ["get", "global.k", "--node", node.name])
    assert stored.output.strip() == "2", stored.output  # declared: what runs
    assert node.call("picky") == picky  # the same process, the old value
    assert node.call("easy") == easy  # it took 0 for a moment; it runs 2 again


def test_a_value_the_program_takes_is_stored_as_before(node):
    result = node.set_variables("global", {"k": 3})
    assert result.ok, result
    assert node.call("picky")["k"] == 3 and node.call("easy")["k"] == 3


def test_vars_set_says_who_refused_and_exits_non_zero(node):
    before = node.call("picky")
    result = CliRunner().invoke(vars_group, ["set", "--node", node.name, "--", "global.k", "-1"])
    assert result.exit_code != 0
    assert "child 'picky' refused the new values: k: got -1; expected at least 1" in result.output
    assert node.call("picky") == before


# --- refused before storing: check_config (a program says it before anything is stored) -----

LENIENT, STRICT = "tests.refusing_agents:Lenient", "tests.refusing_agents:Strict"
CHECKED = """
[node]
name = "{name}"

[supervisor]

[[supervisor.children]]
id = "checked"
program = "tests.refusing_agents:Checked"
args = {{ check_s = 0.3 }}

[[supervisor.children]]
id = "plain"
program = "tests.refusing_agents:NoConfig"

[[supervisor.children]]
id = "bound"
program = {{ variable = "global.prog" }}

[variables.global]
k = {{ type = "integer", low = -5, high = 5, default = 4 }}
prog = {{ type = "module", modules = ["{lenient}", "{strict}"], default = "{lenient}" }}
"""


@pytest.fixture
def checked(tmp_path):
    name = unique_name("check")
    path = tmp_path / f"{name}.toml"
    path.write_text(CHECKED.format(name=name, lenient=LENIENT, strict=STRICT))
    with otpy.Node.from_toml(path) as running:
        yield running


def vars_cli(node, *args):
    return CliRunner().invoke(vars_group, [*args[:1], "--node", node.name, *args[1:]])


def own_lines(output):
    """The command's lines, without the children's that the node forwards meanwhile ("[id] ...")."""
    return "\n".join(line for line in output.splitlines() if not line.startswith("["))


def stored(node, variable):
    got = vars_cli(node, "get", variable, "--json")
    assert got.exit_code == 0, got.output
    return json.loads(own_lines(got.output))


def running(node):
    """What every program child runs, with its pid and how often it was reconfigured."""
    return {child: node.call(child, timeout=10) for child in ("checked", "plain", "bound")}


def test_a_check_config_refusal_stores_nothing_and_touches_no_program(checked):
    """Before: the write was stored, then undone (a window in which readers saw it, and every
    program without on_config restarted twice). Now nothing is stored at any moment."""
    before = running(checked)
    result: list = []
    writer = threading.Thread(target=lambda: result.append(checked.set_variables("global", {"k": 0})))
    writer.start()
    seen = set()
    while writer.is_alive():  # polled during the write: the old value at every moment
        seen.add(own_lines(vars_cli(checked, "get", "global.k").output).strip())
    writer.join(30)
    assert seen == {"4"}, seen
    (outcome,) = result
    assert outcome.outcome == "invalid", outcome
    assert "child 'checked' refused the new values: k: got 0; expected at least 1" in outcome.detail
    assert "nothing was stored" in outcome.detail
    assert stored(checked, "global.k")["version"] == 0  # never written, not even undone
    assert running(checked) == before  # same pids, same values, no on_config ran


def test_a_bound_and_knob_write_the_new_target_refuses_stores_nothing(checked):
    """The make phase starts Strict for prog; asked before the commit, it refuses k=2: the
    replacement is undone (Lenient runs again, with k=4), nothing stored. Before: stored."""
    before = running(checked)
    assert before["bound"]["program"] == "Lenient"
    outcome = checked.set_variables("global", {"prog": STRICT, "k": 2})
    assert outcome.outcome == "invalid", outcome
    assert "child 'bound' refused the new values: k: got 2; Strict runs at least 3" in outcome.detail
    assert stored(checked, "global.prog")["value"] == LENIENT and stored(checked, "global.k")["value"] == 4
    after = running(checked)
    assert after["checked"] == before["checked"] and after["plain"] == before["plain"]
    # the make phase's replacement is replaced back (the path of a target that fails to start)
    assert {**after["bound"], "pid": 0} == {**before["bound"], "pid": 0}
    assert checked.set_variables("global", {"prog": STRICT, "k": 3}).ok  # one it runs is stored as before
    assert running(checked)["bound"]["program"] == "Strict"


def test_expected_version_goes_through_the_node_and_its_checks(checked):
    """Before: --expected-version wrote the registry directly: a refused value stored, exit 0."""
    before = running(checked)
    refused = vars_cli(checked, "set", "--expected-version", "0", "global.k", "0")
    assert refused.exit_code == 1, refused.output
    assert "child 'checked' refused the new values: k: got 0" in refused.output
    assert stored(checked, "global.k")["version"] == 0 and running(checked) == before
    lost = vars_cli(checked, "set", "--expected-version", "7", "global.k", "3")
    assert lost.exit_code == 1 and "expected version 7, but the current version is 0" in lost.output, lost.output
    won = vars_cli(checked, "set", "--expected-version", "0", "global.k", "3")
    assert won.exit_code == 0, won.output
    assert stored(checked, "global.k")["value"] == 3 and running(checked)["checked"]["k"] == 3


def test_a_dry_run_asks_the_programs_too(checked):
    before = running(checked)
    dry = vars_cli(checked, "set", "--dry-run", "global.k", "0")
    assert dry.exit_code == 1, dry.output
    assert "child 'checked' refused the new values: k: got 0; expected at least 1 (dry run" in dry.output
    assert vars_cli(checked, "set", "--dry-run", "global.k", "2").exit_code == 0
    assert stored(checked, "global.k")["version"] == 0 and running(checked) == before


MODULE_AGENT = """
[node]
name = "{name}"

[supervisor]

[[supervisor.children]]
id = "lm"
program = "tests.dspy_agents:LMAgent"

[[supervisor.children]]
id = "plain"
program = "tests.refusing_agents:NoConfig"

[variables.global]
k = {{ type = "integer", low = -5, high = 5, default = 4 }}
program_state = {{ type = "document", default = {{}}, max_bytes = 65536 }}
"""


def test_a_module_agent_refuses_a_bad_program_state_before_it_is_stored(tmp_path):
    pytest.importorskip("dspy")
    name = unique_name("checkdspy")
    path = tmp_path / f"{name}.toml"
    path.write_text(MODULE_AGENT.format(name=name))
    with otpy.Node.from_toml(path) as node:
        before = {child: node.call(child, {"question": "q"}, timeout=10)["pid"] for child in ("lm", "plain")}
        outcome = node.set_variables("global", {"program_state": {"nope": {"demos": []}}})
        assert outcome.outcome == "invalid", outcome
        assert "child 'lm' refused the new values" in outcome.detail and "no predictor 'nope'" in outcome.detail
        assert "nothing was stored" in outcome.detail
        assert stored(node, "global.program_state")["version"] == 0
        assert {child: node.call(child, {"question": "q"}, timeout=10)["pid"] for child in ("lm", "plain")} == before


# --- the post-commit undo (on_config refusals): honest, and a compare-and-set -----------------

UNDO = """
[node]
name = "{name}"

[supervisor]

[[supervisor.children]]
id = "picky"
program = "tests.refusing_agents:Picky"

[[supervisor.children]]
id = "other"
program = "tests.refusing_agents:{other}"
args = {{ slow_s = 1.5 }}

[variables.global]
k = {{ type = "integer", low = -5, high = 5, default = 2 }}
j = {{ type = "integer", low = 0, high = 9, default = 0 }}
"""


def undo_node(tmp_path, other):
    name = unique_name("undo")
    path = tmp_path / f"{name}.toml"
    path.write_text(UNDO.format(name=name, other=other))
    return otpy.Node.from_toml(path)


def test_a_child_that_refuses_the_undo_is_named_with_what_it_runs(tmp_path):
    """Before: "the previous values are stored and run again" while 'other' ran the refused 0."""
    with undo_node(tmp_path, "Stubborn") as node:
        outcome = node.set_variables("global", {"k": 0})
        assert outcome.outcome == "invalid", outcome
        assert "child 'picky' refused the new values" in outcome.detail
        assert "the previous values are stored and run again" not in outcome.detail, outcome.detail
        assert "child 'other' refused the previous values too (k: 2 no more): it runs the refused ones" \
            in outcome.detail, outcome.detail
        assert stored(node, "global.k")["value"] == 2 and node.call("other")["k"] == 0


def test_the_undo_keeps_a_value_written_meanwhile(tmp_path):
    """Before: the undo wrote the previous value over one a direct registry writer had stored
    (and been told was stored) while the refused write waited for its programs."""
    from otpy.variables.client import RegistryClient

    with undo_node(tmp_path, "Slow") as node:
        writer = threading.Thread(target=lambda: result.append(node.set_variables("global", {"k": 0})))
        result: list = []
        writer.start()
        wait_until(lambda: stored(node, "global.k")["value"] == 0, 10, "the refused write stored")
        caller = otpy.Caller(node.name)
        try:
            RegistryClient(caller).set("global", "k", 3)  # a direct write, inside the window
        finally:
            caller.close()
        writer.join(30)
        (outcome,) = result
        assert outcome.outcome == "invalid", outcome
        assert "another write came meanwhile, and is kept" in outcome.detail, outcome.detail
        assert stored(node, "global.k")["value"] == 3


def test_a_process_without_check_config_is_asked_once(node, monkeypatch):
    """ConfigCheck costs a round trip per program per write: a process that answered it has no
    check_config (``unchecked``) is not asked again; Picky and Easy have none."""
    from otpy.node import config_sync

    asked, ask = [], config_sync._check_one

    async def counted(context, node_name, child, overlay):
        asked.append(child)
        return await ask(context, node_name, child, overlay)

    monkeypatch.setattr(config_sync, "_check_one", counted)
    for k in (3, 4, 3):
        assert node.set_variables("global", {"k": k}).ok
    assert sorted(asked) == ["easy", "picky"], asked
