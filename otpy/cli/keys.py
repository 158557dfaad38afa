"""``otpy keys``: a node's CURVE keys, and the key pairs of clients that reach its TCP endpoints.

    otpy keys new DIR [--name NAME] [--json]     a key pair NAME.key / NAME.key_secret in DIR
    otpy keys server NODE [--json]               local node NODE's key pair (made if absent): where server.key is
    otpy keys authorize NODE PUBLIC.key [--json] let that client in to local node NODE
    otpy keys revoke NODE NAME [--json]          shut client NAME (NAME.key) out of it again

A client needs, in one folder (``--keys DIR``), its own ``NAME.key_secret`` and the node's
public key ``server.key`` (``otpy keys server NODE`` on the node's host prints where it is).
A node's keys live in its durable state folder (``$XDG_STATE_HOME/otpy/NODE/curve/``): they
outlive reboots, and ``keys server`` and ``keys authorize`` make them before the node's first
start (two nodes that call each other exchange their keys, then both start). The node lets in
the public keys in its ``curve/authorized/`` as that folder is at each handshake, so that a
running node follows ``authorize`` and ``revoke`` at once (``otpy.wire.curve.AuthorizedKeys``).
Keys an older otpy kept in the runtime folder are moved to the state folder by the first of
these commands (or the node's start) that looks for them, which says so. Exit codes: 0 done,
2 refused (a folder or file otpy will not use or overwrite, a key that is not there; the
message names it).
"""

from __future__ import annotations

import json

import click

from .exits import usage_exit
from .options import checked_name, node_name_option
from ..host.runtime_dir import RuntimeDirError
from ..wire.curve import (
    KeyFolderError, authorize as authorize_key, ensure_keys, keys_dir, new_key_pair, revoke as revoke_key,
    take_over_keys,
)


@click.group("keys")
def keys_group() -> None:
    """A node's CURVE keys, and those of remote clients (--endpoint, --keys)."""


def _taken_over(node: str, command: str) -> None:
    """Keys an older otpy left in the runtime folder, moved now: said on stderr, once."""
    try:
        moved = take_over_keys(node)
    except (KeyFolderError, RuntimeDirError, OSError) as exc:
        usage_exit(f"otpy: keys {command}: {exc}")
    if moved is not None:
        click.echo(f"otpy: node {node!r}: {moved}", err=True)


def _key_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    checked_name(value, "key name")
    if value == "server":
        raise click.BadParameter("'server' is the node's key (server.key); give the client's own name")
    return value


@keys_group.command("new")
@click.argument("folder", metavar="DIR", type=click.Path())
@click.option("--name", default="client", show_default=True, callback=_key_name,
              help="The key pair's name: NAME.key (public) and NAME.key_secret.")
@click.option("--json", "as_json", is_flag=True, help="Print {folder, name, public, secret} as JSON.")
def new(folder: str, name: str, as_json: bool) -> None:
    """Make a CURVE key pair in DIR (made 0700 if absent; an existing DIR must be private):
    NAME.key, the public key to authorize on the node, and NAME.key_secret (0600), which
    stays here. Nothing is overwritten."""
    try:
        public, secret = new_key_pair(folder, name)
    except (KeyFolderError, OSError) as exc:
        usage_exit(f"otpy: keys new: {exc}")
    if as_json:
        click.echo(json.dumps({"folder": folder, "name": name, "public": str(public), "secret": str(secret)}))
        return
    click.echo(f"public key: {public}\n"
               f"secret key: {secret} (0600: it stays in this folder)\n"
               f"next: on the node's host, `otpy keys authorize NODE {public.name}` (copies it into the node's "
               f"curve/authorized/); copy the node's server.key (`otpy keys server NODE` there prints where it is) "
               f"into {folder}; then "
               f"`otpy status --endpoint tcp://HOST:PORT --keys {folder}`")


@keys_group.command("server")
@click.argument("node", callback=node_name_option)
@click.option("--json", "as_json", is_flag=True, help="Print {node, public, folder} as JSON.")
def server(node: str, as_json: bool) -> None:
    """Print where local node NODE's public key server.key is (the file to copy into a
    client's --keys folder), making the node's key pair first if it has none: before its first
    start too. The keys are in the node's durable state folder and outlive reboots."""
    _taken_over(node, "server")
    try:
        made = not (keys_dir(node) / "server.key_secret").exists()
        folder = ensure_keys(node)
    except (KeyFolderError, RuntimeDirError, OSError) as exc:
        usage_exit(f"otpy: keys server: {exc}")
    public = folder / "server.key"
    if made:
        click.echo(f"otpy: node {node!r} had no key pair: made one in {folder}", err=True)
    if as_json:
        click.echo(json.dumps({"node": node, "public": str(public), "folder": str(folder)}))
        return
    click.echo(str(public))


@keys_group.command("authorize")
@click.argument("node", callback=node_name_option)
@click.argument("public", metavar="PUBLIC.key", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print {node, authorized} as JSON.")
def authorize(node: str, public: str, as_json: bool) -> None:
    """Let the client of PUBLIC.key (`otpy keys new` made it) reach local node NODE over TCP:
    the file is copied into the node's curve/authorized/ (0600; a key of that name already
    there is not replaced). A running node lets it in at its next connection: no restart. A
    node never started yet gets its key pair now (see `otpy keys server`)."""
    _taken_over(node, "authorize")
    try:
        made = not (keys_dir(node) / "server.key_secret").exists()
        target = authorize_key(node, public)
    except (KeyFolderError, RuntimeDirError, OSError) as exc:
        usage_exit(f"otpy: keys authorize: {exc}")
    if made:
        click.echo(f"otpy: node {node!r} had no key pair: made one in {target.parent.parent}", err=True)
    if as_json:
        click.echo(json.dumps({"node": node, "authorized": str(target)}))
        return
    click.echo(f"authorized: {target}\n(node {node!r} lets this key in from its next connection on, running or not)")


@keys_group.command("revoke")
@click.argument("node", callback=node_name_option)
@click.argument("name", metavar="NAME")
@click.option("--json", "as_json", is_flag=True, help="Print {node, revoked} as JSON.")
def revoke(node: str, name: str, as_json: bool) -> None:
    """Shut the client of key NAME (the file NAME.key in local node NODE's curve/authorized/)
    out: the file is removed; a running node refuses that key's next handshake, and a
    connection it already has gets no answer from then on."""
    _taken_over(node, "revoke")
    try:
        target = revoke_key(node, name)
    except (KeyFolderError, RuntimeDirError, OSError) as exc:
        usage_exit(f"otpy: keys revoke: {exc}")
    if as_json:
        click.echo(json.dumps({"node": node, "revoked": str(target)}))
        return
    click.echo(f"revoked: {target}\n(node {node!r} refuses this key from now on; a connection it has already gets "
               "no answer)")
