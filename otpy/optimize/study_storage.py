"""Where ``otpy optimize`` keeps its study: any optuna storage URL, by default a durable file.

A study is worth keeping: its trials cost real processes and minutes, and running the command
again resumes it. So the default is a per-user SQLite file under the XDG data folder, not the
node's runtime folder (``$XDG_RUNTIME_DIR`` is a tmpfs emptied at logout and reboot)::

    $OTPY_DATA_DIR/NODE/optuna.db                 when OTPY_DATA_DIR is set
    $XDG_DATA_HOME/otpy/NODE/optuna.db            else, when XDG_DATA_HOME is set
    ~/.local/share/otpy/NODE/optuna.db            else

``--storage URL`` takes any URL optuna's RDB storage takes (``sqlite:///PATH``,
``postgresql://...``, ``mysql://...``); ``optuna-dashboard URL`` opens the same study. A
``postgresql://`` URL (which SQLAlchemy gives to psycopg2) goes to psycopg 3 when psycopg2 is
not installed and psycopg is (``driver_url``). A URL is shown with its password masked
(``specs.values.mask_url``: ``postgresql+psycopg://user:***@host/db``, a ``?password=`` too), in
messages as in ``--json``.

Several trial workers share a study only through a database they all open: ``--workers N``
(N > 1) refuses in-memory storage (``shared_storage``); an SQLite file serves the workers of
one host (optuna's SQLite locking), a PostgreSQL (or MySQL) server those of several.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..specs.values import mask_secret
from ..specs.values import mask_url as masked  # the one masking rule: user part and ?password= alike
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
    """The default study storage of node ``node``: ``sqlite:///`` its file, made private (folders
    0700, the file 0600, whatever the umask) before optuna opens it: a study's trials and values
    are the user's. A symlink, a FIFO or another user's folder there is refused, as for the logs."""
    from ..host.log_files import LogFolderError, make_private_dir
    from ..host.runtime_dir import RuntimeDirError, open_private_append

    folder = data_dir() / node
    try:
        make_private_dir(data_dir())  # otpy/ itself too: the studies' names are the user's as well
        make_private_dir(folder)
        os.close(open_private_append(folder / STUDY_FILE))  # created 0600 (optuna's would follow the umask)
    except (LogFolderError, RuntimeDirError) as exc:
        raise OptimizeError(f"the study's store: {exc}; or set {DATA_DIR_ENV} to a folder of yours, "
                            "or give --storage URL") from None
    return f"sqlite:///{folder / STUDY_FILE}"


def _sqlite_file(url: str) -> str | None:
    """The absolute path of an ``sqlite:///PATH`` URL's file, else None (another database, memory)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # refused with optuna's own words below
    if not parsed.drivername.startswith("sqlite") or not parsed.database or parsed.database == ":memory:":
        return None
    return os.path.abspath(parsed.database)


def _private_sqlite_file(url: str) -> None:
    """An ``sqlite:///PATH`` study file that does not exist yet is created 0600 (as the default one)
    before optuna opens it; one whose folder is missing is a usage error naming the folder (sqlite
    would say only "unable to open database file"). A file that exists keeps its owner's mode."""
    from ..host.runtime_dir import RuntimeDirError, open_private_append

    if (path := _sqlite_file(url)) is None or os.path.lexists(path):
        return
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise OptimizeError(f"--storage: cannot open {url!r}: the folder {folder!r} does not exist; "
                            "make it, or give a file in a folder that does", usage=True)
    try:
        os.close(open_private_append(Path(path)))
    except (OSError, RuntimeDirError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OptimizeError(f"--storage: cannot create {path!r}: {reason}", usage=True) from None


def driver_url(url: str) -> str:
    """``url``, with a bare ``postgresql://`` given to psycopg 3 (``postgresql+psycopg://``) when
    psycopg2, SQLAlchemy's default for it, is not installed and psycopg is."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url.partition("://")[2]
    return url


def in_memory(url: str | None) -> bool:
    """Whether ``url`` is a storage no other process can open (none, ``sqlite://``, ``:memory:``)."""
    return url is None or url in ("sqlite://", "sqlite:///") or ":memory:" in url


def shared_storage(url: str | None, option: str = "--workers") -> None:
    """``OptimizeError`` (a usage error) when several processes could not share ``url``'s study."""
    if in_memory(url):
        raise OptimizeError(f"{option}: several workers share one study through its storage, and "
                            f"{masked(url) or 'an in-memory study'} is this process's memory; give --storage "
                            "postgresql+psycopg://USER:PASSWORD@HOST/DB (workers on several hosts) or "
                            "sqlite:///PATH (workers of this host)", usage=True)


def checked_storage(url: str) -> str:
    """``url`` if optuna can open it as a storage; else ``OptimizeError`` (a usage error) naming
    ``--storage``. Opened once here, so a wrong URL is refused before any node starts."""
    if "://" not in url:
        raise OptimizeError(f"--storage: got {masked(url)!r}; expected an optuna storage URL, e.g. "
                            "sqlite:///PATH/optuna.db or postgresql://USER@HOST/DB", usage=True)
    _private_sqlite_file(url)
    url = driver_url(url)
    import optuna

    try:
        optuna.storages.RDBStorage(url)
    except Exception as exc:  # sqlalchemy's: a URL it cannot read or a driver missing (usage), a server down
        from sqlalchemy.exc import ArgumentError

        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OptimizeError(f"--storage: cannot open {masked(url)!r}: {mask_secret(reason, url)}",
                            usage=isinstance(exc, (ArgumentError, ImportError, ValueError))) from None
    return url
