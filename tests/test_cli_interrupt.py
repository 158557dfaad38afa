"""Ctrl-C ends any ``otpy`` command with exit 130 and no traceback: while the command's modules
still import, and inside a command that does not catch it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# The CLI's import of otpy.cli.main is held (a finder that waits) until the test sends SIGINT:
# the moment a user's Ctrl-C lands during the ~0.25 s the imports take.
HELD_IMPORT = """
import sys, threading
class Hold:
    def find_spec(self, name, path=None, target=None):
        if name == "otpy.cli.main":
            print("importing", flush=True)
            threading.Event().wait(30)
        return None
sys.meta_path.insert(0, Hold())
from otpy.cli.entry import main
sys.argv = ["otpy", "nodes"]
main()
"""

# A command's own code interrupted: click alone says "Aborted!" and exits 1.
IN_COMMAND = """
import sys, threading, click
from otpy.cli import main as cli_main
@cli_main.main.command("wait-forever")
def wait_forever():
    print("waiting", flush=True)
    threading.Event().wait(30)
from otpy.cli.entry import main
sys.argv = ["otpy", "wait-forever"]
main()
"""


@pytest.mark.parametrize("script, said", [(HELD_IMPORT, "importing"), (IN_COMMAND, "waiting")],
                         ids=["while-importing", "inside-a-command"])
def test_ctrl_c_is_exit_130_without_a_traceback(script, said):
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == said
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err, err
