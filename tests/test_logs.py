"""A node's log files: one per child (stamped, out/err marked, rotated by size), node.log with a
separator at each start, private files and folders, the [logs] table, the foreground's colours."""

from __future__ import annotations

import io
import os
import re
import stat

import pytest

import otpy
from otpy.cli.start import child_printer
from otpy.host.log_files import PrivateRotatingFileHandler, default_log_dir, known_log_dir, state_root
from otpy.node.node_logs import NodeLogs
from otpy.specs.model import LogSettings
from otpy.topology.load import TopologyError, parse_topology
from tests.helpers import Events, python, unique_name, wait_until

STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} (out|err|otpy)\| ")
TALKER = python("import sys, time\nprint('to out', flush=True)\nprint('to err', file=sys.stderr, flush=True)\n"
                "time.sleep(3600)")


def node_spec(name: str, logs: LogSettings = LogSettings(), *children) -> otpy.NodeSpec:
    return otpy.NodeSpec(name=name, root=otpy.SupervisorSpec(id="root", children=children), logs=logs)


def test_the_state_folder_is_not_the_users_home_in_tests():
    assert not str(state_root()).startswith(os.path.expanduser("~/.local"))


def test_a_child_file_rotates_at_max_bytes_keeping_backups_and_the_newest_lines(tmp_path):
    logs = NodeLogs(node_spec(unique_name("rot"), LogSettings(max_bytes=2048, backups=3, folder=str(tmp_path))),
                    on_output=lambda *_: None)
    logs.open(None, [])
    try:
        for n in range(400):
            logs.child_line("chatty", "out", f"line {n:04d}")
    finally:
        logs.close()
    folder = tmp_path / "children"
    assert sorted(p.name for p in folder.iterdir()) == ["chatty.log", "chatty.log.1", "chatty.log.2",
                                                        "chatty.log.3"]  # the oldest were dropped
    assert all(p.stat().st_size <= 2048 for p in folder.iterdir())
    newest = (folder / "chatty.log").read_text().splitlines()
    assert newest[-1].endswith("out| line 0399")
    kept = "".join((folder / f"chatty.log{suffix}").read_text() for suffix in (".3", ".2", ".1", ""))
    assert "line 0000" not in kept
    numbers = [int(line.rsplit(" ", 1)[1]) for line in kept.splitlines()]
    assert numbers == list(range(numbers[0], 400))  # in order, none lost between the kept files
    assert all(STAMPED.match(line) for line in kept.splitlines())


def test_an_embedded_node_writes_each_childs_lines_stamped_and_marked_out_or_err(tmp_path):
    name = unique_name("talk")
    with otpy.Node(node_spec(name, LogSettings(), otpy.ChildSpec(id="talker", command=TALKER)),
                   on_output=lambda *_: None) as node:
        path = default_log_dir(name) / "children" / "talker.log"
        wait_until(lambda: path.exists() and "err| to err" in path.read_text(), timeout=15,
                   what="both streams in the log")
        text = path.read_text()
        assert "out| to out" in text
        assert all(STAMPED.match(line) for line in text.splitlines()), text
        assert re.search(r"otpy\| talker started pid \d+", text)  # a start is seen where the output is
        node_log = (node.aio.logs.folder / "node.log").read_text()
    assert "otpy| talker stopped" in path.read_text()
    assert node_log.count(f"node {name!r} starts: pid {os.getpid()}") == 1
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} ", line) for line in node_log.splitlines())


