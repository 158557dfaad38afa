"""Reading a file a person names: a regular file of bounded size, read without blocking.

Every file otpy reads on a person's word goes through ``read_bounded_file``: a topology file
(``otpy start``/``validate``/``reload``, a node's SIGHUP: ``topology.load.read_topology_file``)
and a document given as ``otpy vars set SCOPE NAME=@FILE``. What it opens must never block
the reader nor fill its memory: the file is opened non-blocking (a FIFO opens at once instead
of waiting for a writer), and refused unless ``fstat`` of what was opened says it is a regular
file (not a FIFO, ``/dev/zero``, a socket or a folder) of at most ``max_bytes``; at most that
much is read, should it grow meanwhile. A symlink is followed, and what it leads to is what is
checked (``fstat`` of the open file, so it cannot change between the check and the read).

>>> read_bounded_file("/dev/zero", 10, allowed="10 bytes", hint="give a JSON file")
Traceback (most recent call last):
...
ValueError: /dev/zero: cannot read the file: it is a character device, not a regular file; give a JSON file
"""

from __future__ import annotations

import os
import stat

__all__ = ["file_kind", "read_bounded_file"]


def read_bounded_file(source: str, max_bytes: int, *, allowed: str, hint: str) -> bytes:
    """The bytes of the regular file ``source``, at most ``max_bytes`` of them, or ValueError whose
    message names the file and says why it was not read.

    ``allowed`` says what the limit is in messages (``the 1 MiB a topology file may have``: a file
    "has N bytes, over" it), ``hint`` what to give instead."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ValueError(f"{source}: cannot read the file: {exc.strerror}") from None
    try:  # checked before ``fdopen``, which refuses a folder itself (IsADirectoryError)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{source}: cannot read the file: it is {file_kind(info.st_mode)}, not a regular "
                             f"file; {hint}")
        if info.st_size > max_bytes:
            raise ValueError(f"{source}: the file has {info.st_size} bytes, over {allowed}; {hint}")
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)  # never left open: a library caller reads many files
        raise
    with file:
        try:
            data = file.read(max_bytes + 1)
        except OSError as exc:
            raise ValueError(f"{source}: cannot read the file: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{source}: the file grew over {allowed} while it was read")
    return data


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words (``a FIFO (named pipe)``)."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"
