"""Programs for the spare tests. Kept in a module of their own: its first use is an import."""

from __future__ import annotations

import os

import otpy


class Fds(otpy.Program):
    """Answers with its pid and what each of its open fds is (fds 0-3 by number)."""

    def forward(self, **inputs):
        fds = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass  # the listing's own fd, closed by now
        low = {str(fd): _kind(target) for fd, target in fds.items() if fd <= 3}
        # Another thread of the worker may be listing /proc/self/fd too (the call socket's
        # connection cap counts fds): its listing's fd is no fd of the child's.
        high = sorted(_kind(target) for fd, target in fds.items() if fd > 3 and not target.endswith("/fd"))
        return {"pid": os.getpid(), "low": low, "high": high, "cwd": os.getcwd(),
                "env": {k: v for k, v in os.environ.items() if k.startswith("OTPY_") or k == "SPARE_TEST"}}


def _kind(target: str) -> str:
    """``pipe:[123]`` -> ``pipe``; ``/dev/null`` stays."""
    return target.split(":[")[0]
