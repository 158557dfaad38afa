"""Two nodes started by ``otpy start --detach`` from topology files naming one PostgreSQL
database in ``[registry] storage`` (#18): ``otpy vars set`` on A reaches B's program, and B's
``otpy vars get`` answers it; the password is in no output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import otpy
from tests.helpers import unique_name, wait_until

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = """
[node]
name = "{name}"

[registry]
storage = "{url}"

[supervisor]
id = "root"

[[supervisor.children]]
id = "shows"
program = "tests.registry_agents:Shows"

[variables.global]
knob = {{ type = "float", low = 0.0, high = 1.0, default = 0.5 }}
"""


def otpy_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=os.environ)


def test_two_started_nodes_share_one_variable_space(postgres_url, tmp_path):
    password = postgres_url.split("@")[0].rsplit(":", 1)[1]
    names = [unique_name("pgcli-a"), unique_name("pgcli-b")]
    outputs = []
    try:
        for name in names:
            path = tmp_path / f"{name}.toml"
            path.write_text(TOPOLOGY.format(name=name, url=postgres_url))
            started = otpy_cli("start", str(path), "--detach")
            assert started.returncode == 0, started.stderr
            outputs.append(started)
        a, b = names
        written = otpy_cli("vars", "set", "--node", a, "global.knob", "0.875")
        assert written.returncode == 0 and written.stdout == "set global.knob 0.5 -> 0.875\n", written
        with otpy.Caller(b) as caller:
            wait_until(lambda: caller.call("shows", {}, timeout=10)["config"]["knob"] == 0.875, timeout=15,
                       what="B's program runs A's write")
        read = otpy_cli("vars", "get", "--node", b, "global.knob")
        assert read.stdout == "0.875\n", read
        outputs += [written, read, otpy_cli("status", "--node", b, "--json"), otpy_cli("logs", "--node", b),
                    otpy_cli("logs", "--node", b, "registry")]
    finally:
        for name in names:
            otpy_cli("stop", "--node", name)
    assert all(password not in done.stdout + done.stderr for done in outputs)
