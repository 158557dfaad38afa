"""Several trial workers on one study: ``otpy optimize --workers N`` and ``--join STUDY``.

A study in a database every worker opens (optuna's RDB storage: PostgreSQL for workers on
several hosts, an SQLite file for those of one) is the only thing the workers share. Each
worker is a process with a scratch node of its own (the leader's own trials run in the leader
on ``NODE-optimize``; every other worker's on ``NODE-optimize-N``, the first free slot), named
``HOST:PID:TOKEN`` on every trial it runs (user attribute ``worker``; the random token keeps two
hosts' workers apart when their names and PIDs agree: containers, PID namespaces, cloned VMs).
A worker takes a trial only while the study has fewer than its trials (``trial_share.TrialShare``),
so the study ends with exactly that many finished ones, whoever ran them.

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
sees its stdin close and stops itself. The leader also bumps a counter in the study
(``beat_leader``); a joiner that sees it stand still (``LeaderWatch``) stops: nobody would apply.
The record also holds digests of what scores a trial (``study_definition``): a joiner with
another metric or other data is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .optimizer import Config, OptimizeError
from .study_db import fail_running, until_back

RECORD_ATTR = "otpy"  # the study's user attribute holding the leader's StudyRecord
HEARTBEAT = 5  # seconds between a running trial's heartbeats; failed when none for 4 of them
STOP_TIMEOUT = 30.0  # seconds a worker has to stop after SIGINT (its trial, its scratch node)


def worker_name(pid: int | None = None) -> str:
    """A worker's name on the trials it runs: ``HOST:PID:TOKEN``, the token random (unique across
    hosts that share a host name and PIDs)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}:{secrets.token_hex(3)}"


def worker_pid(name: str) -> int | None:
    """The PID in a worker's name (``HOST:PID:TOKEN``), None if it has none."""
    parts = name.split(":")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


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
    definition: dict = field(default_factory=dict)  # what scores a trial (``study_definition``): a joiner's must match

    def write(self, study) -> None:
        study.set_user_attr(RECORD_ATTR, asdict(self))

    @classmethod
    def read(cls, study) -> "StudyRecord | None":
        """The study's record; None when it has none; ``OptimizeError`` naming the key when another
        party wrote one otpy cannot use (a key missing, unknown, or of another type)."""
        data = study.user_attrs.get(RECORD_ATTR)
        if data is None:
            return None
        where = f"study {study.study_name!r}: its {RECORD_ATTR!r} record"
        if not isinstance(data, dict):
            raise OptimizeError(f"{where} is {type(data).__name__}, not a table; it was not written by otpy optimize")
        kinds = {"topology": str, "digest": str, "node": str, "trials": int, "seed": (int, type(None)),
                 "fixed": dict, "leader": str, "definition": dict}
        for key in data:
            if key not in kinds:
                raise OptimizeError(f"{where} has an unknown key {key!r}; it was not written by this otpy optimize")
        for key, kind in kinds.items():
            if key not in data and key != "definition":
                raise OptimizeError(f"{where} has no key {key!r}; it was not written by otpy optimize")
            value = data.get(key, {})
            if not isinstance(value, kind) or isinstance(value, bool) or (key == "trials" and value < 1):
                raise OptimizeError(f"{where}: {key!r} is {value!r}; expected "
                                    f"{'an integer >= 1' if key == 'trials' else _kind_name(kind)}")
        return cls(**data)


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "a string", int: "an integer", dict: "a table", type(None): "null"}[k] for k in kinds)


def study_definition(table) -> dict[str, str]:
    """What scores a trial, beyond the topology file: digests of the metric's module source and of the
    dataset and valset (an ``OptimizerTable``). The leader records it; a joiner whose own differs
    (another checkout of the metric, other data) is refused: one study, one objective."""
    import inspect
    import re

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def data(items) -> str:  # reprs, without the addresses some objects' reprs hold
        return digest(re.sub(r" at 0x[0-9a-fA-F]+", "", repr(list(items or []))))

    try:
        module = inspect.getmodule(table.metric)
        source = inspect.getsource(module) if module is not None else repr(table.metric)
    except (OSError, TypeError):
        source = repr(getattr(table.metric, "__qualname__", table.metric))
    return {"metric": f"{table.table.get('metric')}@{digest(source)}", "dataset": data(table.trainset),
            "valset": data(table.valset)}


def definition_differs(recorded: dict, mine: dict) -> list[str]:
    """The keys of ``study_definition`` on which a joiner's differs from the leader's record."""
    return [key for key in sorted(recorded) if key in mine and recorded[key] != mine[key]]


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


def wait_for_study(study, trials: int, say: Callable[[str], None], poll: float = 0.2) -> None:
    """Until the study has ``trials`` finished trials, or none is running any more (its trials
    still running on other workers, e.g. a joiner's; failed by optuna's heartbeat when their worker
    is gone). A trial left WAITING has nobody to run it: not waited for. The database going away
    meanwhile is waited for (``study_db.until_back``)."""
    import optuna
    from optuna.trial import TrialState

    said = False
    while True:
        trials_now = until_back(lambda: study.get_trials(deepcopy=False), "the leader's wait for the study")
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials_now)
        running = [t for t in trials_now if t.state == TrialState.RUNNING]
        if finished >= trials or not running:
            return
        if not said:
            workers = sorted({t.user_attrs.get("worker", "?") for t in running})
            say(f"optimize: waiting for {len(running)} trial(s) running on other workers ({', '.join(workers)})")
            said = True
        with warnings.catch_warnings():  # optuna calls its heartbeat experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            until_back(lambda: fail_stale(study), "failing a lost host's trials")
        time.sleep(poll)


