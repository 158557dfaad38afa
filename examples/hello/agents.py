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


# --- a team whose agents call each other: coordinator -> planner -> worker -> reviewer ------
# examples/hello/team.toml runs it; python examples/hello/run_team.py calls the coordinator.


class Coordinator(otpy.Program):
    """Asks the planner for steps, has the worker do them (in parallel), the reviewer check them."""

    def setup(self, args, config):
        from otpy.wire.calls import Caller

        self.team = Caller(os.environ["OTPY_NODE"])  # for futures: every step in flight at once

    def forward(self, goal: str = "tea"):
        steps = self.call("planner", {"goal": goal})["steps"]
        futures = [self.team.submit("worker", {"step": step}) for step in steps]
        done = [future.result()["done"] for future in futures]
        review = self.call("reviewer", {"goal": goal, "done": done})
        return {"goal": goal, "done": done, **review}

    def teardown(self):
        self.team.close()


class Worker(otpy.Program):
    """Does one step (here: says it did it)."""

    def forward(self, step: str = ""):
        return {"done": f"{step}: done by pid {os.getpid()}"}


class Reviewer(otpy.Program):
    def forward(self, goal: str = "", done: list | None = None):
        done = done or []
        approved = bool(done) and all("done" in item for item in done)
        return {"approved": approved, "review": f"{len(done)} steps towards {goal!r}, "
                                                f"{'approved' if approved else 'rejected'}"}
