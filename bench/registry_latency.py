"""Variable registry latency: get and set round trips, and set -> on_config.

    python bench/registry_latency.py [--n 500] [--json out.json]

Starts an embedded node from a topology with ``[variables.global]`` (the registry is its
first child) and one agent with ``on_config``. Series, each with ``p50_ms``, ``p95_ms``,
``p99_ms``, ``max_ms``, ``n``:

``get``        ``Caller.call("registry", {"op": "get", ...})``, one at a time
``get_typed``  ``RegistryClient(caller).get(...)``: the same call through otpy's one registry client
               (typed request and reply, ``otpy.variables.client``)
``set``        ``Caller.call("registry", {"op": "set", ...})``: the reply comes after the SQLite
               commit (WAL, synchronous=FULL), so this includes an fsync of the WAL
``on_config``  from just before the ``set`` call to the moment the agent's ``on_config`` ran:
               the agent records ``time.time()`` in ``on_config`` (the config watcher resolved
               the new configuration through another registry call first); the bench then asks
               the agent for that stamp and for the value it holds. Both processes read the
               same wall clock (one machine), so the difference is honest to ~µs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import otpy  # noqa: E402
from bench.stats import summarize  # noqa: E402
from otpy import Program  # noqa: E402
from otpy.variables.client import RegistryClient  # noqa: E402

TOPOLOGY = """
[node]
name = "{name}"

[[supervisor.children]]
id = "watcher"
program = "bench.registry_latency:Watcher"

[variables.global]
knob = {{ type = "integer", low = 0, high = 1000000000, default = 0 }}
"""


class Watcher(Program):
    """Stamps each on_config with the wall clock; forward tells the last stamp and value."""

    def setup(self, args, config):
        self.knob, self.at = config.get("knob"), None

    def on_config(self, config):
        self.knob, self.at = config["knob"], time.time()

    def forward(self, **inputs):
        return {"knob": self.knob, "at": self.at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--json", dest="json_path")
    options = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="otpy-bench-") as folder:
        os.environ.setdefault("OTPY_RUNTIME_DIR", folder)
        path = os.path.join(folder, "topology.toml")
        with open(path, "w") as file:
            file.write(TOPOLOGY.format(name=f"bench-registry-{os.getpid()}"))
        with otpy.Node.from_toml(path) as node, otpy.Caller(node.name) as caller:
            get = {"op": "get", "scope": "global", "name": "knob"}
            for _ in range(50):
                caller.call("registry", get)
            samples = []
            for _ in range(options.n):
                start = time.perf_counter()
                caller.call("registry", get)
                samples.append(time.perf_counter() - start)
            results["get"] = summarize(samples)
            client = RegistryClient(caller)
            samples = []
            for _ in range(options.n):
                start = time.perf_counter()
                client.get("global", "knob")
                samples.append(time.perf_counter() - start)
            results["get_typed"] = summarize(samples)

            value = 0
            samples = []
            for _ in range(options.n):
                value += 1
                start = time.perf_counter()
                assert caller.call("registry", {"op": "set", "scope": "global", "name": "knob", "value": value})["ok"]
                samples.append(time.perf_counter() - start)
            results["set"] = summarize(samples)
            wait_for_value(caller, value)

            samples = []
            for _ in range(min(options.n, 200)):
                value += 1
                before = time.time()
                caller.call("registry", {"op": "set", "scope": "global", "name": "knob", "value": value})
                at = wait_for_value(caller, value)
                samples.append(at - before)
            results["on_config"] = summarize(samples)
    print(json.dumps(results, indent=2))
    if options.json_path:
        with open(options.json_path, "w") as file:
            json.dump(results, file, indent=2)


def wait_for_value(caller: otpy.Caller, value: int, timeout: float = 10.0) -> float:
    """The time the watcher's on_config got ``value`` (polled, not counted in the stamp)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = caller.call("watcher")
        if reply["knob"] == value:
            return reply["at"]
        time.sleep(0.0005)
    raise TimeoutError(f"on_config did not get {value} within {timeout} s")


if __name__ == "__main__":
    main()
