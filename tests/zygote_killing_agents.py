"""A program whose module SIGKILLs the process importing it (the zygote), a given number of times.

``OTPY_TEST_KILL_ZYGOTE`` names a file holding how many imports are left to die; each import
that finds it above 0 takes one off and kills its importer. Without the variable (pytest's
collection) it imports at once. Used by ``test_zygote_respawn``.
"""

from __future__ import annotations

import os
import signal

from otpy.agent.program import Program


def _maybe_die() -> None:
    path = os.environ.get("OTPY_TEST_KILL_ZYGOTE")
    if not path:
        return
    with open(path) as f:
        left = int(f.read() or 0)
    if left > 0:
        with open(path, "w") as f:
            f.write(str(left - 1))
        os.kill(os.getpid(), signal.SIGKILL)


_maybe_die()


class KillsItsImporter(Program):
    def setup(self, args, config):
        print("set up", flush=True)
