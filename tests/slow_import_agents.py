"""A program whose module takes ``OTPY_TEST_SLOW_IMPORT`` seconds to import (none without it).

The zygote imports a program's module in itself, so it is rightly busy (not answering its
heartbeat) for that long; ``test_process_faults`` checks it is not killed for it.
No tests here: pytest collects this module with the variable unset, and it imports at once.
"""

from __future__ import annotations

import os
import time

from otpy.agent.program import Program

time.sleep(float(os.environ.get("OTPY_TEST_SLOW_IMPORT", "0")))


class SlowImport(Program):
    def setup(self, args, config):
        print("set up", flush=True)
