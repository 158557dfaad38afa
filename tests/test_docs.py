"""Every example in README.md and docs/*.md runs, and prints what the page shows.

The convention (for writers: docs/writing-docs.md):

- A ```python block is a whole program: it runs on its own (``python -c``, from the repository
  root, in the test run's private runtime folder, so node names such as ``"hello"`` are used as
  written). A block that is not a whole program is marked with ``<!-- fragment -->`` on the line
  before its fence (blank lines may come between).
- A ```text block right after a ```python block (only blank lines between), or any block marked
  ``<!-- output -->``, is what that program prints on stdout and must match it (stderr, where
  children's lines go, is not compared: its interleaving with stdout varies).
- A ```console block is a shell session: its ``$`` lines run in bash, the lines after one, up to
  the next ``$``, are its output (stdout and stderr, as a terminal shows them). Install steps
  (``pip``, ``python -m venv``) are shown, not run. All the
  console blocks of one page are ONE session, run top to bottom in a runtime folder of their own:
  a page starts the node its commands need (``otpy start FILE --detach``); a command to run
  first without showing it goes in a comment, ``<!-- setup: otpy start examples/hello/team.toml
  --detach -->``, before the block. Every node still running when the page ends is stopped.
- ```sh blocks, and ```text blocks that follow no program, are shown, not run.

Output is compared line by line after folding runs of spaces (column widths follow the values)
and dropping trailing blank lines, with these placeholders in the page's lines:

- ``<pid>``: a number that changes from run to run (a pid, a port);
- ``<n>``: any number (``12``, ``4.39``, ``0.9850``): durations, sizes, scores;
- ``<path>``: a file or folder path (the session's folders change from run to run);
- ``<...>``: any text within a line;
- a line ``...``: any number of lines (none included).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*(fragment|output|setup:.*?)\s*-->$")
COMMAND_TIMEOUT = 120.0
PLACEHOLDERS = {"<pid>": r"\d+", "<n>": r"-?\d+(?:\.\d+)?(?:e-?\d+)?", "<path>": r"/\S+", "<...>": r".*"}


@dataclass
class Block:
    path: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marks: list[str]  # the <!-- ... --> lines right before the fence
    after_python: bool  # only blank lines since a ```python block closed


def blocks(path: str) -> list[Block]:
    """The page's fenced blocks, each with the marker comments just before it."""
    with open(os.path.join(ROOT, path)) as f:
        lines = f.read().splitlines()
    found: list[Block] = []
    marks: list[str] = []
    last_closed_python = False
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:
            end = i + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            found.append(Block(path, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n", marks,
                               last_closed_python))
            last_closed_python = fence.group(1) == "python"
            marks = []
            i = end + 1
            continue
        if mark := MARK.match(line.strip()):
            marks = marks + [mark.group(1)]
        elif line.strip():
            marks, last_closed_python = [], False
        i += 1
    return found


def programs() -> list[tuple[Block, Block | None]]:
    """Every ```python block that is not a fragment, with its output block if it has one."""
    found = []
    for path in PAGES:
        page = blocks(path)
        for index, block in enumerate(page):
            if block.lang != "python" or "fragment" in block.marks:
                continue
            following = page[index + 1] if index + 1 < len(page) else None
            is_output = following is not None and (
                "output" in following.marks or (following.lang == "text" and following.after_python))
            found.append((block, following if is_output else None))
    return found


def matches(expected: str, actual: str) -> bool:
    """``actual`` fits ``expected`` with its placeholders (see the module docstring)."""
    def fold(text: str) -> list[str]:
        folded = [" ".join(line.split()) for line in text.splitlines()]
        while folded and not folded[-1]:
            folded.pop()
        return folded

    pattern = []
    for line in fold(expected):
        if line == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
            continue
        parts = re.split("(" + "|".join(re.escape(p) for p in PLACEHOLDERS) + ")", line)
        pattern.append("".join(PLACEHOLDERS.get(part, re.escape(part)) for part in parts) + r"\n")
    return re.fullmatch("".join(pattern), "".join(line + "\n" for line in fold(actual))) is not None


def where(block: Block) -> str:
    return f"{block.path}:{block.line}"


def explain(block: Block, expected: str, actual: str) -> str:
    return f"{where(block)} prints something else.\n--- the page shows:\n{expected}--- it printed:\n{actual}"


