"""What ``otpy optimize --join`` checks before it adds workers (findings advC-3, -5, -6, -9, -12):
the leader's objective (metric, data), a study record written by another party, Ctrl-C in its
startup, a password in the URL's query, a leader gone."""

from __future__ import annotations

import json

import optuna
import pytest
from click.testing import CliRunner

from tests.helpers import unique_name, wait_until
from tests.test_optimize_distributed import run, topology_file

pytestmark = pytest.mark.timeout(120)


def _record(path: str, url: str, name: str, **changed) -> None:
    from otpy.optimize.live_system import OptimizerTable
    from otpy.optimize.workers import StudyRecord, study_definition, topology_digest
    from otpy.topology.load import load_topology

    definition = study_definition(OptimizerTable(load_topology(path))) | changed
    study = optuna.create_study(storage=url, study_name=name)
    StudyRecord(topology=path, digest=topology_digest(path), node=name, trials=3, seed=0, fixed={},
                leader="gone:1:aa", definition=definition).write(study)


def test_a_joiner_scoring_with_another_metric_is_refused(tmp_path):
    name, url = unique_name("obj"), f"sqlite:///{tmp_path / 's.db'}"
    path = topology_file(tmp_path, name, delay=0.0)
    _record(path, url, name, metric="tests.test_optimize_distributed_programs:exact@0123456789abcdef")
    joined = run("--join", name, "--storage", url)
    assert joined.returncode == 2, joined.stderr
    assert "optimize --join: this host's optimizer.metric differs from the leader's" in joined.stderr


def test_a_study_record_another_party_wrote_is_a_typed_error_naming_its_key(tmp_path):
    from otpy.optimize.optimizer import OptimizeError
    from otpy.optimize.workers import StudyRecord

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="evil")
    study.set_user_attr("otpy", {"foo": 1})
    with pytest.raises(OptimizeError, match="unknown key 'foo'"):
        StudyRecord.read(study)
    study.set_user_attr("otpy", {"topology": "/t", "digest": "d", "node": "n", "trials": "abc", "seed": 1,
                                 "fixed": {}, "leader": "x"})
    joined = run("--join", "evil", "--storage", url)
    assert joined.returncode == 1 and "Traceback" not in joined.stderr
    assert "optimize --join: study 'evil': its 'otpy' record: 'trials' is 'abc'; expected an integer >= 1" \
        in joined.stderr


def test_ctrl_c_in_a_join_s_startup_exits_130(monkeypatch):
    import otpy.optimize.study_storage
    from otpy.cli.optimize_cmd import optimize

    def interrupted(url):
        raise KeyboardInterrupt

    monkeypatch.setattr(otpy.optimize.study_storage, "checked_storage", interrupted)
    result = CliRunner().invoke(optimize, ["--join", "s", "--storage", "sqlite:///x.db"])
    assert result.exit_code == 130 and "optimize --join: interrupted" in result.output


def test_a_password_in_the_url_s_query_is_never_shown(tmp_path, postgres_url):
    name = unique_name("qpw")
    user, _, rest = postgres_url.partition("://")[2].partition("@")
    user, password = user.split(":")
    url = f"postgresql://{user}@{rest}?password={password}"
    leader = run(topology_file(tmp_path, name, delay=0.0), "--storage", url, "--workers", "1", "--trials", "1",
                 "--json")
    assert leader.returncode == 0, leader.stderr
    joined = run("--join", name, "--storage", url, "--json")
    assert joined.returncode == 0, joined.stderr
    shown = leader.stdout + leader.stderr + joined.stdout + joined.stderr
    assert password not in shown and "password=***" in shown
    assert json.loads(joined.stdout)["storage"].endswith("?password=***")


def test_a_joiner_sees_its_leader_gone_when_its_beat_stops(tmp_path):
    import threading

    from otpy.optimize.workers import BEAT_ATTR, LeaderWatch, beat_leader

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="beat")
    stop = threading.Event()
    beat_leader(study, "leader:1:aa", stop)
    wait_until(lambda: BEAT_ATTR in study.user_attrs, what="the first beat")
    watch = LeaderWatch(study, grace=0.3)
    assert watch.gone() is None
    stop.set()  # the leader killed: no beat any more
    assert wait_until(watch.gone, timeout=5, what="the leader seen gone") > 0.3
    study.set_user_attr(BEAT_ATTR, ["leader:1:aa", 99])  # a beat again: not gone
    assert watch.gone() is None


@pytest.mark.timeout(150)
def test_a_joiner_stops_when_its_leader_is_killed(tmp_path, postgres_url):
    import subprocess

    from tests.test_optimize_distributed import ROOT, command, study

    name = unique_name("k9l")
    path = topology_file(tmp_path, name, delay=1.0)
    leader = subprocess.Popen(command(path, "--storage", postgres_url, "--workers", "1", "--trials", "200"), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def beating():
        try:
            return "otpy_leader_beat" in study(postgres_url, name).user_attrs
        except KeyError:
            return False

    wait_until(beating, timeout=30, what="the leader's beat")
    joiner = subprocess.Popen(command("--join", name, "--storage", postgres_url), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: any(t.state.name == "COMPLETE" and t.user_attrs.get("worker", "").split(":")[-2]
                           not in (str(leader.pid),) for t in study(postgres_url, name).trials),
               timeout=60, what="a trial of the joiner's")
    leader.kill()  # advC-9: the joiner ran the rest for nobody, saying "the leader applies"
    leader.wait()
    out, err = joiner.communicate(timeout=90)
    assert joiner.returncode == 1, err
    assert f"optimize --join: the leader {socket_name(leader.pid)}" in err and "is gone" in err
    assert "applies the best" not in out


def socket_name(pid: int) -> str:
    import socket

    return f"{socket.gethostname()}:{pid}:"
