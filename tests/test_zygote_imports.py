"""What the zygote imports is in every forked child's memory, and each page of it a child
touches is copied there: the zygote imports only what a child needs (not asyncio, not ssl)."""

import subprocess
import sys

import pytest


@pytest.mark.timeout(60)
def test_the_zygote_imports_no_asyncio_nor_ssl():
    code = ("import sys, otpy.processes.zygote; "
            "print(sorted(m for m in ('asyncio', 'ssl', 'zmq.asyncio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
