"""Where a node's log files are on this machine, and the rotating handler that writes them.

A node's logs live in a durable folder of this user, not in the runtime folder (a tmpfs, gone
at reboot): ``$XDG_STATE_HOME/otpy/NODE/logs/`` (``~/.local/state`` when the variable is unset),
or the topology's ``[logs] folder``. Inside::

    node.log              the node's own lines (a separator line at each start)
    children/ID.log       one file per child: "TIMESTAMP out| line" / "TIMESTAMP err| line"
    *.log.1 ... *.log.N   older lines, after rotation (N: ``[logs] backups``)

Rotation is ``logging.handlers.RotatingFileHandler``'s (size-based, as supervisord's
``stdout_logfile_maxbytes`` / ``_backups``), on a size the handler counts as it writes (no stat
or seek a line), opened 0600 through ``O_NOFOLLOW`` (a planted symlink is refused, never
followed); folders made here are 0700. Writes are not fsynced.
"""

from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import stat
import sys
import time
from pathlib import Path

from ..specs.model import LogSettings, check_name

NODE_LOG = "node.log"
CHILDREN = "children"
FOLDER_LOCK = ".node"  # in a log folder: ".node.NAME", flock-ed by node NAME while it runs
FOLDER_RECORD = "log-folder"  # in the node's state folder: the custom [logs] folder of its last start
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # local time, then ".mmm"


class LogFolderError(RuntimeError):
    """A log folder (or file) otpy may not write: not a folder, a symlink, or another user's."""


def state_root() -> Path:
    """``$XDG_STATE_HOME/otpy`` (default ``~/.local/state/otpy``): what otpy keeps for a user between runs."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "otpy"


def node_state_dir(name: str) -> Path:
    return state_root() / check_name(name, "node name")


def default_log_dir(name: str) -> Path:
    return node_state_dir(name) / "logs"


def log_dir(name: str, settings: LogSettings | None = None) -> Path:
    """The node's log folder as its spec sets it (never created here)."""
    if settings is not None and settings.folder is not None:
        return Path(os.path.abspath(os.path.expanduser(settings.folder)))
    return default_log_dir(name)


def known_log_dir(name: str) -> Path:
    """The log folder of node ``name`` as its last start recorded it (a custom ``[logs] folder``),
    else the default: how ``otpy logs`` finds the files of a node that is not running."""
    record = node_state_dir(name) / FOLDER_RECORD
    try:
        text = record.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return default_log_dir(name)
    return Path(text) if text and os.path.isabs(text) else default_log_dir(name)


def nodes_with_logs() -> list[str]:
    """Names of the nodes that have a state folder (logs, or a recorded log folder)."""
    from ..specs.model import name_problem

    root = state_root()
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(p.name for p in entries if name_problem(p.name) is None and p.is_dir()
                  and (known_log_dir(p.name) / NODE_LOG).exists())


def child_log_path(folder: Path, child_id: str) -> Path:
    """``folder/children/ID.log``; ValueError for an id that is not a name (never a path)."""
    return folder / CHILDREN / f"{check_name(child_id)}.log"


