"""``otpy logs``: the last lines of one child's log, or the node's, and follow them.

(To be built.)
"""

from __future__ import annotations

import click


@click.command()
def logs() -> None:
    """Print a child's (or the node's) log. Not built yet."""
    raise click.UsageError("otpy logs is not built yet")
