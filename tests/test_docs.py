"""Examples in the docs run: each self-contained ```python block is executed as it is written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (file, index of the ```python block): the blocks that are whole programs.
RUNNABLE = [("README.md", 0), ("docs/embedding.md", 0), ("docs/optimizing.md", 0), ("docs/programs.md", 1),
            ("docs/programs.md", 3), ("docs/programs.md", 4)]  # 3: Pipeline, 4: ManagerProgram


def block(path: str, index: int) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)[index]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("path,index", RUNNABLE, ids=[f"{p}#{i}" for p, i in RUNNABLE])
def test_the_example_runs(path, index, tmp_path):
    code = block(path, index).replace('name="embedded-demo"', f'name="docs-{os.getpid()}"').replace(
        '"embedded-demo"', f'"docs-{os.getpid()}"')
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr[-2000:]
