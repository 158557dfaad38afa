"""Tiny programs for the process tests: each one does a single thing the tests check."""

from __future__ import annotations

import os
import signal
import threading
import time

from otpy.agent import worker as _worker
from otpy.agent.program import Program


class Sleeper(Program):
    """Sets up and serves nothing; prints one line so that output can be checked."""

    def setup(self, args, config):
        print(args.get("say", "hello from sleeper"))


class FailingSetup(Program):
    def setup(self, args, config):
        raise ValueError("boom")


class SlowSetup(Program):
    """Prints its pid, then takes longer to set up than the test's start_timeout."""

    def setup(self, args, config):
        print(os.getpid(), flush=True)
        time.sleep(args.get("seconds", 30))


class IgnoresTerm(Program):
    def setup(self, args, config):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Forker(Program):
    """Forks a grandchild that sleeps for ever and writes its pid to ``args["pid_file"]``."""

    def setup(self, args, config):
        pid = os.fork()
        if pid == 0:
            try:
                while True:
                    time.sleep(3600)
            finally:
                os._exit(0)
        with open(args["pid_file"] + ".tmp", "w") as file:
            file.write(str(pid))
        os.replace(args["pid_file"] + ".tmp", args["pid_file"])


class ShutdownExit(Program):
    """Asks for a clean exit right after READY, from a thread."""

    def setup(self, args, config):
        threading.Thread(target=self._exit_soon, daemon=True).start()

    def _exit_soon(self):
        time.sleep(0.05)  # let the worker write READY first
        _worker.exit_shutdown(self.term)

    term = ""


class ShutdownExitWithTerm(ShutdownExit):
    term = "done for today"


class TearsDown(Program):
    """Writes a line in teardown, so the test sees that SIGTERM ran it."""

    def teardown(self):
        print("teardown ran", flush=True)


class ShowsItsPlace(Program):
    """Prints its working directory and the environment variables a test names."""

    def setup(self, args, config):
        print(os.getcwd(), *(os.environ.get(name, "-") for name in args["names"]))


def echo(**inputs):
    """A plain function is a program too."""
    return inputs


class CallsInSetup(Program):
    """Calls ``args["target"]`` from ``setup`` (``Program.call``) and answers with that reply."""

    def setup(self, args, config):
        self.answer = self.call(args["target"], {"from": "setup"}, timeout=5.0)

    def forward(self, **inputs):
        return {"in_setup": self.answer, "in_forward": self.call("echo", inputs, timeout=5.0)}


class Echo(Program):
    def forward(self, **inputs):
        return inputs


class CallsThroughASubProgram(Program):
    """Makes a Program of its own inside ``forward`` (DSPy style) and calls ``echo`` through it."""

    def forward(self, **inputs):
        return Echoer()(**inputs)


class Echoer(Program):
    def forward(self, **inputs):
        return self.call("echo", inputs, timeout=5.0)


class PlainForward:
    """A program that is no otpy.Program: a class with setup and forward, as validate accepts."""

    def setup(self, args, config):
        self.greeting = args.get("greeting", "hi")

    def forward(self, **inputs):
        return {"said": self.greeting, **inputs}
