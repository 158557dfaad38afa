"""``otpy optimize --workers N`` on one study in PostgreSQL: exactly the study's trials, every
worker's on them, the best applied once; a killed worker's trial failed while the others go on;
Ctrl-C stops every worker; what cannot be shared refused; the password never shown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import otpy
from otpy.topology.load import parse_topology
from tests.helpers import unique_name, wait_until
from tests.test_optimize_distributed_programs import TOPOLOGY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(120)


def topology_file(tmp_path, name: str, delay: float) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(TOPOLOGY.format(name=name, delay=delay))
    return str(path)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "otpy", "optimize", *args]


def run(*args: str, timeout: float = 100) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def study(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg://"))


def states(url: str, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study(url, name).trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def pid_of(worker: str) -> int:
    return int(worker.split(":")[-2])  # HOST:PID:TOKEN


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not running
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_two_workers_finish_exactly_the_trials_both_run_some_and_the_best_is_applied_once(tmp_path, postgres_url):
    name = unique_name("dist")
    path = topology_file(tmp_path, name, delay=1.5)  # 9 s alone: the second worker starts in time, even on a busy host
    password = postgres_url.split("://", 1)[1].split("@")[0].split(":")[1]
    with otpy.Node(parse_topology(open(path).read(), check_imports=True).node), otpy.Caller(name) as caller:
        proc = run(path, "--storage", postgres_url, "--workers", "2", "--trials", "6", "--apply", "--json")
        assert proc.returncode == 0, proc.stderr
        assert password not in proc.stdout + proc.stderr
        assert "otpy:***@" in proc.stderr
        document = json.loads(proc.stdout)
        assert document["storage"].startswith("postgresql+psycopg://otpy:***@")
        assert document["trials"] == 6 and document["trials_per_second"] > 0
        assert states(postgres_url, name) in ({"COMPLETE": 6}, {"COMPLETE": 6, "PRUNED": 1})
        workers = {t.user_attrs["worker"] for t in study(postgres_url, name).trials if t.state.name == "COMPLETE"}
        assert len(workers) == 2 and all(w.startswith(socket.gethostname() + ":") for w in workers)
        assert {entry["worker"] for entry in document["workers"]} == workers
        assert sum(entry["trials"] for entry in document["workers"]) == 6
        bias = document["config"]["global"]["bias"]
        assert [change["name"] for change in document["applied"]] == ["bias"]
        assert caller.call("solver", {"x": 1.0}) == {"y": pytest.approx(3.0 + bias)}
    assert f"{len(workers)} workers" not in proc.stdout  # --json: one document on stdout


def test_a_killed_worker_s_trial_ends_failed_and_the_others_finish_the_study(tmp_path, postgres_url):
    name = unique_name("kill")
    path = topology_file(tmp_path, name, delay=1.0)
    leader = subprocess.Popen(command(path, "--storage", postgres_url, "--workers", "2", "--trials", "5"), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    me = f"{socket.gethostname()}:{leader.pid}:"  # HOST:PID:TOKEN

    def other_running():
        try:
            trials = study(postgres_url, name).trials
        except KeyError:
            return None
        return next((t for t in trials if t.state.name == "RUNNING"
                     and not t.user_attrs.get("worker", me).startswith(me)), None)

    victim = wait_until(other_running, timeout=30, what="a trial running on the second worker")
    pid = pid_of(victim.user_attrs["worker"])
    os.kill(pid, signal.SIGKILL)
    out, err = leader.communicate(timeout=60)
    assert leader.returncode == 0, err
    worker = victim.user_attrs["worker"]
    assert f"optimize: worker {worker} died (signal 9 (SIGKILL)): its running trial {victim.number} is marked " \
           "failed; the other workers go on" in err
    trials = study(postgres_url, name).trials
    assert trials[victim.number].state.name == "FAIL"
    assert trials[victim.number].user_attrs["failed"] == f"worker {worker} died (signal 9 (SIGKILL))"
    finished = [t for t in trials if t.state.name in ("COMPLETE", "FAIL")]
    assert len(finished) == 5 and not [t for t in trials if t.state.name == "RUNNING"]
    assert "after 5 trials (0 infeasible, 1 failed)" in out


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])  # SIGTERM: a silent 143, a trial RUNNING (advC-4)
def test_ctrl_c_stops_every_worker_and_their_scratch_nodes_and_exits_130(tmp_path, postgres_url, stop):
    name = unique_name("intr")
    path = topology_file(tmp_path, name, delay=1.0)
    leader = subprocess.Popen(command(path, "--storage", postgres_url, "--workers", "3", "--trials", "30"), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running_workers():
        try:
            trials = study(postgres_url, name).trials
        except KeyError:
            return None
        names = {t.user_attrs.get("worker") for t in trials if t.state.name == "RUNNING"} - {None}
        return names if len(names) == 3 else None

    workers = wait_until(running_workers, timeout=40, what="three workers running trials")
    pids = [pid_of(worker) for worker in workers if pid_of(worker) != leader.pid]
    if stop == signal.SIGINT:  # a second leader of the study while this one runs (advC-13): refused
        second = run(path, "--storage", postgres_url, "--workers", "1", "--trials", "30")
        assert second.returncode == 1 and f"has a running leader, {socket.gethostname()}:{leader.pid}:" \
            in second.stderr, second.stderr
    leader.send_signal(stop)
    out, err = leader.communicate(timeout=60)
    assert leader.returncode == 130, err
    assert "optimize: interrupted (every worker stopped)" in err
    assert "***@" in err and postgres_url.split("@")[0] not in err
    assert not [pid for pid in pids if alive(pid)]
    assert not [t.number for t in study(postgres_url, name).trials if t.state.name == "RUNNING"]
    runtime = os.environ["OTPY_RUNTIME_DIR"]
    left = [entry for entry in os.listdir(runtime) if entry.startswith(f"{name}-optimize")
            and os.path.exists(os.path.join(runtime, entry, "control.sock"))]
    assert not left  # every scratch node stopped (its control socket removed)


def test_several_workers_need_a_storage_they_share_and_a_join_needs_its_study(postgres_url, tmp_path):
    path = topology_file(tmp_path, unique_name("refuse"), delay=0.0)
    memory = run(path, "--storage", "sqlite://", "--workers", "1", timeout=30)  # advC-11: hung after its trials
    assert memory.returncode == 2
    assert "optimize: --workers 1: workers share one study through its storage" in memory.stderr
    huge = run(path, "--storage", postgres_url, "--workers", "65")  # advC-8: forked until the host's limit
    assert huge.returncode == 2 and "'--workers': 65 is not in the range 1<=x<=64" in huge.stderr, huge.stderr
    seeded = run("--join", "nosuch", "--storage", postgres_url, "--trials", "9")  # advC-13: silently ignored
    assert seeded.returncode == 2 and "optimize --join: --trials comes from the leader's study record" in seeded.stderr
    missing = run("--join", "nosuch", "--storage", postgres_url)
    assert missing.returncode == 1
    assert "optimize --join: no study 'nosuch' in postgresql+psycopg://otpy:***@" in missing.stderr
    assert postgres_url.split("@")[0] not in missing.stderr
    no_storage = run("--join", "nosuch")
    assert no_storage.returncode == 2 and "give --storage URL" in no_storage.stderr
    applying = run("--join", "nosuch", "--storage", postgres_url, "--apply")
    assert applying.returncode == 2 and "the leader applies" in applying.stderr
    watching = run(path, "--watch", "--workers", "2", "--threshold", "0")
    assert watching.returncode == 2 and "optimize --watch: --workers is for one search" in watching.stderr


def test_a_worker_takes_a_trial_only_while_fewer_than_the_study_s_trials_are_numbered_before_it(tmp_path):
    import optuna

    from otpy.optimize.trial_share import TrialShare

    shared = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    first, second, third = shared.ask(), shared.ask(), shared.ask()  # three workers asked at once
    share = TrialShare(2)
    assert share.claim(shared, first) and share.claim(shared, second)
    assert not share.claim(shared, third)  # two are numbered before it: the study has its trials
    assert share.surplus == 1 and share.all_taken(shared)
    shared.tell(third, state=optuna.trial.TrialState.PRUNED)
    shared.tell(first, 1.0)
    shared.tell(second, state=optuna.trial.TrialState.FAIL)
    assert TrialShare(2).all_taken(shared) and not TrialShare(3).all_taken(shared)
    again = shared.ask()
    assert not TrialShare(2).claim(shared, again)  # finished or failed, they count; the pruned one does not
    assert TrialShare(3).claim(shared, again)  # the third slot: the pruned one is nobody's


def test_workers_of_one_host_share_an_sqlite_file(tmp_path):
    name = unique_name("lite")
    path = topology_file(tmp_path, name, delay=1.5)  # 9 s alone: the second worker starts in time, even on a busy host
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = run(path, "--storage", url, "--workers", "2", "--trials", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    trials = study(url, name).trials
    assert len([t for t in trials if t.state.name == "COMPLETE"]) == 6
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    runtime = os.environ["OTPY_RUNTIME_DIR"]  # the second worker's scratch node took the first free slot
    assert sorted(entry for entry in os.listdir(runtime) if entry.startswith(name)) == \
        [f"{name}-optimize", f"{name}-optimize-1"]


def test_workers_stop_when_their_leader_is_killed(tmp_path, postgres_url):
    name = unique_name("orphan")
    path = topology_file(tmp_path, name, delay=1.0)
    leader = subprocess.Popen(command(path, "--storage", postgres_url, "--workers", "2", "--trials", "30"), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # as `&` in a script (advC-4):
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # SIGINT ignored
    me = f"{socket.gethostname()}:{leader.pid}:"  # HOST:PID:TOKEN

    def other_running():
        try:
            trials = study(postgres_url, name).trials
        except KeyError:
            return None
        return next((t for t in trials if t.state.name == "RUNNING"
                     and not t.user_attrs.get("worker", me).startswith(me)), None)

    worker = wait_until(other_running, timeout=30, what="a trial running on the second worker").user_attrs["worker"]
    pid = pid_of(worker)
    leader.kill()
    leader.wait()
    wait_until(lambda: not alive(pid), timeout=30, what="the worker gone with its leader")
    trials = study(postgres_url, name).trials
    assert not [t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("worker") == worker]


def test_the_leader_waits_for_trials_running_elsewhere_and_fails_those_whose_heartbeat_stopped(tmp_path):
    import warnings

    import optuna

    from otpy.optimize.workers import wait_for_study

    with warnings.catch_warnings():  # experimental; meant for Study.optimize (a joiner's, elsewhere)
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=1)
        shared = optuna.create_study(storage=storage, study_name="h")
        shared.tell(shared.ask(), 1.0)
        lost = shared.ask()  # a joiner's trial, its host gone: its heartbeat stops
    lost.set_user_attr("worker", "gone:1")
    storage.record_heartbeat(lost._trial_id)
    said: list[str] = []
    wait_for_study(shared, 2, said.append, poll=0.05)
    assert said == ["optimize: waiting for 1 trial(s) running on other workers (gone:1)"]
    assert [t.state.name for t in shared.trials] == ["COMPLETE", "FAIL"]
    assert "heartbeat stopped" in shared.trials[1].user_attrs["failed"]  # the reason, for whoever reads it (advC-15)
