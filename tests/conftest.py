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


@pytest.fixture
def control_dealers():
    """``dealer(node_name)``: a raw DEALER on that node's control socket (no send limit), closed
    after the test: for sending the control socket bytes no client would."""
    import zmq

    from otpy.host.runtime_dir import control_endpoint

    context = zmq.Context()
    made: list = []

    def dealer(name: str) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.linger, sock.sndhwm = 0, 0
        sock.connect(control_endpoint(name))
        made.append(sock)
        return sock

    yield dealer
    for sock in made:
        sock.close(linger=0)
    context.term()
