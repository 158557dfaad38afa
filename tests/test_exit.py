"""Exit reasons from real wait statuses (shared/reference/otp-semantics.md, sections 1 and 5).

Each status comes from a real child: ``python -c`` that exits or kills itself, reaped with
``os.waitpid`` so that the raw status (not a return code) is classified.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from otpy.supervision.exit import ExitReason, from_wait_status, should_restart

PROGRAMS = {
    "exit 0": "pass",
    "exit 3": "import sys; sys.exit(3)",
    "uncaught exception": "raise RuntimeError('boom')",
    "SIGTERM": "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    "SIGKILL": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    # No core file: the default action of SIGSEGV would dump one.
    "SIGSEGV": ("import os, resource, signal; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
                "os.kill(os.getpid(), signal.SIGSEGV)"),
}


@pytest.fixture(scope="module")
def status() -> dict[str, int]:
    """The raw wait status of each program in PROGRAMS, run once."""
    statuses = {}
    for name, code in PROGRAMS.items():
        argv = [sys.executable, "-c", code]
        pid = os.posix_spawn(sys.executable, argv, {**os.environ, "PYTHONFAULTHANDLER": ""})
        _, statuses[name] = os.waitpid(pid, 0)
    return statuses


class TestFromWaitStatus:
    def test_the_statuses_are_real(self, status):
        assert os.waitstatus_to_exitcode(status["exit 3"]) == 3
        assert os.waitstatus_to_exitcode(status["SIGKILL"]) == -signal.SIGKILL

    def test_exit_status_zero_is_normal_and_clean(self, status):
        reason = from_wait_status(status["exit 0"])
        assert reason.kind == "normal" and reason.code == 0 and reason.clean

    def test_a_non_zero_status_is_crashed_keeping_the_code(self, status):
        reason = from_wait_status(status["exit 3"])
        assert reason.kind == "crashed" and reason.code == 3 and not reason.clean

    def test_an_uncaught_exception_is_crashed(self, status):
        reason = from_wait_status(status["uncaught exception"])
        assert reason.kind == "crashed" and reason.code == 1 and not reason.clean

    def test_death_by_sigterm_is_shutdown_and_clean(self, status):
        reason = from_wait_status(status["SIGTERM"])
        assert reason.kind == "shutdown" and reason.signal == signal.SIGTERM and reason.clean

    def test_death_by_sigkill_is_killed_and_abnormal(self, status):
        reason = from_wait_status(status["SIGKILL"])
        assert reason.kind == "killed" and reason.signal == signal.SIGKILL and not reason.clean

    def test_death_by_any_other_signal_is_crashed_keeping_the_signal(self, status):
        reason = from_wait_status(status["SIGSEGV"])
        assert reason.kind == "crashed" and reason.signal == signal.SIGSEGV and not reason.clean


class TestReportedShutdown:
    """A reason the child reported itself (``exit(shutdown)``) wins over the raw status."""

    @pytest.mark.parametrize("name", list(PROGRAMS))
    def test_a_reported_shutdown_overrides_every_status(self, status, name):
        reason = from_wait_status(status[name], reported="shutdown")
        assert reason.kind == "shutdown" and reason.clean

    def test_a_reported_shutdown_keeps_the_raw_code(self, status):
        assert from_wait_status(status["exit 3"], reported="shutdown").code == 3

    @pytest.mark.parametrize("name", ["exit 0", "exit 3", "SIGKILL"])
    def test_a_reported_shutdown_term_is_otps_shutdown_tuple_clean_with_the_term(self, status, name):
        reason = from_wait_status(status[name], reported="shutdown migrated to node b")
        assert reason.kind == "shutdown" and reason.clean and reason.detail == "migrated to node b"

    def test_a_report_that_only_starts_like_shutdown_is_not_one(self, status):
        assert from_wait_status(status["exit 3"], reported="shutdownx").kind == "crashed"

    def test_without_a_report_the_status_decides(self, status):
        assert from_wait_status(status["exit 3"], reported=None).kind == "crashed"


REASONS = {
    "normal": ExitReason(kind="normal", code=0),
    "shutdown": ExitReason(kind="shutdown", signal=15),
    "killed": ExitReason(kind="killed", signal=9),
    "crashed code": ExitReason(kind="crashed", code=3),
    "crashed signal": ExitReason(kind="crashed", signal=11),
    "failed": ExitReason(kind="failed", detail="never got READY"),
}
RESTARTED = {
    "permanent": set(REASONS),
    "transient": {"killed", "crashed code", "crashed signal", "failed"},
    "temporary": set(),
}


class TestShouldRestart:
    @pytest.mark.parametrize("restart", list(RESTARTED))
    @pytest.mark.parametrize("why", list(REASONS))
    def test_the_do_restart_table(self, restart, why):
        assert should_restart(restart, REASONS[why]) is (why in RESTARTED[restart])

    @pytest.mark.parametrize("why", list(REASONS))
    def test_clean_is_exactly_normal_and_shutdown(self, why):
        assert REASONS[why].clean is (why in ("normal", "shutdown"))
