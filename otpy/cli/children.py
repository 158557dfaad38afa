"""The commands on one child: ``start-child``, ``terminate-child``, ``restart-child``, ``delete-child``.

Exit codes as everywhere: 0 success, 1 the operation failed (the message says why), 2 usage or input error.
"""

from __future__ import annotations

import shlex

import click

from .exits import ask, json_object_or_exit, outcome_exit, usage_exit
from .options import NODE_OPTION, SUP_OPTION, checked_name
from ..specs.model import ChildSpec
from ..specs.rules import spec_problems


@click.command("start-child")
@click.argument("sup")
@click.option("--id", "child_id", required=True, callback=lambda ctx, param, value: checked_name(value, "id"),
              help="The new child's id.")
@click.option("--template", help="A template of the dynamic supervisor SUP.")
@click.option("--program", help="A Python program, MODULE:ATTR.")
@click.option("--command", help="A command line (split like a shell does).")
@click.option("--args", "args_json", default="{}", help="JSON object: the program's or template's args.")
@click.option("--restart", type=click.Choice(["permanent", "transient", "temporary"]), default="permanent",
              show_default=True, help="Restart type (with --program or --command).")
@NODE_OPTION
def start_child(sup, child_id, template, program, command, args_json, restart, node_name) -> None:
    """Start a child under SUP from a template, a program or a command."""
    args = json_object_or_exit(args_json)
    if sum(x is not None for x in (template, program, command)) != 1:
        usage_exit("start-child: give exactly one of --template, --program and --command")
    try:
        argv = tuple(shlex.split(command)) if command is not None else None
    except ValueError as exc:
        usage_exit(f"start-child: --command cannot be split like a shell line: {exc}")
    spec = ChildSpec(id=child_id, program=program, args=args, restart=restart, command=argv)
    checked = spec if template is None else ChildSpec(id=child_id, command=("-",), args=args)  # its args alone
    if problems := spec_problems(checked):
        usage_exit(f"start-child: {'; '.join(problems)}")
    if template is not None:
        outcome_exit("start-child", ask(node_name, "start-child",
                                          lambda c: c.start_from_template(sup, template, child_id, args)))
    outcome_exit("start-child", ask(node_name, "start-child", lambda c: c.start_child(sup, spec)))


@click.command("terminate-child")
@click.argument("child_id", metavar="ID")
@SUP_OPTION
@NODE_OPTION
def terminate_child(child_id: str, sup: str | None, node_name: str | None) -> None:
    """Stop child ID (its spec is kept unless temporary; no restart)."""
    outcome_exit("terminate-child", ask(node_name, "terminate-child", lambda c: c.terminate_child(child_id, sup)))


@click.command("restart-child")
@click.argument("child_id", metavar="ID")
@SUP_OPTION
@NODE_OPTION
def restart_child(child_id: str, sup: str | None, node_name: str | None) -> None:
    """Start child ID again after terminate-child."""
    outcome_exit("restart-child", ask(node_name, "restart-child", lambda c: c.restart_child(child_id, sup)))


@click.command("delete-child")
@click.argument("child_id", metavar="ID")
@SUP_OPTION
@NODE_OPTION
def delete_child(child_id: str, sup: str | None, node_name: str | None) -> None:
    """Forget the spec of stopped child ID."""
    outcome_exit("delete-child", ask(node_name, "delete-child", lambda c: c.delete_child(child_id, sup)))