PROGRAMS = programs()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("block,output", PROGRAMS, ids=[where(b) for b, _ in PROGRAMS])
def test_the_program_runs_and_prints_what_the_page_shows(block, output):
    proc = subprocess.run([sys.executable, "-c", block.text], cwd=ROOT, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, f"{where(block)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    if output is not None:
        assert matches(output.text, proc.stdout), explain(block, output.text, proc.stdout)


# --- console sessions -------------------------------------------------------------------------


NOT_RUN = ("pip", ".venv/bin/pip", "python3 -m venv", "python -m venv", "python -m pip", "python3 -m pip")


def session_steps(block: Block) -> list[tuple[str, str | None]]:
    """(command, expected output or None when not checked): the setup marks first, then the
    block's ``$`` lines but the install steps (``pip``, ``python -m venv``), which are shown only."""
    steps: list[tuple[str, str | None]] = [(m.removeprefix("setup:").strip(), None) for m in block.marks
                                           if m.startswith("setup:")]
    command, output = None, []
    for line in block.text.splitlines() + ["$ <end>"]:
        if line.startswith("$ "):
            if command is not None and not command.startswith(NOT_RUN):
                steps.append((command, "\n".join(output) + "\n"))
            command, output = line[2:].strip(), []
        elif command is not None:
            output.append(line)
    return steps


def sessions() -> list[tuple[str, list[Block]]]:
    found = []
    for path in PAGES:
        console = [b for b in blocks(path) if b.lang == "console" and "fragment" not in b.marks]
        if console:
            found.append((path, console))
    return found


SESSIONS = sessions()


STEP = "@@otpy-doc-step@@"


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("path,console", SESSIONS, ids=[p for p, _ in SESSIONS])
def test_the_console_session_prints_what_the_page_shows(path, console):
    """The page's commands run as one bash script (a variable set by one is seen by the next, as
    in a terminal), stderr into stdout, a marker line between two commands to split the output."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               COLUMNS="200", NO_COLOR="1")
    home = tempfile.mkdtemp(prefix="otpy-doc-")  # short: agents' AF_UNIX paths stay under 107 bytes
    for variable in ("OTPY_RUNTIME_DIR", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        env[variable] = os.path.join(home, variable.split("_")[-2].lower())
        os.makedirs(env[variable], mode=0o700)
    steps = [(block, command, expected) for block in console for command, expected in session_steps(block)]
    script = "exec 2>&1\n" + "".join(f"echo '{STEP}' $?\n{command}\n" for _, command, _ in steps) + f"echo '{STEP}' $?\n"
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT * max(1, len(steps)))
        printed = proc.stdout
    except subprocess.TimeoutExpired as timeout:
        printed = (timeout.stdout or b"").decode(errors="replace") + "\n(the session did not end in time)\n"
    finally:
        stop_every_node(env)
        shutil.rmtree(home, ignore_errors=True)
    parts = printed.split(STEP)[1:]  # each: " STATUS_OF_PREVIOUS\nOUTPUT"
    outputs = [part.split("\n", 1)[1] if "\n" in part else "" for part in parts[:-1]]
    statuses = [part.split("\n", 1)[0].strip() for part in parts[1:]]
    if (reason := cannot_run(steps, outputs, statuses)) and not os.environ.get("CI"):
        pytest.skip(reason)
    failures = []
    for index, (block, command, expected) in enumerate(steps):
        if index >= len(outputs):
            failures.append(f"{where(block)}: $ {command}: never ran (the session stopped before):\n{printed[-2000:]}")
            break
        if expected is None and statuses[index] != "0":
            failures.append(f"{where(block)}: its setup failed (exit {statuses[index]}): $ {command}\n{outputs[index]}")
        elif expected is not None and not matches(expected, outputs[index]):
            failures.append(f"$ {command}\n" + explain(block, expected, outputs[index]))
    assert not failures, "\n\n".join(failures)


CANNOT_RUN = "77"  # a setup's exit status that says this machine cannot run the page (its output says why)


def cannot_run(steps: list, outputs: list[str], statuses: list[str]) -> str | None:
    """Why the page cannot run here, when a setup exited 77 (docs/cluster.md's lab needs root):
    the page is skipped, except in CI, where it is a failure."""
    for index, (_, command, expected) in enumerate(steps[:len(outputs)]):
        if expected is None and index < len(statuses) and statuses[index] == CANNOT_RUN:
            return f"setup `{command}`: {outputs[index].strip() or 'exit 77'}"
    return None


def stop_every_node(env: dict) -> None:
    folder = env["OTPY_RUNTIME_DIR"]
    for name in sorted(os.listdir(folder)):
        if os.path.exists(os.path.join(folder, name, "control.sock")):
            subprocess.run([sys.executable, "-m", "otpy", "stop", "--node", name], cwd=ROOT, env=env,
                           capture_output=True, timeout=COMMAND_TIMEOUT)


# --- the checker itself -----------------------------------------------------------------------


def test_placeholders_match_what_varies_and_nothing_else():
    assert matches("started (pid <pid>) in <n> ms\n", "started (pid 4242) in 3.61 ms\n")
    assert not matches("started (pid <pid>)\n", "started (pid abc)\n")
    assert matches("a  b\n...\nz\n", "a b\nx\ny\nz\n\n") and matches("a\n...\nz\n", "a\nz\n")
    assert not matches("a\nz\n", "a\nx\nz\n")
    assert matches("log: <path>\n", "log: /tmp/x/run/hello/node.log\n") and not matches("<path>\n", "a b\n")
    assert matches("say <...>!\n", "say anything at all!\n") and not matches("say <...>!\n", "say\n")


def test_marks_fragments_outputs_and_sessions(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("x\n\n```python\nprint(1)\n```\n\n```text\n1\n```\n\n<!-- fragment -->\n\n```python\nf(\n```\n"
                    "\nprose\n\n```text\nnot an output\n```\n<!-- setup: otpy start t.toml --detach -->\n"
                    "```console\n$ pip install x\nok\n$ otpy status   # the tree\nnode t\n$ otpy stop\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "PAGES", ["page.md"])
    [(program, output)] = programs()
    assert program.text == "print(1)\n" and output.text == "1\n"
    [(path, [console])] = sessions()
    assert session_steps(console) == [("otpy start t.toml --detach", None), ("otpy status   # the tree", "node t\n"),
                                      ("otpy stop", "\n")]


def test_a_setup_that_exits_77_says_why_the_page_cannot_run():
    steps = [(None, "eval lab", None), (None, "otpy status", "node t\n")]
    assert cannot_run(steps, ["no lab: needs root\n", "x\n"], ["77", "0"]) == "setup `eval lab`: no lab: needs root"
    assert cannot_run(steps, ["\n", "x\n"], ["0", "77"]) is None  # only a setup's status counts
