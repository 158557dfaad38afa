"""Several trial workers on one study: ``otpy optimize --workers N`` and ``--join STUDY``.

A study in a database every worker opens (optuna's RDB storage: PostgreSQL for workers on
several hosts, an SQLite file for those of one) is the only thing the workers share. Each
worker is a process with a scratch node of its own (the leader's own trials run in the leader
on ``NODE-optimize``; every other worker's on ``NODE-optimize-N``, the first free slot), named
``HOST:PID`` on every trial it runs (user attribute ``worker``). A worker takes a trial only
while the study has fewer than its trials (``trial_share.TrialShare``), so the study ends with exactly
that many finished ones, whoever ran them.

The leader writes what a joiner needs in the study's user attributes (``StudyRecord``: the
topology's path and digest, the trials, the seed, the values trials keep); ``--join`` reads them,
so a joiner needs only the study's name and the storage URL (and the same topology file, at
the same path or given again). Only the leader applies, once: after its own workers ended and
the study has its trials (``wait_for_study``: it waits for trials still running elsewhere).

``WorkerPool`` starts worker processes (``otpy optimize --worker``, the job on stdin: the URL,
with its password, never in argv), each in a session of its own so that the terminal's Ctrl-C
reaches the pool's owner only, which then stops them one by one (SIGINT: each fails its trial
``interrupted`` and stops its scratch node). A worker that dies (killed, crashed) has its
running trials marked failed by the pool at once (optuna's heartbeat does it too, after a grace
period, for a worker whose whole host is gone); the others go on. A worker whose owner dies
sees its stdin close and stops itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

from .optimizer import Config, OptimizeError

RECORD_ATTR = "otpy"  # the study's user attribute holding the leader's StudyRecord
HEARTBEAT = 5  # seconds between a running trial's heartbeats; failed when none for 4 of them
STOP_TIMEOUT = 30.0  # seconds a worker has to stop after SIGINT (its trial, its scratch node)


def worker_name(pid: int | None = None) -> str:
    """A worker's name on the trials it runs: ``HOST:PID``."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


SLOTS = 64  # scratch node names a host's workers of one node take: NODE-optimize-1 ... -64


def scratch_names(node: str) -> list[str]:
    """A worker's scratch node: the first of ``NODE-optimize-1``, ``-2``, ... that no running node
    has (the leader's own is ``NODE-optimize``): the names, and their runtime folders, are reused
    from run to run instead of piling up, and two workers of a host never share one."""
    return [f"{node}-optimize-{slot}" for slot in range(1, SLOTS + 1)]


def worker_seed(seed: int | None, name: str) -> int | None:
    """Each worker samples with its own seed (the same seed would propose the same points)."""
    if seed is None:
        return None
    return (seed + 1 + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)) % 2**32


