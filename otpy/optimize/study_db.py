"""A shared study's database going away for a while (a PostgreSQL restart, a lost connection).

Every worker and the leader talk to the study's database all along. When it goes away, optuna
raises ``StorageInternalError`` (over SQLAlchemy's ``OperationalError``), sometimes an error of its
own cleanup on top. ``database_lost`` tells these apart from real errors; ``until_back`` retries a
read or write, bounded by ``DB_WAIT`` seconds, then raises ``DatabaseLost`` (one line, the
URL's password masked). A trial whose result could not be stored is marked failed once the
database is back (``optimizer``'s search loop); optuna's heartbeat thread says one line, not a
traceback (``quiet_heartbeat_errors``).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TypeVar

from .optimizer import OptimizeError

DB_WAIT = 60.0  # seconds a worker waits for its study's database to come back before it gives up
T = TypeVar("T")


class DatabaseLost(OptimizeError):
    """The study's database stayed away longer than ``DB_WAIT``."""


def database_lost(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it came from) is the database going away, not a bug."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import DBAPIError, OperationalError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (StorageInternalError, OperationalError)) or \
                (isinstance(exc, DBAPIError) and exc.connection_invalidated):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def failed_elsewhere(exc: BaseException | None) -> bool:
    """Whether ``exc`` is optuna refusing to tell a trial another worker already failed (a stale
    heartbeat: this worker's host was frozen or cut off, then came back)."""
    from optuna.exceptions import UpdateFinishedTrialError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, UpdateFinishedTrialError) or \
                (isinstance(exc, ValueError) and str(exc).startswith("Cannot tell a ")):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def reason(exc: BaseException) -> str:
    """The driver's first line (what went away), not optuna's guess ("invalid data in the commit")."""
    root = exc
    while (root.__cause__ or root.__context__) is not None and not _driver(root):
        root = root.__cause__ or root.__context__
    from ..specs.values import mask_secret

    text = str(getattr(root, "orig", None) or root).strip().splitlines()
    return mask_secret(text[0], "") if text else type(root).__name__


def _driver(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError

    return isinstance(exc, DBAPIError)


def until_back(call: Callable[[], T], what: str, wait: float = DB_WAIT, poll: float = 0.5) -> T:
    """``call()``, retried while the database is away, at most ``wait`` seconds; then ``DatabaseLost``."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return call()
        except Exception as exc:
            if not database_lost(exc):
                raise
            if time.monotonic() >= deadline:
                raise DatabaseLost(f"the study's database is gone ({reason(exc)}); {what} gave up after "
                                   f"{wait:.0f} s: run the same command again once it is back") from None
            time.sleep(poll)


def quiet_heartbeat_errors() -> None:
    """optuna's heartbeat thread, when the database is away, says one line (not a traceback):
    a trial whose heartbeat stops too long is failed by the others, as for a lost host."""
    previous = threading.excepthook

    def hook(args) -> None:
        if args.exc_value is not None and database_lost(args.exc_value):
            print(f"optimize: a trial's heartbeat could not be stored: {reason(args.exc_value)}", file=sys.stderr)
            return
        previous(args)

    threading.excepthook = hook


def recover(study, worker: str, exc: BaseException) -> bool:
    """Once the database is back (at most ``DB_WAIT`` s, else ``DatabaseLost``): ``worker``'s
    trials left RUNNING are failed (their results could not be stored); True. False for another error."""
    if failed_elsewhere(exc):
        print(f"optimize: worker {worker}: its trial was failed meanwhile by another worker (its heartbeat had "
              "stopped: this host frozen or cut off); it goes on", file=sys.stderr, flush=True)
        return True
    if not database_lost(exc):
        return False
    print(f"optimize: worker {worker}: the study's database went away ({reason(exc)}); waiting for it "
          f"(at most {DB_WAIT:.0f} s)", file=sys.stderr, flush=True)
    failed = until_back(lambda: fail_running(study, worker, "the study's database went away while it ran: its "
                                             "result could not be stored"), f"worker {worker}")
    shown = f"; its trial {', '.join(map(str, failed))} is marked failed" if failed else ""
    print(f"optimize: worker {worker}: the study's database is back{shown}", file=sys.stderr, flush=True)
    return True


def fail_running(study, worker: str, reason: str) -> list[int]:
    """Mark the trials ``worker`` left RUNNING failed (user attribute ``failed``: ``reason``); their numbers."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") == worker:
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "failed", reason)
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except Exception as exc:  # it finished meanwhile (a worker ending as it was stopped)
                if database_lost(exc):
                    raise
                continue
            failed.append(trial.number)
    return failed
