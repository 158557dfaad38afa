"""``otpy optimize`` as an operator uses it: where the study lives (--storage, a durable default),
progress without carriage returns into a file, --apply checked before the search, a scratch
node's start failure in one line, the on_config warning, Ctrl-C, --json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from otpy.optimize.knob_check import programs_without_on_config
from otpy.optimize.live_system import spaces_of
from otpy.optimize.scratch import ChildOutput, start_failure
from otpy.topology.load import parse_topology
from tests.helpers import unique_name, wait_until
from tests.test_live_optimize import TOPOLOGY, TRIPLER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(120)
DOUBLER = "tests.optimize_agents:Doubler"
PICKY = "tests.optimize_agents:Picky"  # no on_config


def topology_file(tmp_path, name: str, doubler: str = DOUBLER) -> str:
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY.format(name=name, doubler=doubler, tripler=TRIPLER))
    return str(path)


def optimize(path: str, *args: str, env: dict | None = None, timeout: float = 110) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy", "optimize", path, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def study_trials(url: str, study: str) -> list:
    import optuna

    return optuna.load_study(study_name=study, storage=url).trials


def test_storage_url_holds_the_study_and_a_second_run_resumes_it(tmp_path):
    name = unique_name("store")
    path = topology_file(tmp_path, name)
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'x.db'}"
    (tmp_path / "elsewhere").mkdir()
    first = optimize(path, "--trials", "3", "--storage", url)
    assert first.returncode == 0, first.stderr
    assert f"study '{name}' in {url}" in first.stderr
    assert len(study_trials(url, name)) == 3
    second = optimize(path, "--trials", "5", "--storage", url)
    assert second.returncode == 0, second.stderr
    assert "after 5 trials" in second.stdout
    assert len(study_trials(url, name)) == 5  # 2 more: the 3 of the first run were kept
    assert "is not used" not in second.stderr
    seeded = optimize(path, "--trials", "5", "--seed", "8", "--storage", url)  # nothing to run: the seed is unused
    assert seeded.returncode == 0, seeded.stderr
    assert f"optimize: --seed 8 is not used: study '{name}' already has 5 finished trials, so no trial ran" \
        in seeded.stderr, seeded.stderr


def test_a_storage_that_is_not_a_url_is_a_usage_error_before_anything_runs(tmp_path):
    proc = optimize(topology_file(tmp_path, unique_name("badurl")), "--storage", "nowhere.db", timeout=60)
    assert proc.returncode == 2 and "--storage: got 'nowhere.db'" in proc.stderr, proc.stderr


def test_the_default_storage_is_a_durable_file_printed_at_start_outside_the_runtime_folder(tmp_path):
    name = unique_name("durable")
    data = tmp_path / "data"
    proc = optimize(topology_file(tmp_path, name), "--trials", "2", env={"XDG_DATA_HOME": str(data)})
    assert proc.returncode == 0, proc.stderr
    db = data / "otpy" / name / "optuna.db"
    assert f"optimize: study '{name}' in sqlite:///{db}" in proc.stderr.splitlines()
    assert db.exists() and len(study_trials(f"sqlite:///{db}", name)) == 2
    assert not str(db).startswith(os.environ["OTPY_RUNTIME_DIR"])
    own = optimize(topology_file(tmp_path, name), "--trials", "2", env={"OTPY_DATA_DIR": str(tmp_path / "own")})
    assert f"sqlite:///{tmp_path / 'own' / name / 'optuna.db'}" in own.stderr, own.stderr


def test_progress_into_a_file_is_plain_lines_without_carriage_returns(tmp_path):
    proc = optimize(topology_file(tmp_path, unique_name("plain")), "--trials", "3")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert [line for line in proc.stderr.splitlines() if line.startswith("trial ")][-1].startswith("trial 3/3: ")


def test_apply_with_no_node_running_fails_before_any_trial(tmp_path):
    name = unique_name("noapply")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    started = time.monotonic()
    proc = optimize(topology_file(tmp_path, name), "--apply", "--storage", url, timeout=60)
    assert time.monotonic() - started < 30  # no search ran (a loose bound that catches one)
    assert proc.returncode == 1, proc.stderr
    assert f"node {name!r} is not running; start it with `otpy start" in proc.stderr
    assert "trial " not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "x.db").exists()  # not even the study was opened


def test_apply_checks_the_node_before_importing_any_program(tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "marking_agents.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nfrom tests.optimize_agents import Doubler\n")
    name = unique_name("noimport")
    proc = optimize(topology_file(tmp_path, name, doubler="marking_agents:Doubler"), "--apply", timeout=60)
    assert proc.returncode == 1 and f"node {name!r} is not running" in proc.stderr, proc.stderr
    assert not marker.exists()  # the check came first: no program was imported (it takes seconds)


def test_a_scratch_name_taken_by_a_running_node_says_so_and_how_to_free_it(tmp_path):
    import otpy

    name = unique_name("taken")
    squatter = otpy.Node.from_spec(otpy.SupervisorSpec(id="root"), name=f"{name}-optimize").start()
    try:
        proc = optimize(topology_file(tmp_path, name), "--trials", "1", "--storage",
                        f"sqlite:///{tmp_path / 'x.db'}", timeout=60)
        assert squatter.which_children("root") == []  # untouched, still answering
    finally:
        squatter.stop()
    assert proc.returncode == 1, proc.stderr
    assert f"the scratch node's name {name + '-optimize'!r} is taken by a running node" in proc.stderr, proc.stderr
    assert f"`otpy stop --node {name}-optimize`" in proc.stderr and "to watch it start" not in proc.stderr


def test_a_sqlite_storage_in_a_missing_folder_is_a_usage_error_naming_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}"
    proc = optimize(topology_file(tmp_path, unique_name("nodir")), "--storage", url, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"folder {str(tmp_path / 'missing' / 'dir')!r} does not exist" in proc.stderr, proc.stderr


def test_the_study_store_is_private_whatever_the_umask(tmp_path, monkeypatch):
    from otpy.optimize.study_storage import default_storage

    data = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    old = os.umask(0o022)
    try:
        url = default_storage("priv")
    finally:
        os.umask(old)
    db = data / "otpy" / "priv" / "optuna.db"
    assert url == f"sqlite:///{db}"
    assert [oct(os.stat(p).st_mode & 0o777) for p in (data / "otpy", db.parent, db)] == ["0o700", "0o700", "0o600"]


def test_a_new_storage_file_is_created_private_and_an_existing_one_is_left_as_it_is(tmp_path):
    from otpy.optimize.study_storage import checked_storage

    old = os.umask(0o022)
    try:
        checked_storage(f"sqlite:///{tmp_path / 'new.db'}")
        (tmp_path / "mine.db").touch(mode=0o640)
        checked_storage(f"sqlite:///{tmp_path / 'mine.db'}")
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "new.db").st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "mine.db").st_mode & 0o777) == "0o640"


def test_a_symlinked_study_folder_or_file_is_refused_in_one_line(tmp_path, monkeypatch):
    from otpy.optimize.optimizer import OptimizeError
    from otpy.optimize.study_storage import default_storage

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("OTPY_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OptimizeError, match="symlink"):
        default_storage("linked")
    (tmp_path / "data" / "filed").mkdir()
    (tmp_path / "data" / "filed" / "optuna.db").symlink_to(tmp_path / "elsewhere" / "x.db")
    with pytest.raises(OptimizeError, match="symlink") as refused:
        default_storage("filed")
    assert "\n" not in str(refused.value) and not (tmp_path / "elsewhere" / "x.db").exists()


def test_a_scratch_node_that_cannot_start_is_one_line_with_the_childs_last_output(tmp_path):
    (tmp_path / "broken_agents.py").write_text(
        "import otpy\n\nclass Broken(otpy.Program):\n    def setup(self, args, config):\n"
        "        print('loading weights from /nowhere', flush=True)\n        raise RuntimeError('no weights')\n\n"
        "    def on_config(self, config):\n        pass\n")
    path = topology_file(tmp_path, unique_name("nostart"), doubler="broken_agents:Broken")
    proc = optimize(path, "--trials", "2", timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if not line.startswith("optimize: study ")]
    assert "did not start" in line and "solver-1" in line and "RuntimeError: no weights" in line, line
    assert f"run `otpy start {path}`" in line


def test_the_start_failure_quotes_the_last_lines_of_the_child_it_names():
    output = ChildOutput(size=2)
    for number in range(5):
        output("manager", "err", f"line {number}")
    output("other", "out", "unrelated")
    line = start_failure("n-optimize", "t.toml", "failed to start child 'manager': setup raised", output)
    assert line == ("the scratch node 'n-optimize' did not start: failed to start child 'manager': setup raised; "
                    "last output of 'manager': line 3 | line 4; run `otpy start t.toml` to watch it start "
                    "with its output")


def test_a_program_without_on_config_is_warned_about_before_the_search_and_one_with_it_is_not(tmp_path):
    warned = optimize(topology_file(tmp_path, unique_name("noconf"), doubler=PICKY), "--trials", "1")
    assert warned.returncode == 0, warned.stderr
    [warning] = [line for line in warned.stderr.splitlines() if "has no on_config" in line]
    assert PICKY in warning and "pool.bias" in warning and "define on_config(self, config)" in warning
    assert warned.stderr.index("has no on_config") < warned.stderr.index("trial 1/1")  # before the search
    quiet = optimize(topology_file(tmp_path, unique_name("conf")), "--trials", "1")
    assert quiet.returncode == 0, quiet.stderr
    assert "on_config" not in quiet.stderr


def test_the_knob_check_skips_bound_variables_and_children_out_of_the_knobs_scope():
    name = unique_name("knobs")
    topo = parse_topology(TOPOLOGY.format(name=name, doubler=PICKY, tripler=TRIPLER), check_imports=True)
    [restarted] = programs_without_on_config(topo.node.root, spaces_of(topo))
    assert (restarted.child, restarted.program, restarted.knobs) == ("solver", PICKY, ("pool.bias",))
    # global.solver is bound (it decides the program): changing it is a reconfigure, not a knob
    only_bound = parse_topology(TOPOLOGY.format(name=name, doubler=PICKY, tripler=TRIPLER).replace(
        '[variables.pool]\nbias = { type = "float", low = -1.0, high = 1.0, default = 0.5 }\n', ""),
        check_imports=True)
    assert programs_without_on_config(only_bound.node.root, spaces_of(only_bound)) == []


SLOW_METRIC = """
import os, time