def topology_digest(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()[:16]


@dataclass(frozen=True)
class StudyRecord:
    """What the leader stores in its study for joiners (user attribute ``otpy``)."""

    topology: str  # the topology file's absolute path
    digest: str  # its sha256 (16 hex digits): a joiner's file must be the same
    node: str
    trials: int
    seed: int | None
    fixed: Config  # the values every trial keeps (the running node's documents)
    leader: str

    def write(self, study) -> None:
        study.set_user_attr(RECORD_ATTR, asdict(self))

    @classmethod
    def read(cls, study) -> "StudyRecord | None":
        data = study.user_attrs.get(RECORD_ATTR)
        return cls(**data) if isinstance(data, dict) else None


def load_study(storage: str, study: str):
    """The study ``study`` in ``storage``; ``OptimizeError`` naming it when there is none."""
    import optuna

    from .study_storage import masked

    try:
        return optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        names = sorted(summary.study_name for summary in optuna.get_all_study_summaries(storage))
        have = f"studies there: {', '.join(names)}" if names else "there is no study there"
        raise OptimizeError(f"--join: no study {study!r} in {masked(storage)} ({have}); start it with "
                            "`otpy optimize FILE --storage URL --workers N` on the leader first") from None


def fail_running(study, worker: str, reason: str) -> list[int]:
    """Mark the trials ``worker`` left RUNNING failed (user attribute ``failed``: ``reason``); their numbers."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") == worker:
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "failed", reason)
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except Exception:  # it finished meanwhile (a worker ending as it was stopped)
                continue
            failed.append(trial.number)
    return failed


def wait_for_study(study, trials: int, say: Callable[[str], None], poll: float = 0.2) -> None:
    """Until the study has ``trials`` finished trials, or none is running or waiting any more
    (its trials still running on other workers, e.g. a joiner's; failed by optuna's heartbeat
    when their worker is gone)."""
    import optuna
    from optuna.trial import TrialState

    said = False
    while True:
        trials_now = study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials_now)
        running = [t for t in trials_now if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        if finished >= trials or not running:
            return
        if not said:
            workers = sorted({t.user_attrs.get("worker", "?") for t in running})
            say(f"optimize: waiting for {len(running)} trial(s) running on other workers ({', '.join(workers)})")
            said = True
        with warnings.catch_warnings():  # optuna calls its heartbeat experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a lost host's trials, once their heartbeat is stale
        time.sleep(poll)


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))


def worker_counts(study) -> list[dict[str, Any]]:
    """Per worker, the study's trials it ran: finished (complete, failed), in the order first seen."""
    from optuna.trial import TrialState

    counts: dict[str, dict[str, Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        name = trial.user_attrs.get("worker")
        if name is None or trial.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        entry = counts.setdefault(name, {"worker": name, "trials": 0, "complete": 0, "failed": 0})
        entry["trials"] += 1
        entry["complete" if trial.state == TrialState.COMPLETE else "failed"] += 1
    return list(counts.values())


class WorkerPool:
    """``count`` worker processes of one study (see the module's docstring). ``job``: what each
    worker needs (``run_worker``'s argument, without its name and seed); ``command``:
    how to start one (the CLI's ``otpy optimize --worker``); ``say``: one line for the user."""

    def __init__(self, job: dict[str, Any], count: int, *, command: list[str], say: Callable[[str], None],
                 study=None) -> None:
        self.job, self.count, self.command, self.say, self.study = job, count, command, say, study
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.summaries: dict[str, dict] = {}
        self.exits: dict[str, int] = {}
        self.stopping = False
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "WorkerPool":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for _ in range(self.count):
            process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       start_new_session=True, text=True)
            name = worker_name(process.pid)
            job = dict(self.job, worker=name, seed=worker_seed(self.job.get("seed"), name))
            process.stdin.write(json.dumps(job) + "\n")  # the job stays off argv: its URL has the password
            process.stdin.flush()  # stdin stays open: the worker stops when it closes (its owner died)
            self.processes.append((name, process))
            thread = threading.Thread(target=self._watch, args=(name, process), daemon=True,
                                      name=f"otpy-worker-{process.pid}")
            thread.start()
            self._threads.append(thread)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.processes]

    def _watch(self, name: str, process: subprocess.Popen) -> None:
        out = process.stdout.read()
        code = process.wait()
        self.exits[name] = code
        for line in out.splitlines():
            try:
                self.summaries[name] = json.loads(line)
            except ValueError:
                pass
        if code == 0 or (self.stopping and code in (130, -signal.SIGINT)):
            return
        how = f"signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit {code}"
        reason = f"worker {name} died ({how})"
        try:
            failed = fail_running(self._study(), name, reason)
        except Exception as exc:  # the database is gone too: optuna's heartbeat fails them later
            self.say(f"optimize: {reason}; its running trial could not be marked failed: {exc}")
            return
        trials = f"its running trial {', '.join(map(str, failed))} is marked failed" if failed else "no trial was running"
        self.say(f"optimize: {reason}: {trials}; the other workers go on")

    def _study(self):
        if self.study is None:
            import optuna

            self.study = optuna.load_study(study_name=self.job["study"], storage=self.job["storage"])
        return self.study

    def counts(self) -> list[dict[str, Any]]:
        """``worker_counts`` of the study, each worker of this pool with its exit status."""
        counts = worker_counts(self._study())
        for entry in counts:
            if entry["worker"] in self.exits:
                entry["exit"] = self.exits[entry["worker"]]
        return counts

    def wait(self) -> None:
        """Until every worker has ended (each stops when the study's trials are all taken)."""
        for thread in self._threads:
            while thread.is_alive():
                thread.join(0.2)

    def stop(self) -> None:
        """Stop the workers still running, one by one: SIGINT (each fails its trial and stops its
        scratch node), SIGKILL after ``STOP_TIMEOUT``; trials a killed one left running are failed."""
        from .scratch import deferred_interrupt

        with deferred_interrupt():  # a second Ctrl-C does not cut the stop short
            self.stopping = True
            for name, process in self.processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    fail_running(self._study(), name, f"worker {name} did not stop in {STOP_TIMEOUT:.0f} s: killed")
                with _quiet():
                    process.stdin.close()
            for thread in self._threads:
                thread.join(5)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)
