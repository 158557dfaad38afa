"""Import programs in a child process, so user code run at import cannot end or fool ``validate``.

An import runs user code: it may exit, hang, fork, or write to any descriptor it finds. So:

* the child runs in its own session; once it has exited (its exit, not EOF on a pipe a
  forked grandchild may hold) or timed out, its whole process group is SIGKILLed: no orphan
  survives ``validate``;
* reports come on a dedicated pipe, not inherited by anything the program execs, each line
  tagged with a random token of this run; a line without it (a program writing to the
  descriptor) is ignored, and a target without its report is a problem;
* the program's own output goes to a file, whose last line is quoted in a problem.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterable

IMPORT_TIMEOUT = 30.0  # seconds for one child to import the programs; a hang is a problem, not a wait

# Run by ``python -c``: the request (sys.path, targets, report fd, token) comes on stdin; one
# line ``TOKEN [index, problem]`` per target goes to the report fd as soon as it is known.
_IMPORT_CHILD = """
import json, os, sys
def _main():
    request = json.loads(sys.stdin.readline())
    token, report = request.pop("token"), request.pop("fd")
    os.set_inheritable(report, False)
    sys.path[:] = request["path"]
    from otpy.agent.import_check import program_problem
    for index, target in enumerate(request["targets"]):
        line = token + " " + json.dumps([index, program_problem(target)]) + chr(10)
        os.write(report, line.encode())
_main()
"""


def import_path(folders: Iterable[str]) -> list[str]:
    """The ``sys.path`` programs are imported with: ``folders`` not on this process's
    ``sys.path`` first, then ``sys.path``. A new list: this process's stays as it is (the
    import check's child and the node's zygote get it; ``NodeSpec.program_folders``)."""
    return [folder for folder in dict.fromkeys(folders) if folder not in sys.path] + sys.path


def program_problem(target: str) -> str | None:
    """Why ``target`` cannot be a program child (import it here), or None.

    What the worker accepts (``agent.program.instantiate``): a class it instantiates with no
    arguments and whose ``forward`` it calls (``setup``, ``teardown``, ``on_config`` if it has
    them: a ``dspy.Module`` is one), or a callable it wraps as ``forward``. A class without
    ``forward`` (``builtins:int``, a module's ``__class__``) is refused."""
    from .program import import_target

    try:
        obj = import_target(target)
    except ImportError as exc:
        return f"cannot import {target!r}: {exc}"
    except BaseException as exc:
        return f"cannot import {target!r}: {type(exc).__name__}: {exc}"
    if isinstance(obj, type):
        if not callable(getattr(obj, "forward", None)):
            return (f"got {target!r}, a class without forward; expected a Program class "
                    "(otpy.Program, a dspy.Module, any class with forward) or a function")
        return None
    if not callable(obj):
        return f"got {target!r}, of type {type(obj).__name__!r}; expected a Program class or a function"
    return None


def import_in_child(targets: list[str], path: list[str], timeout: float) -> tuple[list[tuple], str | None]:
    """The child's reports ``(index, problem or None)`` in order, and how it ended early, if it did."""
    token = secrets.token_hex(16)
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as output:
        try:
            child = subprocess.Popen([sys.executable, "-c", _IMPORT_CHILD], stdin=subprocess.PIPE, stdout=output,
                                     stderr=output, pass_fds=(write_end,), start_new_session=True)
        finally:
            os.close(write_end)
        try:
            _send(child, {"path": path, "targets": targets, "fd": write_end, "token": token})
            data, status = _collect(child, read_end, time.monotonic() + timeout)
        finally:
            os.close(read_end)
            _kill_group(child)
        output.seek(0)
        last = _last_line(output.read().decode(errors="replace"))
    reports = _reports(data, token, len(targets))
    if len(reports) == len(targets):
        return reports, None
    if status is None:
        return reports, f"did not finish within {timeout:g} s{last}"
    return reports, f"ended the process ({_how(status)}){last}"


def _send(child: subprocess.Popen, request: dict) -> None:
    try:
        child.stdin.write((json.dumps(request) + "\n").encode())
        child.stdin.close()
    except OSError:  # the child is gone already: its status says how
        pass


def _collect(child: subprocess.Popen, read_end: int, deadline: float) -> tuple[bytes, int | None]:
    """Everything written to the report pipe until the child exits (then what is left in the
    pipe), and its status; None if the deadline came first. Never waits for EOF."""
    chunks: list[bytes] = []
    while (status := child.poll()) is None and (left := deadline - time.monotonic()) > 0:
        if select.select([read_end], [], [], min(left, 0.05))[0]:
            chunks.append(os.read(read_end, 65536))
    while select.select([read_end], [], [], 0)[0] and (chunk := os.read(read_end, 65536)):
        chunks.append(chunk)
    return b"".join(chunks), status


def _kill_group(child: subprocess.Popen) -> None:
    """SIGKILL the child's session (it leads its own group), grandchildren included, and reap it."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def _reports(data: bytes, token: str, count: int) -> list[tuple[int, str | None]]:
    """The well-formed reports carrying ``token``, in order; anything else is ignored."""
    reports: list[tuple[int, str | None]] = []
    prefix = token.encode() + b" "
    for line in data.split(b"\n"):
        if not line.startswith(prefix):
            continue
        try:
            index, problem = json.loads(line[len(prefix):])
        except (ValueError, TypeError):
            continue
        if type(index) is int and index == len(reports) < count and (problem is None or isinstance(problem, str)):
            reports.append((index, problem))
    return reports


def _how(status: int) -> str:
    """``exit status N``, or ``signal N (NAME)`` for a child a signal ended (``returncode < 0``)."""
    if status >= 0:
        return f"exit status {status}"
    try:
        return f"signal {-status} ({signal.Signals(-status).name})"
    except ValueError:  # a real-time signal has no name
        return f"signal {-status}"


def _last_line(output: str) -> str:
    lines = output.strip().splitlines()
    return f"; its last output: {lines[-1][:200]}" if lines else ""
