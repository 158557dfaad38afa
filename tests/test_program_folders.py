"""A program next to its topology file runs without an install, and starting the node leaves
the starting process's ``sys.path`` as it was: the folders travel in ``NodeSpec.program_folders``
to the zygote (``agent.import_check.import_path``), not through this process's ``sys.path``."""

from __future__ import annotations

import sys

import pytest

import otpy
from tests.helpers import unique_name

pytestmark = pytest.mark.timeout(60)


def test_a_program_next_to_its_topology_runs_and_sys_path_is_untouched(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "otpy_test_next_to_topology.py").write_text("def echo(**inputs):\n    return inputs\n")
    name = unique_name("folders")
    file = conf / f"{name}.toml"
    file.write_text('[supervisor]\n[[supervisor.children]]\nid = "echo"\nprogram = "otpy_test_next_to_topology:echo"\n')
    monkeypatch.chdir(tmp_path)  # not the file's folder
    before = list(sys.path)
    with otpy.Node.from_toml(file) as node:
        assert node.call("echo", {"x": 1}) == {"x": 1}
    assert sys.path == before
