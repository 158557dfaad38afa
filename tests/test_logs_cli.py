"""`otpy logs` (last lines, -f across rotation and until the node ends, unknown ids) and
`otpy start --detach` (its --timeout honoured, --json)."""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

import otpy
from otpy.cli.logs import logs
from otpy.host.log_files import default_log_dir
from otpy.node.node_logs import NodeLogs
from otpy.specs.model import LogSettings
from tests.helpers import python, unique_name, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(60)
COUNTER = python("import time\nn = 0\nwhile True:\n    print(f'tick {n:05d} ' + 'x' * 60, flush=True)\n"
                 "    n += 1\n    time.sleep(0.02)")


def otpy_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "otpy", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def written(name: str, child: str, lines: int) -> None:
    """``lines`` lines in child's log of a node that is not running."""
    node_logs = NodeLogs(otpy.NodeSpec(name=name, root=otpy.SupervisorSpec(id="root")), lambda *_: None)
    node_logs.open(None, [])
    for n in range(lines):
        node_logs.child_line(child, "out", f"line {n}")
    node_logs.close()


class Reader:
    """A process's stdout lines, read by a thread: waited on with a deadline, never a blocking read."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in proc.stdout], daemon=True).start()

    def until(self, test, timeout: float = 15.0) -> list[str]:
        seen, deadline = [], time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"not within {timeout} s; got:\n{''.join(seen)}") from None
            seen.append(line)
            if test(line):
                return seen


def test_logs_prints_the_last_n_lines_of_a_child_of_a_stopped_node():
    name = unique_name("tail")
    written(name, "worker", 50)
    result = CliRunner().invoke(logs, ["worker", "-n", "5", "--node", name])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("| ", 1)[1] for line in lines] == [f"line {n}" for n in range(45, 50)]
    node_log = CliRunner().invoke(logs, ["--node", name])
    assert node_log.exit_code == 0 and f"node {name!r} starts" in node_log.output


def test_logs_reads_into_the_backups_when_the_current_file_is_short(tmp_path):
    name = unique_name("back")
    node_logs = NodeLogs(otpy.NodeSpec(name=name, root=otpy.SupervisorSpec(id="root"),
                                       logs=LogSettings(max_bytes=1024, backups=2)), lambda *_: None)
    node_logs.open(None, [])
    for n in range(40):
        node_logs.child_line("w", "out", f"line {n:03d}")
    node_logs.close()
    result = CliRunner().invoke(logs, ["w", "-n", "30", "--node", name])
    assert [line.rsplit(" ", 1)[1] for line in result.stdout.splitlines()] == [f"{n:03d}" for n in range(10, 40)]


def test_logs_of_an_unknown_child_exits_2_naming_the_children_with_logs():
    name = unique_name("unknown")
    written(name, "worker", 1)
    result = CliRunner().invoke(logs, ["nosuch", "--node", name])
    assert result.exit_code == 2
    assert f"node {name!r} has no child 'nosuch'" in result.stderr and "children with logs: worker" in result.stderr
    bad = CliRunner().invoke(logs, ["../etc", "--node", name])
    assert bad.exit_code == 2 and "expected a name" in bad.stderr


@pytest.mark.timeout(90)
def test_follow_prints_new_lines_across_rotation_and_ends_with_the_node():
    name = unique_name("follow")
    spec = otpy.NodeSpec(name=name, root=otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="counter", command=COUNTER),)), logs=LogSettings(max_bytes=2048, backups=2))
    node = otpy.Node(spec, on_output=lambda *_: None).start()
    try:
        path = default_log_dir(name) / "children" / "counter.log"
        wait_until(lambda: path.exists() and "tick" in path.read_text(), timeout=15, what="the first tick")
        proc = otpy_cli("logs", "counter", "-f", "-n", "1", "--node", name)
        reader = Reader(proc)
        first = reader.until(lambda line: "tick" in line)
        start = int(first[-1].split("tick ")[1].split()[0])
        # 2 KB files, ~80 bytes a line: 60 more lines cross at least two rotations
        seen = reader.until(lambda line: "tick" in line and int(line.split("tick ")[1].split()[0]) >= start + 60)
        ticks = [int(line.split("tick ")[1].split()[0]) for line in seen if "tick" in line]
        assert ticks == list(range(start + 1, start + 1 + len(ticks)))  # none lost or repeated
    finally:
        node.stop()
    try:
        assert proc.wait(timeout=10) == 0  # it ends with its node
        assert f"node {name!r} ended" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_follow_of_a_node_that_is_not_running_prints_and_ends():
    name = unique_name("gone")
    written(name, "worker", 3)
    result = CliRunner().invoke(logs, ["worker", "-f", "--node", name])
    assert result.exit_code == 0 and result.stdout.count("| line") == 3
    assert "is not running" in result.stderr


# --- otpy start --detach ------------------------------------------------------------------------


NEVER_READY = """
[node]
name = "{name}"
[[supervisor.children]]
id = "slow"
command = ["sleep", "3600"]
ready = "notify"
start_timeout = 60
"""


@pytest.mark.timeout(60)
def test_detach_honours_its_timeout_when_a_child_never_gets_ready(tmp_path):
    topology = tmp_path / "never.toml"
    topology.write_text(NEVER_READY.format(name=unique_name("never")))
    began = time.monotonic()
    proc = otpy_cli("start", "--detach", "--timeout", "4", "--json", str(topology))
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 1
    assert time.monotonic() - began < 20  # its 4 s, the stop of what started and the interpreters; not 60
    reply = json.loads(out)
    assert reply["ok"] is False and reply["node"] in err and "did not start" in reply["detail"]
    assert "did not start within --timeout 4 s (child 'slow' still starting)" in reply["detail"]
    assert "Ctrl-C" not in err  # the timeout stopped it (SIGTERM), nobody pressed Ctrl-C


@pytest.mark.timeout(60)
def test_detach_json_names_the_node_its_pid_and_its_log(tmp_path):
    name = unique_name("json")
    topology = tmp_path / "ok.toml"
    topology.write_text(f'[node]\nname = "{name}"\n[[supervisor.children]]\nid = "s"\ncommand = ["sleep", "3600"]\n')
    proc = otpy_cli("start", "--detach", "--json", str(topology))
    out, err = proc.communicate(timeout=40)
    try:
        assert proc.returncode == 0, err
        reply = json.loads(out)
        assert reply["ok"] is True and reply["node"] == name and reply["pid"] > 0
        assert reply["log"] == str(default_log_dir(name) / "node.log")
        wait_until(lambda: "s started" in open(reply["log"]).read(), what="the node's log")
        text = open(reply["log"]).read()
        assert all(line[:4].isdigit() for line in text.splitlines()), text  # every line stamped
        again = otpy_cli("start", "--detach", str(topology))
        assert again.wait(timeout=30) == 1
        assert again.stderr.read().strip() == f"otpy: node {name!r} is already running (pid {reply['pid']})"
    finally:
        subprocess.run([sys.executable, "-m", "otpy", "stop", "--node", name], cwd=ROOT, timeout=30)


def test_json_without_detach_is_a_usage_error(tmp_path):
    topology = tmp_path / "t.toml"
    topology.write_text('[supervisor]\n')
    proc = otpy_cli("start", "--json", str(topology))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--json goes with --detach" in err and out == ""


@pytest.mark.timeout(60)
def test_detach_timeout_covers_the_programs_import_check(tmp_path):
    """The 31 s of #14: the import check of the file's programs took up to 30 s whatever --timeout said."""
    topology = tmp_path / "slow.toml"
    topology.write_text(f'[node]\nname = "{unique_name("slowimp")}"\n[[supervisor.children]]\nid = "s"\n'
                        'program = "tests.slow_import_agents:SlowImport"\n')
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", "--detach", "--timeout", "2", str(topology)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OTPY_TEST_SLOW_IMPORT": "60"})
    out, err = proc.communicate(timeout=50)
    assert proc.returncode == 1, err
    assert time.monotonic() - began < 15
    assert "did not start within 2 s" in err and "did not finish within 2 s" in err


