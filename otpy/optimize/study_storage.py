"""Where ``otpy optimize`` keeps its study: any optuna storage URL, by default a durable file.

A study is worth keeping: its trials cost real processes and minutes, and running the command
again resumes it. So the default is a per-user SQLite file under the XDG data folder, not the
node's runtime folder (``$XDG_RUNTIME_DIR`` is a tmpfs emptied at logout and reboot)::

    $OTPY_DATA_DIR/NODE/optuna.db                 when OTPY_DATA_DIR is set
    $XDG_DATA_HOME/otpy/NODE/optuna.db            else, when XDG_DATA_HOME is set
    ~/.local/share/otpy/NODE/optuna.db            else

``--storage URL`` takes any URL optuna's RDB storage takes (``sqlite:///PATH``,
``postgresql://...``, ``mysql://...``); ``optuna-dashboard URL`` opens the same study.
"""

from __future__ import annotations

import os
from pathlib import Path

from .optimizer import OptimizeError

DATA_DIR_ENV = "OTPY_DATA_DIR"
STUDY_FILE = "optuna.db"


def data_dir() -> Path:
    """otpy's per-user data folder (see the module's docstring)."""
    if own := os.environ.get(DATA_DIR_ENV):
        return Path(own)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"  # the XDG rule
    return base / "otpy"


def default_storage(node: str) -> str:
    """The default study storage of node ``node``: ``sqlite:///`` its file, its folder made."""
    folder = data_dir() / node
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise OptimizeError(f"cannot make the study's folder {str(folder)!r}: {exc.strerror}; "
                            f"set {DATA_DIR_ENV} to a writable folder, or give --storage URL") from None
    return f"sqlite:///{folder / STUDY_FILE}"


def checked_storage(url: str) -> str:
    """``url`` if optuna can open it as a storage; else ``OptimizeError`` (a usage error) naming
    ``--storage``. Opened once here, so a wrong URL is refused before any node starts."""
    if "://" not in url:
        raise OptimizeError(f"--storage: got {url!r}; expected an optuna storage URL, e.g. "
                            "sqlite:///PATH/optuna.db or postgresql://USER@HOST/DB", usage=True)
    import optuna

    try:
        optuna.storages.RDBStorage(url)
    except Exception as exc:  # sqlalchemy's: a URL it cannot read or a driver missing (usage), a server down
        from sqlalchemy.exc import ArgumentError

        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OptimizeError(f"--storage: cannot open {url!r}: {reason}",
                            usage=isinstance(exc, (ArgumentError, ImportError, ValueError))) from None
    return url