def make_private_dir(path: Path) -> Path:
    """``path`` and its missing parents, created 0700; LogFolderError if it is not a folder of this
    user (a folder otpy made is kept 0700; a custom one keeps the mode its owner gave it)."""
    try:
        for folder in (*reversed(path.parents), path):  # each folder made here is 0700, parents too
            if not folder.exists():
                folder.mkdir(mode=0o700, exist_ok=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LogFolderError(f"cannot make the log folder {path}: {exc.strerror}; "
                             "set [logs] folder in the topology (or XDG_STATE_HOME) to a folder of yours") from None
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        what = "a symlink" if stat.S_ISLNK(info.st_mode) else (
            "not a folder" if not stat.S_ISDIR(info.st_mode) else f"owned by uid {info.st_uid}")
        raise LogFolderError(f"log folder {path} is {what}, not a folder of uid {os.getuid()}; "
                             "remove it or set [logs] folder to another")
    return path


def record_log_dir(name: str, folder: Path) -> None:
    """Remember a custom log folder in the node's state folder (``otpy logs`` of a stopped node);
    forget it when the node uses the default."""
    state = make_private_dir(node_state_dir(name))
    record = state / FOLDER_RECORD
    if folder == default_log_dir(name):
        record.unlink(missing_ok=True)
        return
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as file:
        file.write(f"{folder}\n")


def lock_log_folder(folder: Path, name: str) -> int:
    """Take ``folder`` for node ``name`` while the returned descriptor is open: a shared ``flock``
    on ``folder/.node.NAME`` (released when the node's process ends, however it ends), then no
    other name's file may be held: two nodes never write, and rotate, the same files.
    LogFolderError naming the node that holds it. A node of the same name in another runtime
    folder shares the folder (the default folder is per name)."""
    try:
        fd = os.open(folder / f"{FOLDER_LOCK}.{name}", os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        raise LogFolderError(f"cannot lock the log folder {folder}: {exc.strerror}") from None
    fcntl.flock(fd, fcntl.LOCK_SH)  # a prober holds it for a few microseconds at most
    if (holder := log_folder_user(folder, name)) is not None:
        os.close(fd)
        raise LogFolderError(f"log folder {folder} is used by node {holder!r}, which is running; "
                             "give each node its own [logs] folder")
    return fd


def log_folder_user(folder: Path, name: str) -> str | None:
    """A running node other than ``name`` that holds ``folder`` (``lock_log_folder``), else None."""
    try:
        entries = [p for p in folder.iterdir() if p.name.startswith(f"{FOLDER_LOCK}.")]
    except OSError:
        return None
    for entry in entries:
        holder = entry.name.removeprefix(f"{FOLDER_LOCK}.")
        if holder == name:
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder
        finally:
            os.close(fd)
    return None


def open_log_fd(path: Path) -> int:
    """``path`` opened for appending, created 0600, never through a symlink; LogFolderError if it
    is not a regular file of this user."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        raise LogFolderError(f"cannot write the log file {path}: {exc.strerror}; remove what is there") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise LogFolderError(f"log file {path} is not a regular file of uid {os.getuid()}; remove it")
    os.set_blocking(fd, True)
    os.fchmod(fd, 0o600)
    return fd


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """``RotatingFileHandler`` whose files are opened by ``open_log_fd`` (0600, no symlink).

    ``follow_fds``: file descriptors (a detached node's stdout and stderr) made to point at the
    current file again after each rotation, so raw writes follow the log instead of the backup."""

    def __init__(self, path: Path, settings: LogSettings, follow_fds: tuple[int, ...] = ()) -> None:
        self.follow_fds = follow_fds
        self._size = 0  # of the current file, counted by write_line (characters, as the stdlib counts)
        self._failed = False
        super().__init__(path, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8",
                         errors="backslashreplace", delay=True)

    def _open(self):
        fd = open_log_fd(Path(self.baseFilename))
        self._size = os.fstat(fd).st_size
        stream = open(fd, "a", encoding=self.encoding, errors=self.errors)
        for target in self.follow_fds:
            os.dup2(fd, target)
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        """A record as one line, formatted once, rotated by the counted size and flushed
        (``write_line``). The stdlib's ``emit`` asks ``shouldRollover`` first, which stats the path
        twice, formats the record a second time and seeks the file, for every record; the file
        here is a regular file of ours from its open (``open_log_fd``)."""
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str, flush: bool = True) -> None:
        """Append ``line`` (stamped, ending in a newline) and rotate as ``emit`` does, without a
        LogRecord: a child's flood costs one buffered write a line (``flush`` may come later)."""
        with self.lock:
            try:
                if self.stream is None:
                    self.stream = self._open()
                if 0 < self.maxBytes <= self._size + len(line) and self._size > 0:
                    self.doRollover()
                    self.stream = self.stream or self._open()
                self.stream.write(line)
                self._size += len(line)
                if flush:
                    self.stream.flush()
            except (OSError, LogFolderError) as exc:
                self._report_once(exc)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            self._report_once(exc)

    def _report_once(self, exc: Exception) -> None:
        """A full disk or a removed folder: said once on stderr, not once a line."""
        if not self._failed:
            self._failed = True
            why = str(exc) if isinstance(exc, LogFolderError) else (  # it names the file already
                f"cannot write the log file {self.baseFilename}: {exc}")
            print(f"otpy: {why}; its lines are lost until it can", file=sys.stderr, flush=True)

    def doRollover(self) -> None:
        if self.backupCount == 0:  # supervisord's backups = 0: the file starts again, empty (the
            if self.stream is not None:  # stdlib's would reopen it as it is and grow it forever)
                self.stream.close()
                self.stream = None
            fd = open_log_fd(Path(self.baseFilename))
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        else:
            super().doRollover()
        if self.follow_fds and self.stream is None:  # delay=True: open now, so the fds follow at once
            self.stream = self._open()

    def release_file(self) -> None:
        """Close the file until the next line (a child that exited: no fd kept per dead child)."""
        with self.lock:
            if self.stream is not None:
                self.stream.close()
                self.stream = None


def line_formatter(fmt: str) -> logging.Formatter:
    """Every line starts with its local time, to the millisecond: ``2026-12-07T07:30:01.123``."""
    return logging.Formatter(f"%(asctime)s.%(msecs)03d {fmt}", TIME_FORMAT)


_second: tuple[int, str] = (0, "")


def stamp(now: float | None = None) -> str:
    """``now`` (default: the time) as the lines' stamp, ``2026-12-07T07:30:01.123`` (local time);
    the seconds' text is made once a second."""
    global _second
    now = time.time() if now is None else now
    whole = int(now)
    if _second[0] != whole:
        _second = (whole, time.strftime(TIME_FORMAT, time.localtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}"
