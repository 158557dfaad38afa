"""Where a node keeps its sockets and state: a private folder per node and user.

``$XDG_RUNTIME_DIR/otpy/<node>/`` when that variable is set, else ``/tmp/otpy-<uid>/<node>/``.
Folders are created with mode 0700 and checked to belong to this user: nobody else can
reach the sockets inside. ``OTPY_RUNTIME_DIR`` overrides the root (tests use it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..specs.model import check_name, name_problem


class RuntimeDirError(RuntimeError):
    """The runtime folder exists but is not private to this user; fix or remove it.

    Refused alike by the node (which would bind sockets there) and by clients (which would
    connect to whatever socket is there): a symlink, another owner, or not a folder.
    """


def runtime_root() -> Path:
    if override := os.environ.get("OTPY_RUNTIME_DIR"):
        return Path(override)
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "otpy"
    return Path(f"/tmp/otpy-{os.getuid()}")


def _private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:  # a file, or a symlink to nowhere: refused below
        pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot make the runtime folder {path}: {exc.strerror}; "
                              "set OTPY_RUNTIME_DIR to a folder of yours") from None
    own_folder(path)
    if stat.S_IMODE(path.lstat().st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def own_folder(path: Path, kind: str = "runtime folder") -> bool:
    """False if ``path`` does not exist; True if it is a folder of this user; else RuntimeDirError
    naming it as ``kind`` (a symlink is never followed: what is written there would land elsewhere)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        what = "a symlink" if stat.S_ISLNK(info.st_mode) else (
            "not a folder" if not stat.S_ISDIR(info.st_mode) else f"owned by uid {info.st_uid}")
        raise RuntimeDirError(f"{kind} {path} is {what}, not a folder owned by uid {os.getuid()}; "
                              "remove it and retry")
    return True


def private_dir(path: Path) -> Path:
    """A folder inside a node's folder (``curve/``), created 0700; RuntimeDirError for a symlink,
    another owner or not a folder: nothing otpy writes may land outside the node's folder."""
    return _private_dir(path)


def _kind(path: Path) -> str:
    """What ``path`` is, for a refusal: a symlink, a FIFO, a folder, a socket, ..."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "unreadable"
    for test, word in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return word
    return "not readable and writable by its owner"


def _not_a_file(path: Path, exc: OSError | None = None) -> RuntimeDirError:
    why = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    return RuntimeDirError(f"{path} is {_kind(path)}{why}, not a regular file of uid {os.getuid()}; "
                           "remove it and retry")


def _open_regular(path: Path, flags: int) -> int:
    """An fd of ``path``, a regular file of this user: never through a symlink, never blocking
    on a FIFO (O_NONBLOCK). FileNotFoundError if absent; RuntimeDirError for anything else."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _not_a_file(path, exc) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise _not_a_file(path)
    return fd


def write_private(path: Path, data: bytes) -> None:
    """Make ``data`` the whole of ``path``, mode 0600 whatever the umask: how the node writes
    every file in its folder (a symlink or FIFO planted there is refused, never followed)."""
    fd = _open_regular(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def open_private_append(path: Path) -> int:
    """``path`` (``node.log``) opened for appending, created 0600: same refusals as write_private."""
    fd = _open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.fchmod(fd, 0o600)
    return fd


def read_private(path: Path, limit: int = 4096) -> bytes | None:
    """The first ``limit`` bytes of ``path``, None if absent; RuntimeDirError if not a regular file."""
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, limit, 0)
    finally:
        os.close(fd)


def node_dir(name: str) -> Path:
    """The node's private folder, created if needed."""
    check_name(name, "node name")
    _private_dir(runtime_root())
    return _private_dir(runtime_root() / name)


def existing_node_dir(name: str) -> Path | None:
    """The node's folder if it exists (checked private, never created), else None: for clients."""
    check_name(name, "node name")
    root = runtime_root()
    if not own_folder(root) or not own_folder(root / name):
        return None
    return root / name


def control_endpoint(name: str) -> str:
    return f"ipc://{runtime_root() / check_name(name, 'node name') / 'control.sock'}"


def events_endpoint(name: str) -> str:
    return f"ipc://{runtime_root() / check_name(name, 'node name') / 'events.sock'}"


def node_sockets(name: str) -> list[Path]:
    """What only a live node may use in its folder: its sockets (removed when it is found dead)."""
    from ..specs.rules import NODE_SOCKETS

    folder = runtime_root() / check_name(name, "node name")
    return [folder / socket for socket in NODE_SOCKETS if "/" not in socket] + [folder / "agents"]


def running_nodes() -> list[str]:
    """Names of nodes of this user that have a control socket (they may have died: ask them)."""
    root = runtime_root()
    if not own_folder(root):
        return []
    return sorted(p.name for p in root.iterdir()
                  if name_problem(p.name) is None and (p / "control.sock").exists())


# Where agents listen: one socket per agent id, the same for every incarnation.

def node_folder_path(node: str) -> str:
    """The absolute path of node ``node``'s folder under this runtime root (never created):
    the ``node_folder`` the spec checks (``specs.rules``) measure socket paths against."""
    return os.path.join(os.path.abspath(runtime_root()), node)


def node_path_problem(node: str) -> str | None:
    """Why node ``node`` cannot bind its own sockets under this runtime root (AF_UNIX's limit), or None."""
    from ..specs.rules import node_socket_problem  # the one rule, shared with ``otpy validate``

    problem = node_socket_problem(node_folder_path(node))
    return f"node {node!r}: {problem}" if problem else None


def socket_path_problem(node: str, child_id: str) -> str | None:
    """Why ``child_id`` cannot be an agent of node ``node`` here: not a name, or its socket path
    would be longer than AF_UNIX allows (``specs.rules.id_problem``, the one rule for ids)."""
    from ..specs.rules import id_problem

    return id_problem(child_id, node_folder_path(node))


def agents_dir(node: str) -> Path:
    return runtime_root() / check_name(node, "node name") / "agents"


def agent_socket_path(node: str, child_id: str) -> Path:
    """Raises ValueError for an id that is not a name (``specs.model.NAME_PATTERN``): never a path."""
    return agents_dir(node) / f"{check_name(child_id)}.sock"


def agent_endpoint(node: str, child_id: str) -> str:
    """``ipc://<runtime_root()>/<node>/agents/<child_id>.sock``: the same for every incarnation."""
    return f"ipc://{agent_socket_path(node, child_id)}"


def make_agents_dir(node: str) -> Path:
    """The node's ``agents`` folder, created with mode 0700 (the node folder is private too)."""
    path = agents_dir(node)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def notify_socket_path(node: str, name: str) -> Path:
    """Where a ``ready = "notify"`` command's ``NOTIFY_SOCKET`` is bound: ``notify/<name>.sock`` in
    the node's folder (``notify/`` created 0700, like the node folder: only this user reaches it)."""
    return private_dir(node_dir(node) / "notify") / f"{check_name(name, 'notify socket name')}.sock"
