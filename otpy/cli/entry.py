"""The ``otpy`` command's entry point: Ctrl-C ends any command with exit 130, never a traceback.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the interpreter is. The command's
modules take a moment to import (click, ZeroMQ, msgspec, pydantic: ~0.25 s): a Ctrl-C then
would print a traceback from inside an import, so this module imports nothing of otpy's until
``main`` runs, and catches it there. Inside a command, ``cli.main``'s group does the same
(click alone would print "Aborted!" and exit 1). 130 is 128 + SIGINT, as a shell reports it.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .main import main as cli

        cli()
    except KeyboardInterrupt:
        sys.exit(130)  # exits.EXIT_INTERRUPTED, not imported: nothing of otpy's is, before this try