@pytest.mark.timeout(60)
def test_a_second_sigterm_ends_a_start_under_way_at_once(tmp_path):
    name = unique_name("second")
    topology = tmp_path / "never.toml"
    topology.write_text(NEVER_READY.format(name=name))
    proc = subprocess.Popen([sys.executable, "-m", "otpy", "start", str(topology)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (default_log_dir(name) / "node.log").exists(), timeout=20, what="the node's start")
        proc.send_signal(signal.SIGTERM)
        for line in proc.stderr:
            if "stopping in order once the start ends" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 1  # not after the child's start_timeout (60 s)
        assert "stopped while starting" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_a_reader_that_stops_early_ends_logs_quietly():
    """`otpy logs ID -n 100000 | head -1`: no BrokenPipeError traceback, exit 0."""
    name = unique_name("pipe")
    written(name, "worker", 20000)
    logs_proc = subprocess.Popen([sys.executable, "-m", "otpy", "logs", "worker", "-n", "20000", "--node", name],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    logs_proc.stdout.readline()
    logs_proc.stdout.close()  # as `head -1` does
    assert logs_proc.wait(timeout=30) == 0
    assert logs_proc.stderr.read() == b""
    logs_proc.stderr.close()


def test_without_node_logs_picks_the_running_node_and_refuses_to_guess_between_several():
    first, second = unique_name("one"), unique_name("two")
    spec = lambda name: otpy.NodeSpec(name=name, root=otpy.SupervisorSpec(id="root"))  # noqa: E731
    with otpy.Node(spec(first), on_output=lambda *_: None):
        alone = CliRunner().invoke(logs, ["-n", "1"])
        assert alone.exit_code == 0 and f"node {first!r} starts" in alone.stdout
        with otpy.Node(spec(second), on_output=lambda *_: None):
            several = CliRunner().invoke(logs, ["-n", "1"])
    assert several.exit_code == 2
    assert "several nodes are running" in several.stderr and first in several.stderr and second in several.stderr


def numbers(data: bytes) -> list[int]:
    return [int(line.rsplit(b" ", 1)[1]) for line in data.splitlines()]


@pytest.mark.parametrize("backups", [2, 50])
def test_follow_reads_every_file_rotated_between_two_looks_in_order(tmp_path, backups):
    """Several rotations between two looks: the rest of the file it read, the backups after it
    (oldest first), then the new file; no line lost or repeated while the backups still hold them."""
    from otpy.cli.logs import Follower
    from otpy.host.log_files import PrivateRotatingFileHandler

    handler = PrivateRotatingFileHandler(tmp_path / "w.log", LogSettings(max_bytes=1024, backups=backups))
    out = io.BytesIO()
    total = 0

    def write(lines: int) -> None:
        nonlocal total
        for _ in range(lines):
            handler.write_line(f"line {total:05d}\n")
            total += 1

    write(5)
    follower = Follower(tmp_path / "w.log")  # at the end: lines 0-4 are not followed
    try:
        write(10)
        follower.poll(out)
        assert numbers(out.getvalue()) == list(range(5, 15))
        write(min(backups, 2) * 1024 // 11)  # ~2 rotations (1 with 2 backups kept: still on disk)
        follower.poll(out)
        write(30)
        follower.poll(out)
        assert numbers(out.getvalue()) == list(range(5, total))
    finally:
        follower.close()
        handler.close()


def test_follow_says_when_more_rotations_than_backups_lost_lines(tmp_path, capsys):
    from otpy.cli.logs import Follower
    from otpy.host.log_files import PrivateRotatingFileHandler

    handler = PrivateRotatingFileHandler(tmp_path / "w.log", LogSettings(max_bytes=1024, backups=1))
    handler.write_line("line 00000\n")
    follower = Follower(tmp_path / "w.log")
    out = io.BytesIO()
    try:
        for n in range(1, 400):
            handler.write_line(f"line {n:05d}\n")
        follower.poll(out)
    finally:
        follower.close()
        handler.close()
    assert "rotated more than its backups allow" in capsys.readouterr().err
    assert numbers(out.getvalue())[-1] == 399


def test_logs_ends_lines_at_newlines_only_not_at_a_carriage_return():
    name = unique_name("cr")
    written(name, "bar", 3)
    node_logs = NodeLogs(otpy.NodeSpec(name=name, root=otpy.SupervisorSpec(id="root")), lambda *_: None)
    node_logs.open(None, [])
    node_logs.child_line("bar", "out", "ca\rrr")
    node_logs.close()
    result = CliRunner().invoke(logs, ["bar", "-n", "2", "--node", name])
    lines = result.stdout_bytes.split(b"\n")
    assert result.exit_code == 0 and len(lines) == 3 and lines[-1] == b""
    assert lines[0].endswith(b"out| line 2") and lines[1].endswith(b"out| ca\rrr")


def test_logs_of_an_unknown_node_is_an_input_error():
    known = unique_name("known")
    written(known, "w", 1)
    for args in ([], ["-f"], ["-n", "3"]):
        result = CliRunner().invoke(logs, [*args, "--node", unique_name("typo")])
        assert result.exit_code == 2, (args, result.output)
        assert "no node 'typo-" in result.stderr and known in result.stderr


def test_logs_refuses_a_symlink_in_place_of_a_log_file(tmp_path):
    name = unique_name("link")
    written(name, "w", 2)
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    path = default_log_dir(name) / "children" / "w.log"
    path.unlink()
    path.symlink_to(secret)
    result = CliRunner().invoke(logs, ["w", "--node", name])
    assert result.exit_code == 1
    assert "secret\n" not in result.stdout and "is a symlink, not a log file: refused" in result.stderr


def test_logs_of_a_supervisor_or_the_root_exits_2_pointing_at_the_nodes_log():
    """Before: `otpy logs team` printed nothing with exit 0 and `otpy logs root` said "no child 'root'"."""
    name = unique_name("suplog")
    team = otpy.SupervisorSpec(id="team", children=(otpy.ChildSpec(id="w", command=python("import time; time.sleep(3600)")),))
    spec = otpy.NodeSpec(name=name, root=otpy.SupervisorSpec(id="root", children=(team,)))
    with otpy.Node(spec, on_output=lambda *_: None):
        for sup in ("team", "root"):
            result = CliRunner().invoke(logs, [sup, "--node", name])
            assert result.exit_code == 2 and "supervisors have no log of their own" in result.stderr, result.stderr
            assert f"`otpy logs --node {name}`" in result.stderr