def exact(example, prediction):
    if os.path.exists({flag!r}):  # from then on every score waits: Ctrl-C lands inside a trial
        open({inside!r}, "w").close()
        time.sleep(60)
    return -abs(prediction["y"] - example.label)
"""


def test_ctrl_c_marks_the_trial_in_progress_failed_and_leaves_none_running(tmp_path):
    name = unique_name("sigint")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    flag, inside, log = tmp_path / "slow", tmp_path / "inside", tmp_path / "stderr.txt"
    (tmp_path / "slow_metric.py").write_text(SLOW_METRIC.format(flag=str(flag), inside=str(inside)))
    path = topology_file(tmp_path, name)
    with open(path) as file:
        text = file.read().replace("tests.optimize_agents:exact", "slow_metric:exact")
    with open(path, "w") as file:
        file.write(text)
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "otpy", "optimize", path, "--trials", "1000", "--storage", url],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        try:
            wait_until(lambda: "trial 1/" in log.read_text(), timeout=60, what="a first trial")
            flag.touch()
            wait_until(inside.exists, timeout=30, what="a trial scoring")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "interrupted" in log.read_text() and "Traceback" not in log.read_text(), log.read_text()
    from optuna.trial import TrialState

    trials = study_trials(url, name)
    assert [t for t in trials if t.state == TrialState.RUNNING] == []
    assert trials[-1].state == TrialState.FAIL and trials[-1].user_attrs.get("failed") == "interrupted"


def test_json_is_one_document_with_scores_trials_config_plan_and_applied(tmp_path):
    name = unique_name("json")
    proc = optimize(topology_file(tmp_path, name), "--trials", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["trials"] == 3 and document["study"] == name
    assert isinstance(document["train_score"], float) and isinstance(document["val_score"], float)
    assert set(document["config"]) == {"global", "pool"}
    assert document["plan"]["against"] == "defaults" and document["applied"] is None
    assert all("line" in change and "action" in change for change in document["plan"]["changes"])


def test_json_and_storage_are_refused_with_watch(tmp_path):
    proc = optimize(topology_file(tmp_path, unique_name("watchjson")), "--watch", "--every", "1", "--json",
                    timeout=60)
    assert proc.returncode == 2 and "--json is for one search" in proc.stderr, proc.stderr


def test_on_a_terminal_the_progress_is_optunas_bar_not_lines(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's width for the bar
    try:
        proc = subprocess.Popen([sys.executable, "-m", "otpy", "optimize", topology_file(tmp_path, unique_name("tty")),
                                 "--trials", "3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=terminal, text=True)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            shown += chunk
        proc.communicate(timeout=110)
    finally:
        os.close(master)
    assert proc.returncode == 0, shown
    text = shown.decode(errors="replace")
    assert "3/3" in text and "Best trial" in text, text  # tqdm's bar, as optuna draws it
    assert "trial 3/3: " not in text


def test_json_with_apply_on_a_running_node_holds_the_plan_and_what_was_applied(tmp_path):
    import otpy

    name = unique_name("jsonapply")
    path = topology_file(tmp_path, name)
    with otpy.Node(parse_topology(open(path).read(), check_imports=True).node):
        proc = optimize(path, "--trials", "6", "--apply", "--json")
        assert proc.returncode == 0, proc.stderr
        document = json.loads(proc.stdout)
        assert document["plan"]["against"] == "node" and document["plan"]["node"] == name
        applied = {change["action"] for change in document["applied"]}
        assert applied == {"set", "reconfigure"}, document["applied"]
        again = json.loads(optimize(path, "--trials", "6", "--apply", "--json").stdout)
        assert again["plan"]["changes"] == [] and again["applied"] is None


@pytest.mark.parametrize("option, value", [("--trials", "0"), ("--sample", "0"), ("--every", "-1"),
                                           ("--rounds", "0"), ("--margin", "-0.5"), ("--interval", "0")])
def test_numeric_options_are_checked_by_their_type(tmp_path, option, value):
    proc = optimize(topology_file(tmp_path, unique_name("numbers")), "--watch", option, value, timeout=60)
    assert proc.returncode == 2 and f"Invalid value for '{option}'" in proc.stderr, proc.stderr


def test_the_watch_loop_warns_about_a_program_without_on_config_too(tmp_path):
    import otpy

    name = unique_name("watchconf")
    # Another node running (as in a full test run): the refusal names it, "(running: ...)".
    other = otpy.Node.from_spec(otpy.SupervisorSpec(id="root"), name=unique_name("bystander")).start()
    try:
        proc = optimize(topology_file(tmp_path, name, doubler=PICKY), "--watch", "--every", "1",
                        "--rounds", "1", timeout=60)
    finally:
        other.stop()
    assert proc.returncode == 1, proc.stderr  # no node: it ends there
    assert f"no node {name!r} is running" in proc.stderr and "; start it with `otpy start" in proc.stderr
    assert f"program {PICKY} (child 'solver') has no on_config" in proc.stderr


BAD = "tests.optimize_bad_data:"


@pytest.mark.parametrize("key, target, message", [
    ("dataset", BAD + "missing", "optimizer.dataset: cannot import 'tests.optimize_bad_data:missing': ImportError"),
    ("dataset", "no_such_module:data", "optimizer.dataset: cannot import 'no_such_module:data': "
                                       "ModuleNotFoundError"),
    ("dataset", BAD + "raises", "reading it raised RuntimeError: the data file is gone"),
    ("dataset", BAD + "NOT_A_LIST", "got int 5; expected a list of examples, or a function returning one"),
    ("dataset", BAD + "EMPTY", "optimizer.dataset ('tests.optimize_bad_data:EMPTY'): no examples"),
    ("valset", BAD + "not_examples", "optimizer.valset ('tests.optimize_bad_data:not_examples'): item 1: an example "
                                     "is an otpy.Example or a mapping with 'inputs' (and 'label'); got 'x=2'"),
    ("dataset", BAD + "inputs_not_a_mapping", "item 0: an example's 'inputs' is a mapping"),
    ("dataset", BAD + "half_read", "reading it raised OSError: the stream broke"),
    ("metric", BAD + "NOT_CALLABLE", "optimizer.metric ('tests.optimize_bad_data:NOT_CALLABLE'): got str 'exact'; "
                                     "expected a function"),
])
def test_a_bad_dataset_or_metric_is_one_usage_error_naming_it(key, target, message):
    from otpy.optimize.live_system import OptimizeError, OptimizerTable

    default = {"dataset": "tests.optimize_agents:dataset", "valset": "tests.optimize_agents:validation",
               "metric": "tests.optimize_agents:exact"}[key]
    text = TOPOLOGY.format(name="bad", doubler=DOUBLER, tripler=TRIPLER).replace(default, target)
    with pytest.raises(OptimizeError, match=None) as raised:
        OptimizerTable(parse_topology(text, check_imports=True))
    assert raised.value.usage and message in str(raised.value), str(raised.value)


def test_a_dataset_of_mappings_is_read_as_examples(tmp_path):
    from otpy.optimize.live_system import OptimizerTable

    text = TOPOLOGY.format(name="maps", doubler=DOUBLER, tripler=TRIPLER).replace(
        "tests.optimize_agents:dataset", BAD + "mappings")
    table = OptimizerTable(parse_topology(text, check_imports=True))
    assert [example.inputs["x"] for example in table.trainset] == [1.0, 2.0, 3.0]


def test_otpy_optimize_says_a_bad_dataset_in_one_line_and_exits_2(tmp_path):
    path = topology_file(tmp_path, unique_name("baddata"))
    with open(path) as file:
        text = file.read().replace("tests.optimize_agents:dataset", BAD + "raises")
    with open(path, "w") as file:
        file.write(text)
    proc = optimize(path, "--trials", "1", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == ("optimize: optimizer.dataset ('tests.optimize_bad_data:raises'): reading it raised "
                           "RuntimeError: the data file is gone\n"), proc.stderr


SLOW_IMPORT = """
import os, time

open({inside!r}, "w").close()  # importing: now is the moment to press Ctrl-C
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # an import that takes long (dspy takes seconds)
    time.sleep(0.01)

from tests.optimize_agents import Doubler
"""


def test_ctrl_c_while_the_programs_are_imported_exits_130_in_one_line(tmp_path):
    inside = tmp_path / "inside"
    (tmp_path / "slow_programs.py").write_text(SLOW_IMPORT.format(inside=str(inside)))
    path = topology_file(tmp_path, unique_name("sigimport"), doubler="slow_programs:Doubler")
    proc = subprocess.Popen([sys.executable, "-m", "otpy", "optimize", path, "--trials", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(inside.exists, timeout=60, what="the programs' import")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err == "optimize: interrupted\n" and out == "", err
