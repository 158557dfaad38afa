"""How every ``otpy`` command ends when it cannot go on: one line on stderr and an exit code.

Exit codes: 0 success, 1 the operation failed (the message says why), 2 usage or input
error. Finding the node to talk to is the same for every command: none named or found is a
usage error (2); a node whose process died (stale) is a failure (1).
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from ..wire.client import NodeNotFound, NodeStale, pick_node

EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def node_or_exit(name: str | None) -> str:
    """The node to talk to: exit 2 if none is named or found, 1 if it died (stale)."""
    try:
        return pick_node(name)
    except NodeStale as exc:
        fail(f"otpy: {exc}", EXIT_FAILED)
    except NodeNotFound as exc:
        fail(f"otpy: {exc}", EXIT_USAGE)
