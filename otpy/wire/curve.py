"""Keys for the opt-in TCP control endpoint: ZeroMQ CURVE, with an allow-list of clients.

The ipc control socket is private by file permissions; a TCP endpoint is reachable by anyone
on the network, so otpy serves it only with CURVE: traffic is encrypted and only clients
whose public key is in the node's ``curve/authorized/`` folder get through the handshake
(ZeroMQ's ZAP authenticator). A node's keys are its identity and its allow-list, so they live
in its durable state folder, not in its runtime folder (a tmpfs emptied at reboot: a new
server key there would silently void every client's copy of ``server.key`` and every
authorization): ``$XDG_STATE_HOME/otpy/NODE/curve/`` (``~/.local/state/...`` by default, the
folder that holds the node's logs, ``host.log_files.node_state_dir``), private (0700)::

    curve/server.key            the node's public key: give it to clients
    curve/server.key_secret     the node's secret key: stays here
    curve/client.key_secret     a client key pair made with the node: copy it to a client machine
    curve/authorized/*.key      public keys of the clients allowed in (client.key is there)

``ensure_keys`` makes them on first use: at the node's first start with ``control_tcp``, or
before it (``otpy keys server NODE``, ``otpy keys authorize``: so that two nodes that call
each other can each have the other's ``server.key`` before either starts). Keys an older otpy
kept in the runtime folder (``RUNTIME/NODE/curve``) are moved here once, the first time they
are looked for (``keys_dir``: the node logs it; ``take_over_keys``: the command prints it).

A client needs ``server.key`` and its own ``*.key_secret`` in one folder:
``otpy.connect(name, endpoint="tcp://host:port", keys=FOLDER)``, or ``--endpoint tcp://host:port
--keys FOLDER`` on the command line (``client_keys_problem`` says what such a folder lacks).
``otpy keys new`` makes a client key pair (``new_key_pair``), ``otpy keys authorize`` copies its
public key into a local node's ``authorized/`` (``authorize``), ``otpy keys revoke`` removes one
(``revoke``). A running node sees both at once: its ZAP authenticator asks ``AuthorizedKeys``,
which reads the folder's current keys (again only when the folder changed), at every CURVE
handshake, and the node checks the key of every TCP request (and of every subscriber, before
each remote event, ``node/remote_events``) against it: a revoked client's connection stays
open, but nothing it sends is answered from then on.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import zmq
import zmq.auth

from ..host.log_files import node_state_dir
from ..host.node_run import lock_holder
from ..host.runtime_dir import RuntimeDirError, existing_node_dir, own_folder, read_private, runtime_root, write_private
from ..specs.model import name_problem

TRUST_AFTER_NS = 2_000_000_000  # a folder changed less than 2 s ago is read again at every look (see AuthorizedKeys)
KEYS = "curve"  # the key folder's name, in the node's state folder (and, before, in its runtime folder)
log = logging.getLogger("otpy")


def _key_folder(path: Path) -> bool:
    """False if ``path`` does not exist; True if it is a folder of this user; else RuntimeDirError
    (a symlink: keys would be written, or read, elsewhere)."""
    return own_folder(path, "key folder")


def keys_dir(node: str) -> Path:
    """Node ``node``'s key folder, ``curve/`` in its durable state folder (never created here).
    Keys an older otpy kept in the node's runtime folder are moved there first, once (logged);
    RuntimeDirError or KeyFolderError, one line, when they cannot be (``take_over_keys``)."""
    folder = node_state_dir(node) / KEYS
    if (moved := _take_over(node, folder)) is not None:
        log.warning("otpy[%s]: %s", node, moved)
    return folder


def take_over_keys(node: str) -> str | None:
    """Move the keys an older otpy kept in node ``node``'s runtime folder (a tmpfs: gone at reboot)
    to its state folder, and say so: the line to print, None when there was nothing to move.
    Refused (KeyFolderError) while another process runs the node from those keys (an older
    node: it would lose its allow-list): stop it first. Done once: the runtime copy is removed."""
    return _take_over(node, node_state_dir(node) / KEYS)


def _take_over(node: str, folder: Path) -> str | None:
    if existing_node_dir(node) is None:  # RuntimeDirError if not private
        return None
    old = runtime_root() / node / KEYS
    if not _key_folder(old) or os.path.lexists(folder):  # the durable keys, once there, are the node's
        return None
    holder = lock_holder(old.parent)
    if holder is not None and holder != os.getpid():
        raise KeyFolderError(f"node {node!r} runs with its keys still in the runtime folder {old} (an older otpy "
                             f"kept them there): stop it, then retry (they move to {folder}, which outlives a reboot)")
    sources = [(old, "")] + ([(old / "authorized", "authorized")] if _key_folder(old / "authorized") else [])
    check_key_files(*(source for source, _ in sources))
    scratch = Path(tempfile.mkdtemp(prefix=f".{KEYS}-", dir=_made_private(folder.parent)))  # 0700
    try:
        for source, inside in sources:
            target = scratch / inside
            if inside:
                os.mkdir(target, 0o700)
            for path in (*source.glob("*.key"), *source.glob("*.key_secret")):
                write_private(target / path.name, read_private(path, 1 << 16) or b"")  # 0600, no link followed
                if inside == "" and path.name.endswith(".key"):
                    os.chmod(target / path.name, 0o644)  # server.key: for clients, as made
        try:
            os.rename(scratch, folder)
        except OSError:
            if os.path.lexists(folder):  # another process moved them meanwhile
                return None
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return (f"CURVE keys moved from the runtime folder {old} to {folder} (the runtime folder is emptied at reboot; "
            "the node's key and its authorized clients stay)")


def _made_private(path: Path, mode: int | None = None) -> Path:
    """``path`` and its missing parents made 0700; ``path`` must be a folder of this user (not a
    symlink; ``mode``: set to it). RuntimeDirError, one line."""
    try:
        for folder in (*reversed(path.parents), path):
            if not os.path.lexists(folder):
                try:
                    os.mkdir(folder, 0o700)
                except FileExistsError:
                    pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot make the key folder {path}: {exc.strerror}; set XDG_STATE_HOME to a "
                              "folder of yours") from None
    _key_folder(path)
    if mode is not None and stat.S_IMODE(path.lstat().st_mode) != mode:
        os.chmod(path, mode)
    return path


def ensure_keys(node: str) -> Path:
    """The node's key folder, with a server and a client key pair made on first use.

    ``curve/`` and ``curve/authorized/`` are folders of this user (0700, never a symlink) and
    every key file present must be a regular file (``check_key_files``): a symlink planted there
    would have the secret keys written, or read, elsewhere. A pair is made whole in a scratch
    folder and linked in (its secret first, never replacing one): two processes making the keys
    at once end with one pair. RuntimeDirError, one line.
    """
    folder = _made_private(keys_dir(node), 0o700)
    authorized = _made_private(folder / "authorized", 0o700)
    check_key_files(folder, authorized)
    _add_pair(folder, "server", folder / "server.key", 0o644)
    _add_pair(folder, "client", authorized / "client.key", 0o600)
    for secret in folder.glob("*.key_secret"):
        os.chmod(secret, 0o600, follow_symlinks=False)
    if not os.path.lexists(folder / "server.key"):  # removed by hand: its public half is in the secret file
        public, _ = load_key(folder / "server.key_secret")
        write_private(folder / "server.key", b'#   ZeroMQ CURVE Public Certificate (otpy)\n\nmetadata\ncurve\n'
                                             b'    public-key = "' + public + b'"\n')
        os.chmod(folder / "server.key", 0o644)
    return folder


def _add_pair(folder: Path, name: str, public: Path, mode: int) -> None:
    """A key pair ``name`` in ``folder`` unless its secret is there: the secret linked in (0600),
    then its public half moved to ``public`` (``mode``)."""
    secret = folder / f"{name}.key_secret"
    if os.path.lexists(secret):
        return
    scratch = Path(tempfile.mkdtemp(prefix=".new-", dir=folder))
    try:
        made_public, made_secret = (Path(p) for p in zmq.auth.create_certificates(scratch, name))
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, mode)
        try:
            os.link(made_secret, secret)
        except FileExistsError:  # made meanwhile by another process: its pair stands
            return
        os.replace(made_public, public)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_key_files(*folders: Path) -> None:
    """Every ``*.key`` and ``*.key_secret`` in ``folders`` is a regular file; else RuntimeDirError
    naming it (never followed: lstat)."""
    for folder in folders:
        for path in (*folder.glob("*.key"), *folder.glob("*.key_secret")):
            if not stat.S_ISREG(path.lstat().st_mode):
                raise RuntimeDirError(f"{path} is not a regular file (a symlink?); remove it and retry")


MAX_KEY_BYTES = 64 * 1024  # a CURVE key file is a few hundred bytes


def load_key(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    """``(public, secret or None)`` of the CURVE key file ``path`` (``zmq.auth.load_certificate``'s
    format), read without waiting: a regular file of at most ``MAX_KEY_BYTES`` (a FIFO, a device or
    a folder named like a key is refused, never opened for a blocking read). OSError/ValueError
    naming the file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_size > MAX_KEY_BYTES:
            raise ValueError(f"{path} has {info.st_size} bytes, over the {MAX_KEY_BYTES} of a key file")
        data = os.read(fd, MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    public = secret = None
    for line in data.splitlines():
        line = line.strip()
        if line.startswith(b"#"):
            continue
        if line.startswith(b"public-key"):
            public = line.split(b"=", 1)[1].strip(b" \t'\"")
        elif line.startswith(b"secret-key"):
            secret = line.split(b"=", 1)[1].strip(b" \t'\"")
    if public is None:
        raise ValueError(f"no public key found in {path}")
    return public, secret


def serve_curve(socket: zmq.Socket, folder: Path) -> None:
    """Make ``socket`` a CURVE server with the node's keys (before it binds)."""
    public, secret = load_key(folder / "server.key_secret")
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


def connect_curve(socket: zmq.Socket, folder: str | os.PathLike) -> None:
    """Make ``socket`` a CURVE client from a folder holding ``server.key`` and one ``*.key_secret``."""
    folder = Path(folder)
    secrets = sorted(p for p in folder.glob("*.key_secret") if p.name != "server.key_secret")
    if not secrets or not (folder / "server.key").exists():
        raise FileNotFoundError(f"{folder} needs server.key and a client *.key_secret (see otpy.wire.curve)")
    public, secret = load_key(secrets[0])
    server_public, _ = load_key(folder / "server.key")
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public


class KeyFolderError(ValueError):
    """A key folder or key file otpy refuses to use or to write: one line naming it and saying why."""


def new_key_pair(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """A CURVE key pair ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) made in
    ``folder`` (``otpy keys new``). ``folder`` is made 0700 if absent (its parent must exist); an
    existing one must be a real folder (not a symlink) of this user that nobody else may read.
    Nothing is ever overwritten: a file of either name already there (a symlink included) is
    refused, naming it, and nothing is written. KeyFolderError, one line."""
    folder = Path(folder)
    _private_folder(folder)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (secret, public):
        if os.path.lexists(path):
            raise KeyFolderError(f"{path} already exists: it is never overwritten (remove it, or give another "
                                 "--name)")
    scratch = Path(tempfile.mkdtemp(prefix=".new-", dir=folder))  # 0700: made whole there, then linked in
    try:
        made_public, made_secret = (Path(p) for p in zmq.auth.create_certificates(scratch, name))
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        linked = []
        try:
            for made, path in ((made_secret, secret), (made_public, public)):
                os.link(made, path)  # never replaces a file: FileExistsError if one appeared meanwhile
                linked.append(path)
        except FileExistsError as exc:
            for path in linked:
                path.unlink(missing_ok=True)
            raise KeyFolderError(f"{exc.filename2 or exc.filename} already exists: it is never overwritten") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return public, secret


def _private_folder(folder: Path) -> None:
    """``folder`` made 0700 if absent; else checked: a folder (not a symlink) of this user, 0700-like."""
    try:
        os.mkdir(folder, 0o700)
        os.chmod(folder, 0o700)  # whatever the umask
        return
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise KeyFolderError(f"{folder}: its parent folder {folder.parent} does not exist") from None
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise KeyFolderError(f"{folder} is a symlink: give the real folder")
    if not stat.S_ISDIR(info.st_mode):
        raise KeyFolderError(f"{folder} exists and is not a folder")
    if info.st_uid != os.getuid():
        raise KeyFolderError(f"{folder} belongs to another user (uid {info.st_uid}): keys go in a folder of yours")
    if info.st_mode & 0o077:
        raise KeyFolderError(f"{folder} may be read by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                             f"`chmod 700 {folder}`, or give a new folder")


def client_keys_problem(folder: str | os.PathLike, private: bool = True) -> str | None:
    """What a client key folder (``--keys``) lacks to reach a node's TCP endpoint, in one line
    saying how to get it; None when it holds the node's ``server.key`` and exactly one client
    ``*.key_secret`` (``server.key_secret`` aside) that only its owner may read (``private``;
    ``otpy.connect`` leaves the file's mode to its caller)."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is not a folder: make one with `otpy keys new {folder}`"
    secrets = sorted(p for p in folder.glob("*.key_secret") if p.name != "server.key_secret")
    if not (folder / "server.key").is_file():
        return (f"{folder} has no server.key (the node's public key): copy it there from the node's host "
                "(`otpy keys server NODE` there prints where it is)")
    if not secrets:
        return (f"{folder} has no client secret key (*.key_secret): make a key pair with `otpy keys new {folder}` "
                "and authorize its public key on the node")
    if len(secrets) > 1:
        return f"{folder} has several client secret keys ({', '.join(p.name for p in secrets)}): keep one"
    for path in (folder / "server.key", secrets[0]):
        if not stat.S_ISREG(path.stat().st_mode):
            return f"{path} is not a regular file (a FIFO?): give the key file itself"
    mode = stat.S_IMODE(secrets[0].stat().st_mode)
    if private and mode & 0o077:
        return f"{secrets[0]} may be read by others (mode {mode:04o}): `chmod 600 {secrets[0]}`"
    for path, needs_secret in ((folder / "server.key", False), (secrets[0], True)):
        try:
            _, secret = load_key(path)
        except Exception as exc:  # not a ZeroMQ certificate: say which file
            return f"{path} is not a CURVE key file ({exc})"
        if needs_secret and secret is None:
            return f"{path} holds no secret key: use the NAME.key_secret `otpy keys new` made"
    return None


def authorize(node: str, public: str | os.PathLike) -> Path:
    """Copy the client public key file ``public`` into local node ``node``'s ``curve/authorized/``
    (0600, as ``NAME.key``): a regular file holding a public key and no secret; an authorized key
    of that name already there is never replaced. A node that has no keys yet (never started with
    ``control_tcp``) gets them now (``ensure_keys``). KeyFolderError, one line."""
    source = Path(public)
    try:
        info = source.lstat()
    except FileNotFoundError:
        raise KeyFolderError(f"{source}: no such file") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFolderError(f"{source} is not a regular file (a symlink?): give the key file itself")
    if not source.name.endswith(".key") or source.name == "server.key":
        raise KeyFolderError(f"{source}: expected a client's public key file, NAME.key (`otpy keys new` makes one)")
    try:
        key, secret = load_key(source)
    except Exception as exc:
        raise KeyFolderError(f"{source} is not a CURVE key file ({exc})") from None
    if secret is not None:
        raise KeyFolderError(f"{source} holds a secret key: authorize the public one (NAME.key), the secret stays "
                             "with the client")
    authorized = ensure_keys(node) / "authorized"  # before the node's first start too: its keys made now
    target = authorized / source.name
    for existing in authorized.glob("*.key"):
        if load_key(existing)[0] == key:
            raise KeyFolderError(f"that key is already authorized ({existing})")
    try:
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyFolderError(f"{target} already exists (another key of that name): it is never replaced; "
                             "rename the file you authorize") from None
    with os.fdopen(descriptor, "wb") as out:
        out.write(source.read_bytes())
    return target


class AuthorizedKeys:
    """The public keys a node lets in: its ``curve/authorized/*.key`` as they are now.

    ``callback`` is the credentials provider of ZeroMQ's ZAP authenticator
    (``configure_curve_callback``): asked at each CURVE handshake. ``allows`` checks the
    ``User-Id`` of a message (the z85 key the authenticator gave the connection) for the
    requests and subscribers of a connection made before a revocation. The folder is read
    again only when its stat changed (mtime, ctime, inode): a key added or removed (``otpy keys
    authorize/revoke``, cp, mv, rm) changes it; one stat per look otherwise. A folder changed
    within ``TRUST_AFTER_NS`` is read at every look, so that two changes within one tick of a
    coarse file-system clock are both seen. A key file rewritten in place under the same name
    is not a change of the folder: revoke it and authorize the new one. A file that is not a
    regular file or not a public key is skipped; a folder that is gone lets nobody in."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._stamp: tuple[int, int, int] | None = None
        self._keys: frozenset[bytes] = frozenset()
        self.generation = 0  # +1 each time a key is no longer there (see ``node/remote_events``)

    def current(self) -> frozenset[bytes]:
        """The z85 public keys allowed now."""
        try:
            info = os.stat(self.folder)
        except OSError:
            self._update(frozenset(), None)
            return self._keys
        stamp = (info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
        if stamp != self._stamp:
            settled = time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > TRUST_AFTER_NS
            self._update(_read_keys(self.folder), stamp if settled else None)
        return self._keys

    def _update(self, keys: frozenset[bytes], stamp: tuple[int, int, int] | None) -> None:
        if self._keys - keys:
            self.generation += 1
        self._keys, self._stamp = keys, stamp

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: may the client of z85 public key ``key`` in?"""
        return key in self.current()

    def allows(self, user_id: str | None) -> bool:
        """Is the key a connection was let in with (its messages' ``User-Id``) still allowed?"""
        return user_id is not None and user_id.encode("ascii", "replace") in self.current()


def _read_keys(folder: Path) -> frozenset[bytes]:
    keys = set()
    try:
        paths = list(folder.glob("*.key"))
    except OSError:
        return frozenset()
    for path in paths:
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            public, _ = load_key(path)
        except Exception:  # unreadable, not a key file, removed meanwhile: not a key
            continue
        keys.add(public)
    return frozenset(keys)


def start_authenticator(context: zmq.Context, folder: str | os.PathLike):
    """A started ZAP authenticator on ``context`` (an asyncio one's: ``AsyncioAuthenticator``)
    that lets in the keys of ``folder`` (``curve/authorized``) as they are at each handshake;
    returns ``(authenticator, keys)``: stop the first when done, ``keys.allows`` checks a
    message's ``User-Id``."""
    import zmq.asyncio

    if isinstance(context, zmq.asyncio.Context):
        from zmq.auth.asyncio import AsyncioAuthenticator as Authenticator
    else:
        from zmq.auth.thread import ThreadAuthenticator as Authenticator
    keys = AuthorizedKeys(folder)
    authenticator = Authenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=keys)
    return authenticator, keys


def revoke(node: str, name: str) -> Path:
    """Remove the client key ``NAME.key`` (``NAME`` or ``NAME.key``) from local node ``node``'s
    ``curve/authorized/``: a running node refuses that key's next handshake and drops its
    connections' requests from then on. KeyFolderError, one line, naming what is there."""
    stem = name.removesuffix(".key")
    if problem := name_problem(stem, "key name"):
        raise KeyFolderError(problem)
    folder = keys_dir(node)
    if not _key_folder(folder):
        raise KeyFolderError(f"no node {node!r} on this host (no key folder {folder}): revoke on the node's host")
    authorized = folder / "authorized"
    target = authorized / f"{stem}.key"
    try:
        target.unlink()
    except FileNotFoundError:
        there = sorted(p.stem for p in authorized.glob("*.key")) if authorized.is_dir() else []
        raise KeyFolderError(f"node {node!r} has no authorized key {stem!r} (authorized: "
                             f"{', '.join(there) or 'none'})") from None
    return target
