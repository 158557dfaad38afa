"""Distributed optimization when things go wrong (findings advC-1, -2, -7, -11): the study's
database restarted mid-study, workers of two hosts with the same host name and PIDs, a resumed
study's counts, a trial nobody will run."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import unique_name, wait_until
from tests.test_optimize_distributed import ROOT, command, states, topology_file

pytestmark = pytest.mark.timeout(150)


def test_a_database_restart_mid_study_is_waited_for_and_no_trial_stays_running(tmp_path):
    from tests.postgres_server import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        url, name = server.url(), unique_name("dbr")
        path = topology_file(tmp_path, name, delay=1.0)
        log = tmp_path / "err.txt"
        with open(log, "w") as err_file:
            leader = subprocess.Popen(command(path, "--storage", url, "--workers", "2", "--trials", "10"), cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=err_file, text=True)

        def complete() -> int:
            assert leader.poll() is None, log.read_text()
            try:
                return states(url, name).get("COMPLETE", 0)
            except Exception:  # the study not made yet
                return 0

        wait_until(lambda: complete() >= 3, timeout=60, what="three trials done")
        server.pause()  # a crash: every connection lost, trials in flight cannot be stored
        wait_until(lambda: log.read_text().count("the study's database went away") >= 2, timeout=30,
                   what="both workers waiting for the database")
        server.resume()
        assert leader.wait(timeout=120) == 0, log.read_text()
        err = log.read_text()
        assert "Traceback" not in err, err
        assert "the study's database is back" in err
        counts = states(url, name)
        assert counts.get("RUNNING", 0) == 0 and counts["COMPLETE"] + counts.get("FAIL", 0) >= 10, counts
    finally:
        server.stop()


def test_worker_names_differ_even_for_the_same_host_and_pid():
    from otpy.optimize.workers import worker_name, worker_pid

    first, second = worker_name(7), worker_name(7)  # two hosts' workers, same host name, same PID (advC-2)
    assert first != second and worker_pid(first) == worker_pid(second) == 7


def test_counts_are_this_run_s_and_a_trial_nobody_runs_is_not_waited_for(tmp_path):
    import optuna

    from otpy.optimize.workers import started_trials, wait_for_study, worker_counts

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}", study_name="c")
    earlier = study.ask()
    earlier.set_user_attr("worker", "h:1:aa")
    study.tell(earlier, 1.0)
    study.enqueue_trial({})  # WAITING: no worker took it yet
    old = started_trials(study)
    now = study.ask()  # takes the WAITING one
    now.set_user_attr("worker", "h:2:bb")
    study.tell(now, 2.0)
    assert worker_counts(study, old) == [{"worker": "h:2:bb", "trials": 1, "complete": 1, "failed": 0}]
    study.enqueue_trial({})
    wait_for_study(study, 5, print, poll=0.01)  # only a WAITING trial: returns (advC-11), never hangs


def test_a_plan_interrupted_as_it_was_sent_is_said_taken_only_when_the_node_holds_it():
    from otpy.optimize.live_system import plan_taken
    from otpy.wire.protocol import SetVariables

    actions = [SetVariables(0, "", {}, scopes={"global": {"bias": 0.1}})]  # advC-10: "interrupted", nothing more
    assert plan_taken(actions, {"global": {"bias": 0.1, "other": 1}})
    assert not plan_taken(actions, {"global": {"bias": 0.5}}) and not plan_taken(actions, None)
