"""`otpy start` in the foreground: logs by child id, Ctrl-C in order, exit statuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import unique_name, wait_dead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(60)


def otpy_start(path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "otpy", "start", str(path)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, **kw)


def read_until(proc: subprocess.Popen, needle: str, lines: list[str]) -> None:
    for line in proc.stderr:
        lines.append(line)
        if needle in line:
            return
    raise AssertionError(f"{needle!r} never printed; got:\n{''.join(lines)}")


def test_ctrl_c_stops_the_tree_in_reverse_order_and_exits_0(tmp_path):
    topo = tmp_path / "t.toml"
    topo.write_text(f"""
[node]
name = "{unique_name('ctrlc')}"
[supervisor]
[[supervisor.children]]
id = "first"
program = "examples.hello.agents:Greeter"
args = {{ greeting = "hello from first" }}
[[supervisor.children]]
id = "second"
command = ["sleep", "3600"]
""")
    proc = otpy_start(topo)
    lines: list[str] = []
    read_until(proc, "second started", lines)
    assert any(line.startswith("[first] hello from first") for line in lines)  # prefixed output
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=20) == 0
    assert rest.index("second stopped") < rest.index("first stopped")


def test_a_malformed_topology_exits_2_naming_the_key_and_starts_nothing(tmp_path):
    topo = tmp_path / "bad.toml"
    topo.write_text('[supervisor]\n[[supervisor.children]]\nid = "a"\ncommand = ["true"]\nrestart = "sometimes"\n')
    proc = otpy_start(topo)
    err = proc.stderr.read()
    assert proc.wait(timeout=20) == 2
    assert "supervisor.children[0].restart" in err and "sometimes" in err
    assert "started" not in err


def test_the_root_giving_up_exits_1_naming_the_child():
    proc = otpy_start(os.path.join(ROOT, "examples/hello/crashy.toml"))
    err = proc.stderr.read()
    assert proc.wait(timeout=50) == 1
    assert "root supervisor gave up: child 'team'" in err


def test_a_child_that_fails_to_start_exits_1_and_leaves_nothing(tmp_path):
    topo = tmp_path / "t.toml"
    topo.write_text(f"""
[node]
name = "{unique_name('nostart')}"
[supervisor]
[[supervisor.children]]
id = "ok"
command = ["sleep", "3600"]
[[supervisor.children]]
id = "broken"
command = ["false"]
ready = "notify"
""")
    proc = otpy_start(topo)
    err = proc.stderr.read()
    assert proc.wait(timeout=20) == 1
    assert "'broken'" in err
    started = [int(line.split(" started pid ")[1].split()[0]) for line in err.splitlines() if " started pid " in line]
    assert started and wait_dead(started, 1.0) == []
