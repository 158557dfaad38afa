"""systemd's readiness protocol for ``ready = "notify"`` commands: ``$NOTIFY_SOCKET``.

A daemon that speaks ``sd_notify`` (libsystemd's, ``systemd-notify``, or a few lines of its
own) works under otpy as it is: for each notify command the node binds an ``AF_UNIX``
``SOCK_DGRAM`` socket in its private folder (``notify/`` in the node's runtime folder, mode
0700: only this user can reach it), passes its path as ``NOTIFY_SOCKET`` in the child's
environment and reads the datagrams on its loop. otpy's own ``$OTPY_NOTIFY_FD`` keeps working
beside it.

A datagram is newline-separated ``KEY=VALUE`` assignments (at most ``MAX_DATAGRAM`` bytes,
a longer one is dropped: ``on_dropped`` hears why, with its size, as systemd logs "Got overly
long notification datagram"; a READY in it does not count): ``READY=1`` makes the child ready; ``STATUS=text`` becomes its
``status_line`` (``otpy status``, ``which_children``); ``STOPPING=1`` is noted there too;
every other key (``MAINPID``, ``WATCHDOG``, ``RELOADING``, ``ERRNO``, ``FDSTORE``, ...) is
ignored, and fds sent along are never taken. The sender is checked by its kernel-given
credentials (``SO_PASSCRED``): it must be this user, and the child itself or a process in the
child's process group (systemd's ``NotifyAccess=all``, within the child's group); anything
else is dropped. A datagram that comes before the node knows the child's pid waits (at most
``EARLY_DATAGRAMS`` of them) until it does. The socket is closed and unlinked when the child
is dead. Abstract addresses (``@...``) are not used: the path is otpy's own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Callable

log = logging.getLogger("otpy")

MAX_DATAGRAM = 4096  # systemd's own limit on a notification is larger; a status line is short
EARLY_DATAGRAMS = 16  # kept until the child's pid is known
_UCRED = struct.Struct("3i")  # pid, uid, gid


class NotifySocket:
    """One child's ``NOTIFY_SOCKET``: bound at ``path``, read on ``loop``.

    ``on_assignments(pairs)`` gets each accepted datagram's ``(key, value)`` pairs in order.
    ``accept(pid)`` (the child's pid, once known) starts the sender check; until then
    datagrams wait.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path,
                 on_assignments: Callable[[list[tuple[str, str]]], None]) -> None:
        self.path = path
        self._loop = loop
        self._on_assignments = on_assignments
        self._child_pid = 0
        self._early: list[tuple[int, int, bytes]] = []
        self._buffer = bytearray(MAX_DATAGRAM)
        self.on_dropped: Callable[[str], None] | None = None  # why a datagram was dropped (too long)
        path.unlink(missing_ok=True)  # a dead run's file (the folder is private: it was ours)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.bind(str(path))
            os.chmod(path, 0o600)
        except BaseException:
            self._sock.close()
            path.unlink(missing_ok=True)
            raise
        loop.add_reader(self._sock.fileno(), self._read)

    @property
    def node_name(self) -> str:
        """The node whose folder holds the socket (``NODE/notify/NAME.sock``): for its log lines."""
        return self.path.parent.parent.name

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def accept(self, child_pid: int) -> None:
        """The child's pid is known: check and handle what came before it."""
        self._child_pid = child_pid
        early, self._early = self._early, []
        for pid, uid, data in early:
            self._handle(pid, uid, data)

    def drain(self) -> None:
        """Handle every datagram already queued (a READY sent just before the child's end)."""
        if not self.closed:
            self._read()

    def close(self) -> None:
        if self.closed:
            return
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def _read(self) -> None:
        while not self.closed:
            try:
                # MSG_TRUNC: the size returned is the datagram's own, even when it is longer than the buffer
                size, ancillary, flags, _ = self._sock.recvmsg_into(
                    [self._buffer], socket.CMSG_SPACE(_UCRED.size), socket.MSG_TRUNC)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("otpy: cannot read %s: %s", self.path, exc)
                return
            credentials = [cmsg_data for level, kind, cmsg_data in ancillary
                           if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
            if flags & socket.MSG_TRUNC or size > MAX_DATAGRAM:
                if self.on_dropped is not None:
                    self.on_dropped(f"a notification of {size} bytes on NOTIFY_SOCKET was dropped: "
                                    f"longer than {MAX_DATAGRAM} bytes")
                continue
            if not credentials or len(credentials[0]) < _UCRED.size:
                continue  # no sender to check: dropped
            data = bytes(self._buffer[:size])
            pid, uid, _ = _UCRED.unpack_from(credentials[0])
            if not self._child_pid:
                if len(self._early) < EARLY_DATAGRAMS:
                    self._early.append((pid, uid, data))
                continue
            self._handle(pid, uid, data)

    def _handle(self, pid: int, uid: int, data: bytes) -> None:
        if not self._from_child(pid, uid):
            log.debug("otpy: notification from pid %d uid %d dropped (not child %d)", pid, uid, self._child_pid)
            return
        self._on_assignments(parse(data))

    def _from_child(self, pid: int, uid: int) -> bool:
        if uid != os.getuid():
            return False
        if pid == self._child_pid:
            return True
        try:
            return os.getpgid(pid) == self._child_pid  # the child leads its own process group
        except OSError:
            return False  # gone already: nothing says it was the child's


def parse(data: bytes) -> list[tuple[str, str]]:
    """A datagram's ``KEY=VALUE`` lines, in order; a line without ``=`` is skipped.

    >>> parse(b"READY=1\\nSTATUS=serving 3 clients\\nnonsense\\n")
    [('READY', '1'), ('STATUS', 'serving 3 clients')]
    """
    pairs = []
    for line in data.decode(errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            pairs.append((key, value))
    return pairs