def fail_stale(study) -> None:
    """optuna's ``fail_stale_trials``, with the reason on each trial (user attribute ``failed``)."""
    import optuna
    from optuna.storages._heartbeat import is_heartbeat_enabled
    from optuna.trial import TrialState

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(trial_id, "failed", "its worker's heartbeat stopped (its host lost, frozen "
                                        "or cut off)")
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            pass


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))


def started_trials(study) -> set[int]:
    """The numbers of the study's trials some worker took (not the WAITING ones nobody took yet):
    taken before a run, they are not that run's (``worker_counts``' ``old``)."""
    from optuna.trial import TrialState

    return {t.number for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING}


def worker_counts(study, old: set[int] = frozenset()) -> list[dict[str, Any]]:
    """Per worker, the study's trials it ran: finished (complete, failed), in the order first seen;
    trials numbered in ``old`` (an earlier run's) left out."""
    from optuna.trial import TrialState

    counts: dict[str, dict[str, Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        name = trial.user_attrs.get("worker")
        if name is None or trial.number in old or trial.state not in (TrialState.COMPLETE, TrialState.FAIL):
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
        """Start the workers; one that cannot start (the host's process, thread or file limits)
        stops those started (``stop``) and raises ``OptimizeError`` naming ``--workers``."""
        try:
            for _ in range(self.count):
                self._start_one()
        except (OSError, RuntimeError) as exc:
            self.stop()
            raise OptimizeError(f"--workers: worker {len(self.processes) + 1} of {self.count} could not start "
                                f"({exc}); ask for fewer") from None

    def _start_one(self) -> None:
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

    def died(self) -> list[str]:
        """The workers that ended on their own with an error (not 0; not stopped by ``stop``)."""
        return [name for name, code in self.exits.items()
                if code != 0 and not (self.stopping and code in (130, -signal.SIGINT))]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.processes]

    def _watch(self, name: str, process: subprocess.Popen) -> None:
        out = process.stdout.read()
        process.stdout.close()
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
            failed = until_back(lambda: fail_running(self._study(), name, reason), "failing its trial")
        except Exception as exc:  # the database is gone too: optuna's heartbeat fails them later
            self.say(f"optimize: {reason}; its running trial could not be marked failed: {exc}")
            return
        trials = (f"its running trial {', '.join(map(str, failed))} is marked failed" if failed
                  else "no trial was running")
        self.say(f"optimize: {reason}: {trials}; the other workers go on")

    def _study(self):
        if self.study is None:
            import optuna

            self.study = optuna.load_study(study_name=self.job["study"], storage=self.job["storage"])
        return self.study

    def counts(self, old: set[int] = frozenset()) -> list[dict[str, Any]]:
        """``worker_counts`` of the study (without the trials numbered in ``old``), each worker of
        this pool with its exit status."""
        counts = until_back(lambda: worker_counts(self._study(), old), "counting the trials")
        for entry in counts:
            if entry["worker"] in self.exits:
                entry["exit"] = self.exits[entry["worker"]]
        return counts

    def wait(self, timeout: float | None = None) -> None:
        """Until every worker has ended (each stops when the study's trials are all taken), or ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive() and (deadline is None or time.monotonic() < deadline):
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


BEAT_ATTR = "otpy_leader_beat"  # the study's user attribute the leader bumps every HEARTBEAT seconds


def beat_leader(study, name: str, stop: threading.Event) -> threading.Thread:
    """The leader's sign of life for its joiners: a counter in the study, bumped every ``HEARTBEAT``
    seconds until ``stop`` (a joiner that sees it unchanged for ``4 * HEARTBEAT`` s stops)."""
    def run() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            try:
                study.set_user_attr(BEAT_ATTR, [name, count, time.time()])
            except Exception:  # the database away: the joiners see no beat, as for a lost leader
                pass
            stop.wait(HEARTBEAT)

    thread = threading.Thread(target=run, daemon=True, name="otpy-leader-beat")
    thread.start()
    return thread


def live_leader(study, me: str) -> str | None:
    """Another leader of ``study`` whose beat is fresh (under ``2 * HEARTBEAT`` s old by this host's
    clock), else None: a second ``otpy optimize FILE --workers N`` on its study is refused."""
    beat = study.user_attrs.get(BEAT_ATTR)
    if not (isinstance(beat, list) and len(beat) == 3 and isinstance(beat[0], str) and beat[0] != me
            and isinstance(beat[2], (int, float))):
        return None
    return beat[0] if abs(time.time() - beat[2]) < 2 * HEARTBEAT else None


class LeaderWatch:
    """A joiner's view of its leader's beat (``beat_leader``): ``gone()`` once it has not changed
    for ``grace`` seconds of this host's clock (no clock is compared across hosts)."""

    def __init__(self, study, grace: float = 4 * HEARTBEAT) -> None:
        self.study, self.grace = study, grace
        self.last, self.since = self._read(), time.monotonic()

    def _read(self):
        try:
            return self.study._storage.get_study_user_attrs(self.study._study_id).get(BEAT_ATTR)
        except Exception:
            return self.last if hasattr(self, "last") else None

    def gone(self) -> float | None:
        """Seconds since the leader's last beat when over ``grace``, else None (also when it has
        none: a leader that ended, or one of an otpy without beats)."""
        now, beat = time.monotonic(), self._read()
        if beat is None:
            return None
        if beat != self.last:
            self.last, self.since = beat, now
        return now - self.since if now - self.since > self.grace else None
