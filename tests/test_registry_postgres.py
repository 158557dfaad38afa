"""The registry on a PostgreSQL database shared by several registries (#18): compare-and-set
against the database's truth, other registries' writes folded in and published, writes refused
``unavailable`` while the database is lost and none lost across a restart, a clear start
failure, otpy's tables checked, the password never shown; ``[registry] storage`` checked."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
import zmq

from otpy.variables.registry import Registry, RegistryFileError
from otpy.wire.protocol import VARIABLE_CHANGED
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)

VARIABLES = {"global": {"t": {"type": "float", "low": 0, "high": 2, "default": 1.0},
                        **{f"k{i}": {"type": "integer", "low": 0, "high": 10**6} for i in range(400)}}}


def registry(url: str, variables=VARIABLES, events: str | None = None) -> Registry:
    reg = Registry()
    reg.setup({"variables": variables, "storage": url, "events": events}, {})
    return reg


@pytest.fixture
def pair(postgres_url):
    made = [registry(postgres_url), registry(postgres_url)]
    yield made
    for reg in made:
        reg.teardown()


def refusal(reply: dict) -> dict | None:
    return None if reply["ok"] else reply


def get(reg: Registry, name: str) -> dict:
    return reg.forward(op="get", scope="global", name=name)


def test_compare_and_set_is_checked_against_the_database_not_memory(pair):
    a, b = pair
    assert a.forward(op="set", scope="global", name="t", value=1.5) == {"ok": True, "version": 1}
    # b has not necessarily heard of it: its write's own transaction reads the database's truth
    refused = b.forward(op="set", scope="global", name="t", value=1.7, expected_version=0)
    assert refused["error"] == "conflict" and refused["current"] == 1
    assert b.forward(op="set", scope="global", name="t", value=1.7, expected_version=1) == {"ok": True, "version": 2}
    assert a.forward(op="set", scope="global", name="t", value=1.9, expected_version=1)["error"] == "conflict"
    assert get(a, "t")["value"] == 1.7  # the conflict folded b's write in


def test_the_version_counter_is_the_databases(pair):
    a, b = pair
    versions = [reg.forward(op="set", scope="global", name=f"k{i}", value=i)["version"]
                for i, reg in enumerate([a, b, a, b, b, a])]
    assert versions == [1, 2, 3, 4, 5, 6]


def test_concurrent_compare_and_set_one_winner(pair):
    a, b = pair
    results = []
    barrier = threading.Barrier(2)

    def write(reg, value):
        barrier.wait()
        results.append(reg.forward(op="set", scope="global", name="t", value=value, expected_version=0))

    threads = [threading.Thread(target=write, args=(reg, v)) for reg, v in ((a, 0.2), (b, 0.3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.get("error", "ok") for r in results) == ["conflict", "ok"]


def test_another_registrys_write_is_published_here(postgres_url, tmp_path):
    endpoint = f"ipc://{tmp_path}/events.sock"
    a, b = registry(postgres_url), registry(postgres_url, events=endpoint)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    try:
        wait_until(lambda: a.forward(op="set", scope="global", name="k1", value=1)["ok"] and sub.poll(100),
                   what="the subscriber connected")
        while sub.poll(200):
            sub.recv()
        assert a.forward(op="set", scope="global", name="t", value=0.25)["ok"]
        assert sub.poll(5000), "no VariableChanged on the other registry's PUB"
        event = VARIABLE_CHANGED.decode(sub.recv())
        assert (event.scope, event.name, event.value) == ("global", "t", 0.25)
        assert event.version == get(a, "t")["version"] and get(b, "t")["value"] == 0.25
    finally:
        sub.close(linger=0)
        context.term()
        a.teardown()
        b.teardown()


def test_a_value_these_declarations_refuse_is_dropped_and_said(postgres_url, capfd):
    narrow = {"global": {"t": {"type": "float", "low": 0, "high": 1, "default": 0.5}}}
    a, b = registry(postgres_url), registry(postgres_url, variables=narrow)
    try:
        assert a.forward(op="set", scope="global", name="t", value=1.5)["ok"]
        wait_until(lambda: "dropping stored global.t" in capfd.readouterr().err or None, what="the drop said")
        assert get(b, "t")["value"] == 0.5
    finally:
        a.teardown()
        b.teardown()


def test_a_database_with_other_otpy_columns_is_refused_naming_the_table(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("CREATE TABLE otpy_registry_meta (k TEXT, v TEXT)")
    with pytest.raises(RegistryFileError, match="otpy_registry_meta") as caught:
        registry(postgres_url)
    assert ":***@" in str(caught.value) and postgres_url.split(":")[2].split("@")[0] not in str(caught.value)


def stable_port() -> int:
    """A free port below the kernel's ephemeral range: while the test's server is down, no other
    test's server (``free_port``) nor any connection's source port takes it, so it starts again."""
    import random
    import socket

    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture
def own_server():
    from tests.postgres_server import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer.start(port=stable_port())
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    try:
        server.stop()
    except RuntimeError:  # a test that failed with the server paused
        import shutil

        shutil.rmtree(server.folder, ignore_errors=True)


def test_an_unreachable_database_at_start_fails_in_one_line_without_the_password(own_server, monkeypatch):
    url = own_server.new_database()
    own_server.pause()
    monkeypatch.setenv("OTPY_REGISTRY_START_WAIT", "0.5")
    started = time.monotonic()
    with pytest.raises(RegistryFileError) as caught:
        registry(url)
    message = str(caught.value)
    assert time.monotonic() - started < 10
    assert "\n" not in message and own_server.password not in message
    assert f"127.0.0.1:{own_server.port} is unreachable" in message and "postgresql://otpy:***@" in message
    own_server.resume()


@pytest.mark.timeout(120)
def test_a_restart_in_the_middle_of_writes_loses_no_acknowledged_write(own_server):
    url = own_server.new_database()
    a, b = registry(url), registry(url)
    acknowledged, refused = {}, []
    restarted = threading.Event()

    def restart():
        own_server.restart(immediate=True)
        restarted.set()

    restarter = threading.Thread(target=restart)
    try:
        after = 0  # writes acknowledged once the server is back
        deadline = time.monotonic() + 60
        values = {}  # name -> the value of its last acknowledged write
        uncertain = set()  # names written by a write lost during its COMMIT, and not acknowledged since
        for i in range(10**6):
            if i == 60:
                restarter.start()
            name = f"k{i % 400}"
            reply = a.forward(op="set", scope="global", name=name, value=i)
            if reply["ok"]:
                acknowledged[name], values[name] = reply["version"], i
                uncertain.discard(name)
                after += restarted.is_set()
            else:
                assert reply["error"] == "unavailable", reply
                problem = reply["problems"][0]
                assert f"127.0.0.1:{own_server.port}" in problem and own_server.password not in problem
                refused.append(name)
                if "the write was not stored" in problem:  # memory as committed: the refused write not in it
                    assert get(a, name)["value"] != i
                else:  # lost during COMMIT: stored or not, not known; later acknowledged writes are checked
                    assert "whether the write was stored is not known" in problem
                    uncertain.add(name)
            if after >= 20 or time.monotonic() > deadline:
                break
            time.sleep(0.01 if i >= 60 else 0.002)
        restarter.join(timeout=60)
        assert restarted.is_set() and refused and after >= 20, (len(refused), after)
        certain = {name: version for name, version in acknowledged.items() if name not in uncertain}
        for reg in (a, b):  # both caught up: every acknowledged write, with its version
            wait_until(lambda: all(get(reg, name)["version"] == version for name, version in certain.items()),
                       timeout=20, what="caught up")
        import psycopg

        with psycopg.connect(url) as db:
            stored = dict(db.execute("SELECT name, version FROM otpy_registry_value").fetchall())
        for name, version in acknowledged.items():
            assert stored[name] == version if name not in uncertain else stored[name] >= version
        assert all(get(b, name)["value"] == value for name, value in values.items() if name not in uncertain)
    finally:
        a.teardown()
        b.teardown()


def test_writes_are_refused_while_the_database_is_down_and_caught_up_after(own_server):
    url = own_server.new_database()
    a, b = registry(url), registry(url)
    try:
        assert a.forward(op="set", scope="global", name="t", value=0.5)["ok"]
        wait_until(lambda: get(b, "t")["value"] == 0.5, what="b heard of it")
        own_server.pause()
        refused = wait_until(lambda: refusal(a.forward(op="set", scope="global", name="t", value=0.6)),
                             what="a refusal")
        assert refused["error"] == "unavailable" and "the write was not stored" in refused["problems"][0]
        assert get(a, "t")["value"] == 0.5 and get(b, "t")["value"] == 0.5  # reads answer from memory
        dry = a.forward(op="set", scope="global", name="t", value=0.7, dry_run=True)
        wait_until(lambda: b.forward(op="set", scope="global", name="t", value=0.7)["error"] == "unavailable",
                   what="b refuses too")
        assert dry["error"] == "unavailable"
        own_server.resume()
        wait_until(lambda: a.forward(op="set", scope="global", name="t", value=0.8)["ok"], timeout=15,
                   what="a writes again")
        wait_until(lambda: get(b, "t")["value"] == 0.8, timeout=15, what="b caught up")
    finally:
        a.teardown()
        b.teardown()


# --- [registry] storage in the topology -------------------------------------------------------

TOPOLOGY = """
[node]
name = "shared"
{registry}
[supervisor]
id = "root"
[[supervisor.children]]
id = "w"
program = "tests.registry_agents:Shows"
{variables}
"""
DECLARED = '[variables.global]\nt = { type = "float", low = 0, high = 2, default = 1.0 }\n'


def parse(registry: str, variables: str = DECLARED):
    from otpy.topology.load import parse_topology

    return parse_topology(TOPOLOGY.format(registry=registry, variables=variables))


def test_a_postgresql_storage_reaches_the_registry():
    topology = parse('[registry]\nstorage = "postgresql://otpy:pw@db.example:5432/otpy"\n')
    assert topology.registry_storage == "postgresql://otpy:pw@db.example:5432/otpy"
    registry_child = topology.node.root.children[0]
    assert registry_child.args["storage"] == topology.registry_storage
    assert parse('[registry]\nstorage = "sqlite"\n').registry_storage is None


@pytest.mark.parametrize("storage", ["mysql://otpy:sekrit@h/db", "postgresql://otpy:sekrit@h", "/tmp/x.db",
                                     "postgresql://otpy:sekrit@h:99999/db"])
def test_another_storage_is_a_topology_error_naming_the_field(storage):
    from otpy.topology.load import TopologyError

    with pytest.raises(TopologyError, match="registry.storage") as caught:
        parse(f'[registry]\nstorage = "{storage}"\n')
    assert "sekrit" not in str(caught.value)


def test_a_storage_without_variables_says_to_declare_them():
    from otpy.topology.load import TopologyError

    with pytest.raises(TopologyError, match="registry.storage.*declare them"):
        parse('[registry]\nstorage = "postgresql://otpy@h:5432/db"\n', variables="")


def test_a_reload_that_changes_the_storage_is_refused_naming_it():
    from otpy.node.reload import unrealisable

    before = parse('[registry]\nstorage = "postgresql://otpy:sekrit@h:5432/a"\n').node
    after = parse('[registry]\nstorage = "postgresql://otpy:sekrit@h:5432/b"\n').node
    problems = unrealisable(before, after)
    assert len(problems) == 1 and problems[0].startswith("[registry] storage:") and "sekrit" not in problems[0]
    assert unrealisable(before, before) == []
    assert "[registry] storage" in unrealisable(parse("").node, before)[0]


def test_the_url_is_masked():
    from otpy.specs.values import mask_url

    assert mask_url("postgresql://otpy:s3cr@t@db:5432/otpy") == "postgresql://otpy:***@db:5432/otpy"
    assert mask_url("postgresql://otpy:pw@db:5432/otpy") == "postgresql://otpy:***@db:5432/otpy"
    assert mask_url("postgresql://db/otpy?user=o&password=pw") == "postgresql://db/otpy?user=o&password=***"
    assert mask_url("postgresql://otpy@db/otpy") == "postgresql://otpy@db/otpy"
    assert msgspec  # imported for the node tests' helpers


def test_a_node_without_a_shared_storage_imports_no_psycopg():
    import subprocess
    import sys

    code = ("import sys, otpy, otpy.node.node, otpy.variables.registry, otpy.topology.load\n"
            "assert 'psycopg' not in sys.modules and 'otpy.variables.postgres' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
