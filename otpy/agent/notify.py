"""What a worker tells its node, and how it ends: the node reads both.

The notify pipe is fd 3, one line each:

``READY``            setup is done; the node's ``spawn`` returns
``FAILED <why>``     setup raised; the child then exits with status 1
``EXIT shutdown [TERM]``  the program asked for a clean exit (``exit_shutdown(term)``)

The exit status (or the signal) is the rest of the node's exit reason: ``EXIT_CONFIG_CHANGED``
and ``EXIT_MAX_RSS`` are a restart's, SIGTERM a clean stop's.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import NoReturn

from ..wire.codec import describe

NOTIFY_FD = 3
EXIT_CONFIG_CHANGED = 75  # a program without on_config exits so, to be restarted with new values
EXIT_MAX_RSS = 76  # the exit status of an agent that went over its max_rss (abnormal: restarted)


def notify(line: str) -> None:
    try:
        os.write(NOTIFY_FD, line.encode() + b"\n")
    except OSError:
        pass  # the node is gone; the parent-death signal follows


def fail(why: str) -> NoReturn:
    """Report ``FAILED <why>`` to the node (with the traceback on stderr) and exit with status 1."""
    if sys.exc_info()[0] is not None:
        traceback.print_exc()
    notify(f"FAILED {why}")
    exit_now(1)


def exit_shutdown(term: str = "") -> NoReturn:
    """Exit now, cleanly: the node records the reason ``shutdown`` (no restart if transient),
    with ``term`` as its detail (OTP's ``{shutdown, Term}``)."""
    notify(" ".join(["EXIT shutdown", *term.split()]))
    exit_now(0)


def describe_long(exc: BaseException) -> str:
    """``wire.codec.describe``, long enough for a FAILED line."""
    return describe(exc, limit=4000)


def die_by(sig: int) -> NoReturn:
    """End with ``sig`` in the wait status, so the node reads the reason from it."""
    _flush()
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)


def exit_now(code: int) -> NoReturn:
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
