"""``otpy reload``: make a running node match its edited topology file.

(To be built.)
"""

from __future__ import annotations

import click


@click.command()
def reload() -> None:
    """Apply an edited topology to the running node. Not built yet."""
    raise click.UsageError("otpy reload is not built yet")
