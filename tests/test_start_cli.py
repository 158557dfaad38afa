"""`otpy start` in the foreground: logs by child id, Ctrl-C in order, exit statuses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from otpy.host.log_files import default_log_dir
from tests.helpers import unique_name, wait_dead, wait_until

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


FLOOD = "import time\nfor i in range(20000): print('L', i)\nprint('done', flush=True)\ntime.sleep(3600)"


def flood_topology(tmp_path, prefix: str):
    name = unique_name(prefix)
    topo = tmp_path / "t.toml"
    topo.write_text(f'[node]\nname = "{name}"\n[supervisor]\n[[supervisor.children]]\nid = "flood"\n'
                    f'command = ["python3", "-u", "-c", {FLOOD!r}]\n')
    return name, topo


def child_log_done(name: str) -> bool:
    path = default_log_dir(name) / "children" / "flood.log"
    return path.exists() and "out| done" in path.read_text()


@pytest.mark.timeout(90)
def test_a_stderr_nobody_reads_does_not_stop_the_node(tmp_path):
    """The echo on stderr is written by its own thread: a full pipe drops echo lines, never the
    node's answers or its log files."""
    name, topo = flood_topology(tmp_path, "fullpipe")
    proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", str(topo)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # never read until the end
    try:
        wait_until(lambda: child_log_done(name), timeout=40, what="the child's 20000 lines in its log file")
        status = subprocess.run([sys.executable, "-m", "otpy", "status", "--node", name], cwd=ROOT,
                                capture_output=True, text=True, timeout=20)
        assert status.returncode == 0, status.stderr
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=30)[1].decode()
        assert proc.returncode == 0
        assert re.search(r"otpy: \d+ lines not echoed to stderr \(they are in the log files\)", err)
        assert "[flood] L 0\n" in err  # echoed until the pipe was full
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(90)
def test_a_closed_stderr_is_said_once_in_node_log_and_the_files_keep_every_line(tmp_path):
    name, topo = flood_topology(tmp_path, "closedpipe")
    proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", str(topo)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.stderr.readline()
        proc.stderr.close()  # `otpy start t.toml 2>&1 | head -1`
        wait_until(lambda: child_log_done(name), timeout=40, what="the child's 20000 lines in its log file")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        node_log = (default_log_dir(name) / "node.log").read_text()
        assert node_log.count("stopped echoing to stderr") == 1
        assert "Traceback" not in node_log and "output handler failed" not in node_log
        child_log = (default_log_dir(name) / "children" / "flood.log").read_text()
        assert child_log.count(" out| L ") == 20000
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
