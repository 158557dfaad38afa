"""Programs for the reliability tests (chaos, containment, node death): each does one hostile thing."""

from __future__ import annotations

import os
import sys
import threading
import time

import otpy


class Flooder(otpy.Program):
    """After READY, prints ``lines`` numbered lines as fast as it can, then ``flood done``.

    It also answers calls (its pid), so a test can see it is alive while it floods.
    """

    def setup(self, args, config):
        self.lines = int(args.get("lines", 200_000))
        threading.Thread(target=self._flood, daemon=True).start()

    def _flood(self):
        time.sleep(0.05)  # after READY
        out = sys.stdout
        chunk = 1000
        for start in range(0, self.lines, chunk):
            out.write("".join(f"line {i}\n" for i in range(start, min(start + chunk, self.lines))))
        out.write("flood done\n")
        out.flush()

    def forward(self, **inputs):
        return {"pid": os.getpid()}


def _sleep_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    finally:
        os._exit(0)


def _write_pid(path: str, pid: int) -> None:
    with open(path + ".tmp", "w") as file:
        file.write(str(pid))
    os.replace(path + ".tmp", path)


class SessionForker(otpy.Program):
    """Forks a grandchild that leaves the agent's process group and session (``setsid``), as a
    daemon would, and writes its pid to ``args["pid_file"]``."""

    def setup(self, args, config):
        pid = os.fork()
        if pid == 0:
            os.setsid()
            _sleep_forever()
        _write_pid(args["pid_file"], pid)


class DeepForker(otpy.Program):
    """Forks a child that forks a grandchild (both stay in the group); writes both pids,
    space-separated, to ``args["pid_file"]``."""

    def setup(self, args, config):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            grand = os.fork()
            if grand == 0:
                _sleep_forever()
            os.write(w, str(grand).encode())
            os.close(w)
            _sleep_forever()
        os.close(w)
        grand = int(os.read(r, 64).decode())
        os.close(r)
        with open(args["pid_file"] + ".tmp", "w") as file:
            file.write(f"{pid} {grand}")
        os.replace(args["pid_file"] + ".tmp", args["pid_file"])


class Leaky(otpy.Program):
    """Keeps ``mib`` MiB more of memory at every call (a leak), and says how much it holds."""

    def setup(self, args, config):
        self.kept = []

    def forward(self, mib: int = 10):
        self.kept.append(b"\x01" * (mib * 2**20))  # written: resident, not just reserved
        return {"held_mib": len(self.kept) * mib, "pid": os.getpid()}