def test_node_log_has_one_separator_per_start_and_files_are_private(tmp_path):
    name = unique_name("runs")
    for _ in range(2):
        with otpy.Node(node_spec(name, LogSettings(), otpy.ChildSpec(id="talker", command=TALKER)),
                       on_output=lambda *_: None) as node:
            Events(node)
    folder = default_log_dir(name)
    text = (folder / "node.log").read_text()
    assert text.count(f"======== node {name!r} starts: pid") == 2
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    for path in (folder / "node.log", folder / "children" / "talker.log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_custom_folder_is_recorded_so_a_stopped_nodes_logs_are_found(tmp_path):
    name = unique_name("custom")
    with otpy.Node(node_spec(name, LogSettings(folder=str(tmp_path / "mine")), otpy.ChildSpec(id="t", command=TALKER)),
                   on_output=lambda *_: None):
        pass
    assert known_log_dir(name) == tmp_path / "mine"
    assert (tmp_path / "mine" / "node.log").exists()


def test_a_symlink_planted_as_a_childs_log_is_refused_not_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep\n")
    logs = NodeLogs(node_spec(unique_name("sym"), LogSettings(folder=str(tmp_path / "logs"))), lambda *_: None)
    logs.open(None, [])
    try:
        (tmp_path / "logs" / "children" / "evil.log").symlink_to(target)
        logs.child_line("evil", "out", "secret")
    finally:
        logs.close()
    assert target.read_text() == "keep\n"


def test_output_still_reaches_on_output_after_the_file(tmp_path):
    seen = []
    logs = NodeLogs(node_spec(unique_name("pass"), LogSettings(folder=str(tmp_path))), lambda *a: seen.append(a))
    logs.open(None, [])
    logs.child_line("a", "err", "oops")
    logs.close()
    assert seen == [("a", "err", "oops")]


# --- the [logs] table ----------------------------------------------------------------------


def test_the_logs_table_takes_sizes_as_supervisord_does_and_a_folder_relative_to_the_file(tmp_path):
    topology = parse_topology('[logs]\nmax_bytes = "10KB"\nbackups = 3\nfolder = "here/logs"\n[supervisor]\n',
                              base_dir=str(tmp_path))
    assert topology.node.logs == LogSettings(max_bytes=10240, backups=3, folder=str(tmp_path / "here" / "logs"))
    assert parse_topology('[logs]\nmax_bytes = "50MB"\n[supervisor]\n').node.logs.max_bytes == 50 * 1024 * 1024
    assert parse_topology('[supervisor]\n').node.logs == LogSettings()


@pytest.mark.parametrize("line, message", [
    ('max_bytes = "lots"', 'logs.max_bytes: got \'lots\'; expected a number of bytes'),
    ("max_bytes = 10", "logs.max_bytes: got 10; expected an integer >= 1024"),
    ("backups = -1", "logs.backups: got -1; expected an integer >= 0"),
    ("colour = true", "logs.colour: unknown key 'colour'; accepted keys: 'backups', 'folder', 'max_bytes'"),
])
def test_a_bad_logs_table_names_its_key(line, message):
    with pytest.raises(TopologyError) as caught:
        parse_topology(f"[logs]\n{line}\n[supervisor]\n", source="t.toml")
    assert f"t.toml: {message}" in str(caught.value)


# --- the foreground's printer ------------------------------------------------------------------


class Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Echo(list):
    """Stands for the stderr echo (its thread writes what ``echo`` is given)."""

    def echo(self, text: str) -> None:
        self.append(text)


def test_child_prefixes_are_coloured_on_a_terminal_only(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal, pipe = Echo(), Echo()
    child_printer(terminal, Terminal(True))("web", "out", "hello")
    child_printer(pipe, Terminal(False))("web", "out", "hello")
    assert terminal[0].startswith("\x1b[") and terminal[0].endswith("\x1b[0m hello")
    assert pipe == ["[web] hello"]
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Echo()
    child_printer(plain, Terminal(True))("web", "err", "oops")
    assert plain == ["[web] oops"]


def test_a_supervisor_gets_no_log_file_of_its_own():
    name = unique_name("sups")
    team = otpy.SupervisorSpec(id="team", children=(otpy.ChildSpec(id="talker", command=TALKER),))
    with otpy.Node(node_spec(name, LogSettings(), team), on_output=lambda *_: None) as node:
        children = node.aio.logs.folder / "children"
        wait_until(lambda: (children / "talker.log").exists(), timeout=15, what="the worker's log")
    assert sorted(p.name for p in children.iterdir()) == ["talker.log"]


def test_no_backups_starts_the_file_again_instead_of_growing_it(tmp_path):
    handler = PrivateRotatingFileHandler(tmp_path / "a.log", LogSettings(max_bytes=1024, backups=0))
    for n in range(200):
        handler.write_line(f"line {n:04d}\n")
    handler.close()
    assert [p.name for p in tmp_path.iterdir()] == ["a.log"]
    text = (tmp_path / "a.log").read_text()
    assert len(text) <= 1024 and text.endswith("line 0199\n")


def test_followed_fds_point_at_the_new_file_after_a_rotation(tmp_path):
    """A detached node's stdout and stderr are node.log: after a rotation, raw writes go to the new one."""
    spare = os.open(os.devnull, os.O_WRONLY)
    try:
        handler = PrivateRotatingFileHandler(tmp_path / "node.log", LogSettings(max_bytes=1024, backups=2),
                                             follow_fds=(spare,))
        for n in range(30):
            handler.write_line(f"{n:02d} " + "x" * 60 + "\n")
        os.write(spare, b"raw line\n")
        handler.close()
        assert (tmp_path / "node.log").read_text().endswith("raw line\n")
        assert "raw line" not in (tmp_path / "node.log.1").read_text()
    finally:
        os.close(spare)


def test_a_log_folder_that_is_a_file_fails_the_start_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    node = otpy.Node(node_spec(unique_name("nofolder"), LogSettings(folder=str(tmp_path / "file")),
                               otpy.ChildSpec(id="t", command=TALKER)), on_output=lambda *_: None)
    with pytest.raises(otpy.NodeStartError, match="cannot write the node's logs: log folder .* is not a folder"):
        node.start()


def test_two_nodes_never_share_a_log_folder(tmp_path):
    first, second = unique_name("share1"), unique_name("share2")
    logs1 = NodeLogs(node_spec(first, LogSettings(folder=str(tmp_path))), on_output=lambda *_: None)
    logs2 = NodeLogs(node_spec(second, LogSettings(folder=str(tmp_path))), on_output=lambda *_: None)
    logs1.open(None, [])
    try:
        with pytest.raises(otpy.NodeStartError,
                           match=f"log folder {tmp_path} is used by node '{first}', which is running; "
                                 "give each node its own"):
            logs2.open(None, [])
        assert second not in (tmp_path / "node.log").read_text()  # refused before writing a line
    finally:
        logs1.close()
    logs2.open(None, [])  # once the first stopped, the folder is free
    logs2.close()


def test_a_symlinked_log_file_is_said_once_without_a_doubled_prefix(tmp_path, capsys):
    (tmp_path / "a.log").symlink_to(tmp_path / "elsewhere")
    handler = PrivateRotatingFileHandler(tmp_path / "a.log", LogSettings())
    handler.write_line("one\n")
    handler.write_line("two\n")
    handler.close()
    err = capsys.readouterr().err
    assert err.count("cannot write the log file") == 1 and err.startswith("otpy: cannot write the log file")
    assert not (tmp_path / "elsewhere").exists()


def test_a_record_is_formatted_once_and_rotates_by_the_counted_size(tmp_path):
    """node.log's records: one format each (the stdlib's rollover check formats a second time and
    stats the path), and still rotated at max_bytes."""
    import logging

    class Counting(logging.Formatter):
        calls = 0

        def format(self, record):
            Counting.calls += 1
            return super().format(record)

    handler = PrivateRotatingFileHandler(tmp_path / "node.log", LogSettings(max_bytes=1024, backups=2))
    handler.setFormatter(Counting("%(message)s"))
    for n in range(100):
        handler.handle(logging.makeLogRecord({"msg": f"record {n:03d} " + "x" * 40}))
    handler.close()
    assert Counting.calls == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.log", "node.log.1", "node.log.2"]
    assert all(p.stat().st_size <= 1024 for p in tmp_path.iterdir())
    assert (tmp_path / "node.log").read_text().splitlines()[-1].startswith("record 099 ")


def test_a_restart_keeps_the_childs_file_open_and_an_end_closes_it_after_the_events_at_hand(tmp_path):
    """exited then restarting (one supervisor step) write to the file still open; an exit with no
    restart closes it once the loop is done with the events at hand: no fd kept per dead child."""
    import asyncio

    from otpy.node.event_lines import describe_event
    from otpy.wire.protocol import NodeEvent

    logs = NodeLogs(node_spec(unique_name("reopen"), LogSettings(folder=str(tmp_path))), on_output=lambda *_: None,
                    describe=describe_event)
    logs.open(None, [])

    def event(kind, pid=None):
        logs.on_event(NodeEvent(kind=kind, node=logs.name, supervisor="root", child="agent", pid=pid, detail="x"))

    async def scenario():
        event("started", 101)
        await asyncio.sleep(0)
        stream = logs._children["agent"].stream
        event("exited")
        event("restarting")
        await asyncio.sleep(0)
        assert logs._children["agent"].stream is stream and not stream.closed  # not closed and opened again
        event("started", 102)
        event("exited")
        await asyncio.sleep(0)
        assert stream.closed and "agent" not in logs._children

    try:
        asyncio.run(scenario())
    finally:
        logs.close()
    lines = (tmp_path / "children" / "agent.log").read_text().splitlines()
    assert [line.split("otpy| ")[1] for line in lines] == [
        "agent started pid 101 (under root)", "agent exited: x", "agent restarting (under root)",
        "agent started pid 102 (under root)", "agent exited: x"]
