"""Keys for the opt-in TCP control endpoint: ZeroMQ CURVE, with an allow-list of clients.

The ipc control socket is private by file permissions; a TCP endpoint is reachable by anyone
on the network, so otpy serves it only with CURVE: traffic is encrypted and only clients
whose public key is in the node's ``curve/authorized/`` folder get through the handshake
(ZeroMQ's ZAP authenticator). Keys live in the node's private folder (0700):

    curve/server.key            the node's public key: give it to clients
    curve/server.key_secret     the node's secret key: stays here
    curve/client.key_secret     a client key pair made with the node: copy it to a client machine
    curve/authorized/*.key      public keys of the clients allowed in (client.key is there)

A client needs ``server.key`` and its own ``*.key_secret`` in one folder:
``otpy.connect(name, endpoint="tcp://host:port", keys=FOLDER)``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq
import zmq.auth

from ..host.runtime_dir import RuntimeDirError, node_dir, private_dir


def keys_dir(node: str) -> Path:
    return node_dir(node) / "curve"


def ensure_keys(node: str) -> Path:
    """The node's key folder, with a server and a client key pair made on first use.

    ``curve/`` and ``curve/authorized/`` pass the runtime's private-folder check and every key
    file present must be a regular file (``check_key_files``): a symlink planted there would
    have the secret keys written, or read, outside the node's folder. RuntimeDirError, one line.
    """
    folder = private_dir(keys_dir(node))
    authorized = private_dir(folder / "authorized")
    check_key_files(folder, authorized)
    if not (folder / "server.key_secret").exists():
        zmq.auth.create_certificates(folder, "server")
    if not (folder / "client.key_secret").exists():
        public, _ = zmq.auth.create_certificates(folder, "client")
        os.replace(public, authorized / "client.key")
    for secret in folder.glob("*.key_secret"):
        os.chmod(secret, 0o600, follow_symlinks=False)
    return folder


def check_key_files(*folders: Path) -> None:
    """Every ``*.key`` and ``*.key_secret`` in ``folders`` is a regular file; else RuntimeDirError
    naming it (never followed: lstat)."""
    for folder in folders:
        for path in (*folder.glob("*.key"), *folder.glob("*.key_secret")):
            if not stat.S_ISREG(path.lstat().st_mode):
                raise RuntimeDirError(f"{path} is not a regular file (a symlink?); remove it and retry")


def serve_curve(socket: zmq.Socket, folder: Path) -> None:
    """Make ``socket`` a CURVE server with the node's keys (before it binds)."""
    public, secret = zmq.auth.load_certificate(folder / "server.key_secret")
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


def connect_curve(socket: zmq.Socket, folder: str | os.PathLike) -> None:
    """Make ``socket`` a CURVE client from a folder holding ``server.key`` and one ``*.key_secret``."""
    folder = Path(folder)
    secrets = sorted(p for p in folder.glob("*.key_secret") if p.name != "server.key_secret")
    if not secrets or not (folder / "server.key").exists():
        raise FileNotFoundError(f"{folder} needs server.key and a client *.key_secret (see otpy.wire.curve)")
    public, secret = zmq.auth.load_certificate(secrets[0])
    server_public, _ = zmq.auth.load_certificate(folder / "server.key")
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
