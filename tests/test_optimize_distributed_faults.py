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


def test_a_worker_whose_trial_was_failed_meanwhile_goes_on(tmp_path, capsys):
    import optuna
    from optuna.trial import TrialState

    from otpy.optimize.optimizer import Example, Optimizer
    from otpy.optimize.study_db import recover
    from otpy.variables.scopes import VariableSpace
    from otpy.variables.types import FloatVariable

    space = VariableSpace("global")
    space.add(FloatVariable(name="bias", low=-1.0, high=1.0, default=0.5))
    url = f"sqlite:///{tmp_path / 's.db'}"
    calls = []

    def program(x):  # the first trial is failed by another worker meanwhile (its heartbeat stale: advC-15)
        if not calls:
            other = optuna.load_study(study_name="f", storage=url)
            [running] = other.get_trials(states=(TrialState.RUNNING,))
            other._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
        calls.append(x)
        return {"y": x}

    optimizer = Optimizer({"global": space}, storage=url, study_name="f", progress=False, worker="w:1:aa",
                          recover=recover)
    _, ran, _, _ = optimizer.search(program, [Example(inputs={"x": 1.0}, label=1.0)],
                                    lambda example, prediction: 0.0, trials=3)
    assert "its trial was failed meanwhile by another worker" in capsys.readouterr().err
    states = [t.state.name for t in optuna.load_study(study_name="f", storage=url).trials]
    assert states.count("COMPLETE") == 2 and states[0] == "FAIL"


def test_a_pool_tells_a_worker_that_died_from_one_that_ended(tmp_path):
    import sys

    from otpy.optimize.workers import WorkerPool

    ended = [sys.executable, "-c", "import sys; sys.stdin.readline(); sys.exit({})"]
    pools = [WorkerPool({"study": "s", "storage": "sqlite://"}, 1, command=[*ended[:2], ended[2].format(code)],
                        say=print) for code in (0, 3)]
    for pool in pools:
        pool.study = object()  # no study: the died one's trial cannot be failed (said, not raised)
        with pool:
            pool.wait()
    assert pools[0].died() == [] and pools[1].died() == pools[1].names  # advC-14: ended is not died


def test_a_pool_that_cannot_start_its_workers_stops_those_started_and_names_workers(tmp_path):
    from otpy.optimize.optimizer import OptimizeError
    from otpy.optimize.workers import WorkerPool

    pool = WorkerPool({"study": "s", "storage": "sqlite://"}, 3, command=[str(tmp_path / "none")], say=print)
    with pytest.raises(OptimizeError, match=r"--workers: worker 1 of 3 could not start .*; ask for fewer"):
        pool.start()  # advC-8: a RuntimeError/OSError traceback out of the leader
    assert pool.processes == []
