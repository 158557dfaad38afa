"""Which source files a zygote's program imports brought in, and whether any changed since.

A zygote imports a program's module once and forks every child of it from that import, so
an edit on disk would never reach a restart. So the zygote notes, for every module that a
program's import added to ``sys.modules``, its file's ``(mtime_ns, size)``, and checks them
(one ``stat`` each) before it forks a program child. If one changed (or is gone), the zygote
is stale for good: it forks no program child any more, and the node starts a new zygote
generation, which imports fresh code (``processes.manager``).

Which modules count: those whose file lies outside the Python installation (``sys.prefix``,
``sys.base_prefix``, their exec twins, the site-packages folders) and outside otpy itself.
That is the program's own code and its helpers, wherever they are imported from (the node's
cwd, its ``program_folders``, ``PYTHONPATH``, an editable install); installed libraries and
otpy change only with an upgrade, which takes a node restart anyway. A module a program
imports later, in the child (inside ``setup``), is read from disk by each child anyway; a hot
standby, set up ahead, lists those too (``listing``), and the node checks them at its take-over.
A rewrite that keeps both the size and the modification time (to the nanosecond) is not seen.
"""

from __future__ import annotations

import os
import site
import sys
from types import ModuleType

_OTPY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # otpy's own package folder


def _installed_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             _OTPY}
    try:
        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # an old virtualenv's site module
        pass
    return tuple(sorted(os.path.join(os.path.realpath(root), "") for root in roots if root))


class Sources:
    """The program source files one zygote imported: path -> (mtime_ns, size)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int]] = {}
        self.stale = ""  # why this zygote's imports are out of date ("" while they are not)
        self._installed = _installed_roots()

    def note(self, modules: list[ModuleType]) -> None:
        """Note the files of ``modules`` (new in ``sys.modules`` after a program's import)."""
        for module in modules:
            path = getattr(module, "__file__", None)
            if not isinstance(path, str):
                continue  # built in, or a namespace package
            path = os.path.realpath(path)
            if path in self.files or path.startswith(self._installed):
                continue
            try:
                info = os.stat(path)
            except OSError:
                continue  # a module without a file of its own (zipimport, generated)
            self.files[path] = (info.st_mtime_ns, info.st_size)

    def listing(self, modules: list[ModuleType], born_ns: int | None = None) -> dict[str, tuple[int, int]]:
        """The program source files of ``modules`` (a process forked from this zygote: its
        ``sys.modules``, by the same rule): this zygote's record for the files it imported, a
        ``stat`` now for those the process imported itself (in ``setup()``, a hot standby's).
        One of those modified at or after ``born_ns`` (the process's start; a second's margin
        for the file system's coarse clock) may have been read before its edit: it is listed
        as ``(-1, -1)``, which never matches, so that process is never taken for up to date."""
        files: dict[str, tuple[int, int]] = dict(self.files)
        for module in modules:
            path = getattr(module, "__file__", None)
            if not isinstance(path, str):
                continue
            path = os.path.realpath(path)
            if path in files or path.startswith(self._installed):
                continue
            try:
                info = os.stat(path)
            except OSError:
                continue
            seen = (info.st_mtime_ns, info.st_size)
            if born_ns is not None and info.st_mtime_ns >= born_ns - 1_000_000_000:
                seen = (-1, -1)
            files[path] = seen
        return files

    def check(self) -> str:
        """Why the imported code is out of date ("" if it is not): one ``stat`` per file, until
        one differs; once stale, always stale."""
        if not self.stale:
            for path, seen in self.files.items():
                try:
                    info = os.stat(path)
                except OSError:
                    self.stale = f"{path} is gone"
                    break
                if (info.st_mtime_ns, info.st_size) != seen:
                    self.stale = f"{path} changed"
                    break
        return self.stale
