"""``otpy keys``: the CURVE key pairs of clients that reach a node's TCP control endpoint.

    otpy keys new DIR [--name NAME] [--json]     a key pair NAME.key / NAME.key_secret in DIR
    otpy keys authorize NODE PUBLIC.key [--json] let that client in to local node NODE
    otpy keys revoke NODE NAME [--json]          shut client NAME (NAME.key) out of it again

A client needs, in one folder (``--keys DIR``), its own ``NAME.key_secret`` and the node's
public key ``server.key`` (``curve/server.key`` in the node's folder). The node lets in the
public keys in its ``curve/authorized/`` as that folder is at each handshake, so that a running
node follows ``authorize`` and ``revoke`` at once (``otpy.wire.curve.AuthorizedKeys``). Exit
codes: 0 done, 2 refused (a folder or file otpy will not use or overwrite, a key that is not
there; the message names it).
"""

from __future__ import annotations

import json

import click

from .exits import usage_exit
from .options import checked_name, node_name_option
from ..wire.curve import KeyFolderError, authorize as authorize_key, new_key_pair, revoke as revoke_key


@click.group("keys")
def keys_group() -> None:
    """Make and authorize the CURVE keys of remote clients (--endpoint, --keys)."""


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
               f"curve/authorized/); copy the node's curve/server.key into {folder}; then "
               f"`otpy status --endpoint tcp://HOST:PORT --keys {folder}`")


@keys_group.command("authorize")
@click.argument("node", callback=node_name_option)
@click.argument("public", metavar="PUBLIC.key", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print {node, authorized} as JSON.")
def authorize(node: str, public: str, as_json: bool) -> None:
    """Let the client of PUBLIC.key (`otpy keys new` made it) reach local node NODE over TCP:
    the file is copied into the node's curve/authorized/ (0600; a key of that name already
    there is not replaced). A running node lets it in at its next connection: no restart."""
    try:
        target = authorize_key(node, public)
    except (KeyFolderError, OSError) as exc:
        usage_exit(f"otpy: keys authorize: {exc}")
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
    try:
        target = revoke_key(node, name)
    except (KeyFolderError, OSError) as exc:
        usage_exit(f"otpy: keys revoke: {exc}")
    if as_json:
        click.echo(json.dumps({"node": node, "revoked": str(target)}))
        return
    click.echo(f"revoked: {target}\n(node {node!r} refuses this key from now on; a connection it has already gets "
               "no answer)")
