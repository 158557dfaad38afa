"""The import check of ``validate`` cannot be fooled or outlived by the program it imports.

A program that forks at import left ``validate`` waiting 31 s and its grandchild running; one
that wrote to the report descriptor crashed ``validate`` or made it pass a program that could
not start; ``builtins:int`` passed as a program.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from otpy.topology.load import check_programs, load_topology
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def programs_file(folder: Path, modules: dict[str, str]) -> Path:
    """A topology with one child per module (its program ``otpy_imp_<module>:Agent``)."""
    text = "[supervisor]\n"
    for module, source in modules.items():
        (folder / f"otpy_imp_{module}.py").write_text(source)
        text += f'[[supervisor.children]]\nid = "{module}"\nprogram = "otpy_imp_{module}:Agent"\n'
    file = folder / "node.toml"
    file.write_text(text)
    return file


AGENT = ("class Agent:\n    def setup(self, args, config):\n        pass\n\n"
         "    def forward(self, **inputs):\n        return inputs\n")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_program_that_forks_at_import_is_checked_at_once_and_leaves_no_orphan(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    forker = (f"import os, time\nif os.fork() == 0:\n    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
              "    time.sleep(120)\n    os._exit(0)\n" + AGENT)
    file = programs_file(tmp_path, {"forker": forker})
    started = time.monotonic()
    assert check_programs(load_topology(file, check_imports=False)) == []
    assert time.monotonic() - started < 10
    wait_until(pid_file.exists, 5.0, "the grandchild's pid file")
    grandchild = int(pid_file.read_text())
    wait_until(lambda: not alive(grandchild), 5.0, "the forked grandchild outlived validate")


@pytest.mark.parametrize("source", [
    "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'hello\\n')\n    except OSError:\n"
    "        pass\n" + AGENT,
])
def test_garbage_written_to_the_report_descriptor_is_ignored(tmp_path, source):
    file = programs_file(tmp_path, {"garbage": source})
    assert check_programs(load_topology(file, check_imports=False)) == []


@pytest.mark.parametrize("forged", ["[0, null]", "x [0, null]"])
def test_a_forged_report_does_not_pass_a_program_that_ends_its_import(tmp_path, forged):
    source = ("import os\nfor fd in range(3, 64):\n    try:\n"
              f"        os.write(fd, b'{forged}\\n')\n    except OSError:\n        pass\nos._exit(0)\n")
    file = programs_file(tmp_path, {"spoof": source})
    problems = check_programs(load_topology(file, check_imports=False))
    assert problems == [f"{file}: supervisor.children[0].program: importing 'otpy_imp_spoof:Agent' "
                        "ended the process (exit status 0)"], problems


@pytest.mark.parametrize("target, why", [
    ("builtins:int", "a class without forward"),
    ("otpy_imp_mod:__class__", "a class without forward"),
])
def test_a_class_the_worker_cannot_run_is_not_a_program(tmp_path, target, why):
    (tmp_path / "otpy_imp_mod.py").write_text("class Half:\n    def forward(self, **inputs):\n        return {}\n")
    file = tmp_path / "node.toml"
    file.write_text(f'[supervisor]\n[[supervisor.children]]\nid = "p"\nprogram = "{target}"\n')
    problems = check_programs(load_topology(file, check_imports=False))
    assert len(problems) == 1 and f"got {target!r}, {why}; expected a Program class" in problems[0], problems


def test_programs_the_worker_runs_pass(tmp_path):
    (tmp_path / "otpy_imp_ok.py").write_text(AGENT + "import otpy\nclass Sub(otpy.Program):\n    pass\n"
                                             "def function(**inputs):\n    return inputs\n"
                                             "class ModuleShaped:  # a dspy.Module's shape: forward, no setup\n"
                                             "    def forward(self, **inputs):\n        return inputs\n")
    file = tmp_path / "node.toml"
    file.write_text("[supervisor]\n" + "".join(
        f'[[supervisor.children]]\nid = "{name}"\nprogram = "otpy_imp_ok:{name}"\n'
        for name in ("Agent", "Sub", "function", "ModuleShaped")))
    assert check_programs(load_topology(file, check_imports=False)) == []
