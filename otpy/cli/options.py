"""The options and name checks that several ``otpy`` commands share."""

from __future__ import annotations

import click

from ..specs.model import name_problem


def node_name_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A node name passes the name rule before any path is built from it."""
    return checked_name(value, "node name")


def checked_name(value: str | None, what: str) -> str | None:
    """``value`` if it passes the name rule (``specs.model.name_problem``); else an input error (exit 2)."""
    if value is not None and (problem := name_problem(value, what)):
        raise click.BadParameter(problem)
    return value


NODE_OPTION = click.option("--node", "node_name", metavar="NAME", callback=node_name_option,
                           help="The node to talk to (may be left out when only one runs).")
SUP_OPTION = click.option("--sup", metavar="SUP", help="The supervisor of the child (default: found by id).")
