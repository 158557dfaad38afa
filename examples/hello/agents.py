"""Agents of the hello example: a greeter, a planner, and a worker that crashes now and then."""

from __future__ import annotations

import os
import random
import threading

import otpy


class Greeter(otpy.Program):
    def setup(self, args, config):
        self.greeting = args.get("greeting", "hello")
        print(f"{self.greeting}! I am pid {os.getpid()}", flush=True)

    def forward(self, name: str = "world"):
        return {"text": f"{self.greeting}, {name}"}


class Planner(otpy.Program):
    def setup(self, args, config):
        print("ready to plan", flush=True)

    def forward(self, goal: str = ""):
        return {"steps": [f"think about {goal}", f"do {goal}", f"check {goal}"]}


class Flaky(otpy.Program):
    """Crashes (exit status 1) after a random time, on average every ``mean_seconds``."""

    def setup(self, args, config):
        mean = float(args.get("mean_seconds", 3.0))
        delay = random.uniform(0.5 * mean, 1.5 * mean)
        print(f"working; will crash in {delay:.1f} s", flush=True)
        timer = threading.Timer(delay, self._crash)
        timer.daemon = True
        timer.start()

    def _crash(self):
        print("oops, crashing", flush=True)
        os._exit(1)

    def forward(self, **inputs):
        return {"ok": True}
