"""Where a node keeps its sockets and state: a private folder per node and user.

``$XDG_RUNTIME_DIR/otpy/<node>/`` when that variable is set, else ``/tmp/otpy-<uid>/<node>/``.
Folders are created with mode 0700 and checked to belong to this user: nobody else can
reach the sockets inside. ``OTPY_RUNTIME_DIR`` overrides the root (tests use it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._specs import check_name, name_problem


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
    _check_private(path)
    if stat.S_IMODE(path.lstat().st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _check_private(path: Path) -> bool:
    """False if ``path`` does not exist; True if it is a folder of this user; else RuntimeDirError."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        what = "a symlink" if stat.S_ISLNK(info.st_mode) else (
            "not a folder" if not stat.S_ISDIR(info.st_mode) else f"owned by uid {info.st_uid}")
        raise RuntimeDirError(f"runtime folder {path} is {what}, not a folder owned by uid {os.getuid()}; "
                              "remove it and retry")
    return True


def node_dir(name: str) -> Path:
    """The node's private folder, created if needed."""
    check_name(name, "node name")
    _private_dir(runtime_root())
    return _private_dir(runtime_root() / name)


def existing_node_dir(name: str) -> Path | None:
    """The node's folder if it exists (checked private, never created), else None: for clients."""
    check_name(name, "node name")
    root = runtime_root()
    if not _check_private(root) or not _check_private(root / name):
        return None
    return root / name


def control_endpoint(name: str) -> str:
    return f"ipc://{runtime_root() / check_name(name, 'node name') / 'control.sock'}"


def events_endpoint(name: str) -> str:
    return f"ipc://{runtime_root() / check_name(name, 'node name') / 'events.sock'}"


def node_sockets(name: str) -> list[Path]:
    """What only a live node may use in its folder: its sockets (removed when it is found dead)."""
    folder = runtime_root() / check_name(name, "node name")
    return [folder / "control.sock", folder / "events.sock", folder / "agents"]


def running_nodes() -> list[str]:
    """Names of nodes of this user that have a control socket (they may have died: ask them)."""
    root = runtime_root()
    if not _check_private(root):
        return []
    return sorted(p.name for p in root.iterdir()
                  if name_problem(p.name) is None and (p / "control.sock").exists())


# Where agents listen: one socket per agent id, the same for every incarnation.


def agents_dir(node: str) -> Path:
    return runtime_root() / check_name(node, "node name") / "agents"


def agent_socket_path(node: str, child_id: str) -> Path:
    """Raises ValueError for an id that is not a name (``_specs.NAME_PATTERN``): never a path."""
    return agents_dir(node) / f"{check_name(child_id)}.sock"


def agent_endpoint(node: str, child_id: str) -> str:
    """``ipc://<runtime_root()>/<node>/agents/<child_id>.sock``: the same for every incarnation."""
    return f"ipc://{agent_socket_path(node, child_id)}"


def make_agents_dir(node: str) -> Path:
    """The node's ``agents`` folder, created with mode 0700 (the node folder is private too)."""
    path = agents_dir(node)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
