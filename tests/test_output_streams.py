"""A child's stdout and stderr reach ``on_output`` apart: ``"out"`` and ``"err"``.

Each child has two output pipes (fd 1 and fd 2), for a program forked on request, a program
started through the spare, and a command alike.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap

import pytest

from otpy.processes.manager import ProcessManager
from otpy.specs.model import ChildSpec
from tests.helpers import unique_name

pytestmark = pytest.mark.timeout(60)

LOUD = textwrap.dedent("""
    import sys
    from otpy.agent.program import Program

    class Loud(Program):
        def setup(self, args, config):
            print("to stdout " + args["tag"], flush=True)
            print("to stderr " + args["tag"], file=sys.stderr, flush=True)
""")


class Streams:
    """An ``on_output`` that keeps (child, stream, line) and lets a test wait for lines."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.changed = asyncio.Event()

    def __call__(self, child_id: str, stream: str, line: str) -> None:
        self.seen.append((child_id, stream, line))
        self.changed.set()

    async def wait_for(self, *entries: tuple[str, str, str], timeout: float = 10.0) -> None:
        async def scan():
            while not set(entries) <= set(self.seen):
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(f"not all of {entries} within {timeout} s; seen {self.seen}") from None


def run_with_manager(tmp_path, body):
    async def main():
        streams = Streams()
        processes = ProcessManager(node_name=unique_name("streams"), on_output=streams,
                                   program_folders=(str(tmp_path),))
        await processes.open()
        try:
            await body(processes, streams)
        finally:
            await processes.close()

    asyncio.run(main())


def test_a_program_s_stdout_and_stderr_are_delivered_apart(tmp_path):
    (tmp_path / "loud_streams.py").write_text(LOUD)

    async def body(processes, streams):
        # the first is forked on request (the program's import), the second takes the spare
        for tag in ("forked", "spare"):
            await processes.spawn(ChildSpec(id=tag, program="loud_streams:Loud", args={"tag": tag}))
            await streams.wait_for((tag, "out", f"to stdout {tag}"), (tag, "err", f"to stderr {tag}"))
        assert not [entry for entry in streams.seen if entry[2].startswith("to stderr") and entry[1] != "err"]

    run_with_manager(tmp_path, body)


def test_a_command_s_stdout_and_stderr_are_delivered_apart(tmp_path):
    code = ("import os, sys; print('plain', flush=True); print('oops', file=sys.stderr, flush=True); "
            "os.write(int(os.environ['OTPY_NOTIFY_FD']), b'READY\\n'); sys.stdin.read()")

    async def body(processes, streams):
        await processes.spawn(ChildSpec(id="cmd", command=(sys.executable, "-c", code), ready="notify"))
        await streams.wait_for(("cmd", "out", "plain"), ("cmd", "err", "oops"))
        assert ("cmd", "out", "oops") not in streams.seen and ("cmd", "err", "plain") not in streams.seen

    run_with_manager(tmp_path, body)


def test_a_failed_setup_s_traceback_is_on_stderr(tmp_path):
    (tmp_path / "broken_setup.py").write_text(textwrap.dedent("""
        from otpy.agent.program import Program

        class Broken(Program):
            def setup(self, args, config):
                raise ValueError("broken on purpose")
    """))

    async def body(processes, streams):
        from otpy.processes.manager import StartFailed

        with pytest.raises(StartFailed):
            await processes.spawn(ChildSpec(id="broken", program="broken_setup:Broken"))
        await streams.wait_for(("broken", "err", "ValueError: broken on purpose"))

    run_with_manager(tmp_path, body)


def test_the_child_s_fds_1_and_2_are_two_pipes(tmp_path):
    code = ("import os, sys; print(os.readlink('/proc/self/fd/1'), os.readlink('/proc/self/fd/2'), flush=True); "
            "os.write(int(os.environ['OTPY_NOTIFY_FD']), b'READY\\n'); sys.stdin.read()")

    async def body(processes, streams):
        await processes.spawn(ChildSpec(id="fds", command=(sys.executable, "-c", code), ready="notify"))

        async def line():
            while not streams.seen:
                streams.changed.clear()
                await streams.changed.wait()
            return streams.seen[0][2]

        one, two = (await asyncio.wait_for(line(), 10)).split()
        assert one.startswith("pipe:") and two.startswith("pipe:") and one != two

    run_with_manager(tmp_path, body)


def test_no_fd_of_the_node_is_left_after_children_come_and_go(tmp_path):
    before = set(os.listdir("/proc/self/fd"))
    code = "import sys; print('x'); print('y', file=sys.stderr)"

    async def body(processes, streams):
        for n in range(3):
            child = await processes.spawn(ChildSpec(id=f"c{n}", command=(sys.executable, "-c", code)))
            await asyncio.wait_for(asyncio.shield(child.exited), 10)

    run_with_manager(tmp_path, body)
    assert set(os.listdir("/proc/self/fd")) <= before
