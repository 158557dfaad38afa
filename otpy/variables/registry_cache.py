"""The last values a registry on a shared database knew, in a file of the node's own: what it
serves when it restarts while the database is unreachable.

A registry is an ordinary supervised child: it may crash, and its supervisor restarts it, also
while the database is down. Without this file that restart could read nothing, so reads and the
configuration of every child restarting meanwhile would fail until the database is back. With
it, the new registry answers reads (and resolves children) from the values it last knew,
refuses writes (``unavailable``) and catches up once the database is back, as the registry that
crashed would have.

The file is ``registry-cache.json`` in the node's state folder (``OTPY_NODE_DIR``), mode 0600
whatever the umask (values may be secrets), replaced whole (write, then rename) after the
registry's load and after writes or changes it took in (``CacheWriter``: by a thread of its own,
at most every ``CACHE_EVERY`` seconds, so a write never pays for rewriting it; the last
state is written at teardown). It holds the rows as the database
gives them (``(scope, name, value as JSON text, version)``, the space rows and the counter), so
the registry reads them as it reads the database's. A file it cannot read is said in one line
and ignored (the registry then needs the database to start, as without a file).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from typing import Any, Callable

CACHE_FILE = "registry-cache.json"
CACHE_MODE = 0o600
CACHE_EVERY = 0.2  # seconds: the writes of a burst are saved together


def cache_path(args: dict[str, Any]) -> str | None:
    """Where a registry on a shared database keeps its last values: ``args["cache"]``, else the
    node's state folder (none outside a node)."""
    if args.get("cache"):
        return args["cache"]
    folder = os.environ.get("OTPY_NODE_DIR")
    return os.path.join(folder, CACHE_FILE) if folder else None


def write_cache(path: str, source: str, version: int, values: list[tuple[str, str, str, int]],
                spaces: list[tuple[str, str, str]]) -> None:
    """Replace the file at ``path`` whole by these rows of the database ``source`` (its URL,
    masked) (0600): never half written."""
    data = json.dumps({"source": source, "version": version, "values": values, "spaces": spaces}).encode()
    temporary = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a stale one (never followed: O_EXCL | O_NOFOLLOW)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, CACHE_MODE)
    try:
        os.fchmod(fd, CACHE_MODE)  # whatever the umask
        remaining = memoryview(data)
        while remaining:
            remaining = remaining[os.write(fd, remaining):]
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_cache(path: str, source: str) -> tuple[int, list[tuple], list[tuple]]:
    """(version, value rows, space rows) the file at ``path`` holds of the database ``source``;
    OSError or ValueError if there is none, it is not one this module wrote, or it holds the
    values of another database (``[registry] storage`` changed since)."""
    with open(path, "rb") as file:
        data = json.loads(file.read())
    if not isinstance(data, dict) or not isinstance(data.get("version"), int):
        raise ValueError("not a registry cache")
    if data.get("source") != source:
        raise ValueError(f"it holds the values of {data.get('source')!r:.200}, not of {source!r}")
    values, spaces = data.get("values"), data.get("spaces")
    if not isinstance(values, list) or not isinstance(spaces, list) or \
            not all(isinstance(row, list) and len(row) == 4 for row in values) or \
            not all(isinstance(row, list) and len(row) == 3 for row in spaces):
        raise ValueError("not a registry cache")
    return data["version"], [tuple(row) for row in values], [tuple(row) for row in spaces]


class CacheWriter:
    """Saves ``rows()`` (``(version, values, spaces)``) to ``path`` in a thread of its own, soon
    after each ``touch()``; ``close()`` saves what is pending and stops it."""

    def __init__(self, path: str, source: str, rows: Callable[[], tuple[int, list, list]]):
        self.path, self.source, self._rows = path, source, rows
        self._dirty, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="otpy-registry-cache", daemon=True)
        self._thread.start()

    def touch(self) -> None:
        self._dirty.set()

    def save(self) -> None:
        self._dirty.clear()
        try:
            write_cache(self.path, self.source, *self._rows())
        except (OSError, TypeError, ValueError) as exc:
            print(f"otpy: registry: cannot write {self.path}: {exc}", file=sys.stderr, flush=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._dirty.wait(timeout=1.0) and not self._stop.is_set():
                self._stop.wait(CACHE_EVERY)  # the rest of a burst comes in meanwhile
                self.save()

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(timeout=5)
        self.save()
