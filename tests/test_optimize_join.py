"""``otpy optimize --join STUDY --storage URL``: workers from another process (another host) add
trials to the study a leader runs, from what the leader recorded in it; they never apply, and
a file that is not the leader's, or a study no leader recorded, is refused."""

from __future__ import annotations

import json
import os
import subprocess

import optuna
import pytest

from tests.helpers import unique_name, wait_until
from tests.test_optimize_distributed import ROOT, command, run, study, topology_file

pytestmark = pytest.mark.timeout(120)


def test_a_joiner_adds_trials_to_the_leader_s_study_and_the_leader_counts_them(tmp_path, postgres_url):
    name = unique_name("join")
    path = topology_file(tmp_path, name, delay=1.5)  # 15 s alone: the joiner's processes start in time, even on a busy host
    leader = subprocess.Popen(command(path, "--storage", postgres_url, "--workers", "1", "--trials", "10", "--json"),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def recorded():
        try:
            return "otpy" in study(postgres_url, name).user_attrs
        except KeyError:
            return False

    try:
        wait_until(recorded, timeout=30, what="the leader's study")
        joiner = run("--join", name, "--storage", postgres_url, "--workers", "1", "--json", timeout=90)
        out, err = leader.communicate(timeout=90)
    finally:  # a failed wait never leaves the leader running (or a zombie of this worker)
        if leader.poll() is None:
            leader.kill()
        leader.wait()
    assert joiner.returncode == 0, joiner.stderr
    assert leader.returncode == 0, err
    joined = json.loads(joiner.stdout)
    assert joined["joined"] is True and joined["target"] == 10 and joined["ran"] >= 1
    [mine] = joined["workers"]
    assert joined["trials"] <= 10  # the leader's last ones may still run when the joiner's worker ends
    trials = study(postgres_url, name).trials
    assert len([t for t in trials if t.state.name in ("COMPLETE", "FAIL")]) == 10
    assert len([t for t in trials if t.user_attrs.get("worker") == mine["worker"]
                and t.state.name == "COMPLETE"]) == joined["ran"]
    document = json.loads(out)
    assert mine["worker"] in {entry["worker"] for entry in document["workers"]}  # the leader counts them
    assert document["trials"] == 10 and "applied" in document
    assert "the leader" in joiner.stderr and "applies" in joiner.stderr


def test_a_join_refuses_another_file_and_a_study_no_leader_recorded(tmp_path, postgres_url):
    name = unique_name("jref")
    path = topology_file(tmp_path, name, delay=0.0)
    leader = run(path, "--storage", postgres_url, "--workers", "1", "--trials", "2")
    assert leader.returncode == 0, leader.stderr
    other = tmp_path / "other.toml"
    other.write_text(open(path).read() + "\n# changed\n")
    changed = run(str(other), "--join", name, "--storage", postgres_url)
    assert changed.returncode == 2
    assert f"optimize --join: '{other}' is not the leader's topology" in changed.stderr
    done = run(path, "--join", name, "--storage", postgres_url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ran"] == 0  # the study had its trials: nothing to add
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    optuna.create_study(study_name="plain", storage=url)
    plain = run("--join", "plain", "--storage", postgres_url)
    assert plain.returncode == 1
    assert "study 'plain' in postgresql+psycopg://otpy:***@" in plain.stderr and "not started by" in plain.stderr
    assert os.path.exists(path)
