import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """A short base folder for ``tmp_path`` (unless --basetemp is given; xdist's workers get theirs
    from the main process): tests bind AF_UNIX sockets under ``tmp_path``, whose paths may not
    pass 107 bytes, and xdist adds a ``popen-gwN`` level to pytest's own ``/tmp/pytest-of-USER/pytest-N``."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = config._otpy_basetemp = tempfile.mkdtemp(prefix="otpy-t")


def pytest_unconfigure(config):
    if (made := getattr(config, "_otpy_basetemp", None)) is not None:
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def private_runtime_dir():
    """Every node of the test run keeps its sockets in one private temporary folder, and what
    otpy keeps for a user between runs (logs, optuna studies: ``XDG_STATE_HOME``,
    ``XDG_DATA_HOME``) in others: the tests never write into the user's home."""
    with tempfile.TemporaryDirectory(prefix="otpy-test-") as path, \
            tempfile.TemporaryDirectory(prefix="otpy-home-") as home:
        os.environ["OTPY_RUNTIME_DIR"] = path
        os.environ.pop("OTPY_DATA_DIR", None)  # it would win over XDG_DATA_HOME (optimize's studies)
        for variable, folder in (("XDG_STATE_HOME", "state"), ("XDG_DATA_HOME", "data")):
            os.makedirs(os.path.join(home, folder), mode=0o700)
            os.environ[variable] = os.path.join(home, folder)
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


@pytest.fixture(scope="session")
def postgres_admin_url():
    """A PostgreSQL server's admin URL for the whole run: ``OTPY_TEST_POSTGRES`` (``.ci/run``
    starts one), else a private server started here (tests/postgres_server.py). Skipped with
    the reason only outside CI when PostgreSQL is not installed; in CI that is a failure."""
    from tests.postgres_server import TEST_SERVER_ENV, PostgresServer, PostgresUnavailable

    if url := os.environ.get(TEST_SERVER_ENV):
        yield url
        return
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_admin_url):
    """A new, empty database of its own for this test: its URL."""
    from tests.postgres_server import database_on

    return database_on(postgres_admin_url)
