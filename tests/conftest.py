import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True, scope="session")
def private_runtime_dir():
    """Every node of the test run keeps its sockets in one private temporary folder."""
    with tempfile.TemporaryDirectory(prefix="otpy-test-") as path:
        os.environ["OTPY_RUNTIME_DIR"] = path
        yield path
