"""The shared registry under attack (#18, findings advB-*): passwords never shown whatever they
hold, another party's rows or notices never stop a node, a hung database never blocks reads, a
registry restarted while the database is down comes back on its last values."""

from __future__ import annotations

import pytest

from otpy.specs.values import mask_secret, mask_url, registry_storage_problem

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("password", ["se/cret", "se?cret", "se#cret", "se@cret", "p", "a%2Fb%40c", "s3/?#@x"])
def test_a_password_is_masked_whatever_it_holds(password):
    url = f"postgresql://otpy:{password}@127.0.0.1:41075/db1?sslmode=disable"
    assert mask_url(url) == "postgresql://otpy:***@127.0.0.1:41075/db1?sslmode=disable"
    problem = registry_storage_problem(url) or ""
    assert password not in problem.replace("postgresql://otpy:***@", "")


def test_a_password_in_the_query_is_masked():
    assert mask_url("postgresql+psycopg://otpy@h:1/db?password=7f63&x=1") == "postgresql+psycopg://otpy@h:1/db?password=***&x=1"
    assert mask_url("postgresql://h/db?PassWord=a&pass%77ord=b&sslpassword=c") == \
        "postgresql://h/db?PassWord=***&pass%77ord=***&sslpassword=***"
    assert mask_url("host=h password='a b' user=x") == "host=h password=*** user=x"
    assert mask_url("postgresql://otpy@db/otpy") == "postgresql://otpy@db/otpy"
    assert mask_url("postgresql://db:5432/otpy") == "postgresql://db:5432/otpy"


def test_a_raw_at_slash_question_or_hash_in_the_password_is_refused_before_any_connection():
    for char in "@/?#":
        problem = registry_storage_problem(f"postgresql://otpy:se{char}cret@127.0.0.1:5432/db")
        assert problem and "percent-encoded" in problem and "cret" not in problem
    assert registry_storage_problem("postgresql://otpy:se%40cret@127.0.0.1:5432/db") is None


def test_a_short_password_is_not_spelled_out_by_its_mask():
    message = ('connection to server at "127.0.0.1", port 41075 failed: FATAL: password authentication failed '
               'for user "otpy"')
    assert mask_secret(message, "postgresql://otpy:p@127.0.0.1:41075/db1") == message
    assert mask_secret("Name or service not known: 'se'", "postgresql://otpy:se@cret@h/db") == \
        "Name or service not known: '***'"
    assert mask_secret("bad token x%2Fy and x/y in postgresql://u:x%2Fy@h/d", "postgresql://u:x%2Fy@h/d") == \
        "bad token *** and *** in postgresql://u:***@h/d"


# --- another party's rows and notices ------------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import psycopg  # noqa: E402

from otpy.variables.registry import Registry, RegistryFileError  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.test_registry_postgres import own_server, stable_port  # noqa: E402,F401

VARIABLES = {"global": {"t": {"type": "float", "low": 0, "high": 2, "default": 1.0},
                        "d": {"type": "document", "default": {}},
                        **{f"k{i}": {"type": "integer", "low": 0, "high": 10**6, "default": 0} for i in range(4)}}}


def registry(url: str, variables=VARIABLES, **args) -> Registry:
    reg = Registry()
    reg.setup({"variables": variables, "storage": url, "events": None, **args}, {})
    return reg


def sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def value(reg: Registry, name: str):
    return reg.forward(op="get", scope="global", name=name)["value"]


@pytest.fixture
def pair(postgres_url):
    made = [registry(postgres_url), registry(postgres_url)]
    yield made
    for reg in made:
        reg.teardown()


def test_a_row_that_is_not_json_never_ends_the_listener_and_writes_go_on(pair, postgres_url, capfd):
    a, b = pair
    sql(postgres_url, "INSERT INTO otpy_registry_value VALUES ('global', 'd', '{not json', 22)",
        "UPDATE otpy_registry_meta SET value = 22", "NOTIFY otpy_registry, '22'")
    assert a.forward(op="set", scope="global", name="k0", value=1)["ok"]  # not an internal error
    wait_until(lambda: "skipping stored value row ('global', 'd')" in capfd.readouterr().err, timeout=10)
    sql(postgres_url, "UPDATE otpy_registry_value SET value = '{\"fixed\": 1}', version = 30 WHERE name = 'd'",
        "UPDATE otpy_registry_meta SET value = 30", "NOTIFY otpy_registry, '30'")
    wait_until(lambda: value(a, "d") == {"fixed": 1} and value(b, "d") == {"fixed": 1}, timeout=10)
    assert b.forward(op="set", scope="global", name="t", value=0.4)["ok"]
    wait_until(lambda: value(a, "t") == 0.4, timeout=10)


@pytest.mark.parametrize("payload", ["²", "9" * 5000, "-1", ""])
def test_a_notification_that_is_no_version_never_ends_the_listener(pair, postgres_url, payload):
    a, b = pair
    sql(postgres_url, f"SELECT pg_notify('otpy_registry', '{payload}')")
    # notifications come in commit order: a seeing b's later write proves it went past the bad one
    assert b.forward(op="set", scope="global", name="t", value=0.33)["ok"]
    wait_until(lambda: value(a, "t") == 0.33, timeout=10)


def test_rows_of_scopes_this_node_does_not_declare_never_stop_it(postgres_url, capfd):
    first = registry(postgres_url)
    first.teardown()
    sql(postgres_url, "INSERT INTO otpy_registry_value VALUES ('other', 'x', '1', -5), ('other', 'y', '{bad', 1)",
        "INSERT INTO otpy_registry_value VALUES ('global', 'k1', '{bad', 3), ('global', 'k2', '2', -7)")
    reg = registry(postgres_url)  # starts: other's rows are never read; its own bad rows are skipped, said
    try:
        err = capfd.readouterr().err
        assert "other" not in err and "skipping stored value row ('global', 'k1')" in err
        assert "skipping stored value row ('global', 'k2')" in err
        assert reg.forward(op="set", scope="global", name="k1", value=5)["ok"]
    finally:
        reg.teardown()


def test_the_nodes_own_file_still_refuses_a_bad_row(tmp_path):
    import sqlite3

    path = str(tmp_path / "registry.db")
    reg = Registry()
    reg.setup({"variables": VARIABLES, "path": path, "events": None}, {})
    reg.teardown()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO value VALUES ('global', 'k1', '{bad', 3)")
    with pytest.raises(RegistryFileError, match="refused rather than read in part"):
        Registry().setup({"variables": VARIABLES, "path": path, "events": None}, {})


@pytest.mark.timeout(120)
def test_a_million_junk_rows_elsewhere_do_not_slow_the_start(postgres_url):
    registry(postgres_url).teardown()
    sql(postgres_url, "INSERT INTO otpy_registry_value SELECT 'junk', 'n' || g, repeat('1', 500), 1 "
                      "FROM generate_series(1, 300000) g", "ANALYZE otpy_registry_value")
    started = time.monotonic()
    registry(postgres_url).teardown()
    assert time.monotonic() - started < 1.0  # reading them all took seconds


def test_a_counter_moved_back_never_makes_a_version_given_twice(pair, postgres_url):
    a, b = pair
    for i in range(5):
        assert a.forward(op="set", scope="global", name="t", value=0.1 * i)["ok"]
    top = a.forward(op="get", scope="global", name="t")["version"]
    sql(postgres_url, "UPDATE otpy_registry_meta SET value = 0")
    c = registry(postgres_url)
    try:
        reply = c.forward(op="set", scope="global", name="t", value=1.5)
        assert reply["ok"] and reply["version"] > top
        wait_until(lambda: value(a, "t") == 1.5 and value(b, "t") == 1.5, timeout=10)
    finally:
        c.teardown()


def test_tables_of_other_column_types_are_refused(postgres_url):
    sql(postgres_url, "CREATE TABLE otpy_registry_value (scope TEXT NOT NULL, name TEXT NOT NULL, value JSONB "
                      "NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (scope, name))")
    with pytest.raises(RegistryFileError, match="otpy_registry_value.*value jsonb.*expected.*value text"):
        registry(postgres_url)


def test_a_compare_and_set_sees_a_value_this_node_refuses(pair, postgres_url):
    a, _ = pair
    wide = {"global": {**VARIABLES["global"], "t": {"type": "float", "low": 0, "high": 10, "default": 1.0}}}
    c = registry(postgres_url, wide)
    try:
        seen = a.forward(op="set", scope="global", name="t", value=0.33)["version"]
        assert c.forward(op="set", scope="global", name="t", value=5.0)["ok"]
        refused = a.forward(op="set", scope="global", name="t", value=0.7, expected_version=seen)
        assert not refused["ok"] and refused["error"] == "conflict" and refused["current"] > seen
    finally:
        c.teardown()


# --- losing the database -------------------------------------------------------------------

def test_a_write_that_notices_the_loss_first_says_it_in_the_log(postgres_url, capfd):
    reg = registry(postgres_url)
    try:
        assert reg.forward(op="set", scope="global", name="t", value=0.5)["ok"]
        sql(postgres_url, f"SELECT pg_terminate_backend({reg.storage.conn.info.backend_pid})")  # the listener's lives
        reply = reg.forward(op="set", scope="global", name="t", value=0.6)
        assert reply["error"] == "unavailable"
        assert "is unreachable" in capfd.readouterr().err
        wait_until(lambda: reg.forward(op="set", scope="global", name="t", value=0.7)["ok"], timeout=10)
    finally:
        reg.teardown()


def _server_processes(server) -> list[int]:
    main = int((server.folder / "data" / "postmaster.pid").read_text().split()[0])
    children = open(f"/proc/{main}/task/{main}/children").read().split()
    return [main, *map(int, children)]


@pytest.mark.timeout(120)
def test_a_hung_database_bounds_every_wait_and_reads_answer_from_memory(own_server, capfd):
    reg = registry(own_server.new_database())
    stopped = _server_processes(own_server)
    try:
        assert reg.forward(op="set", scope="global", name="t", value=0.5)["ok"]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        replies = {}
        writer = threading.Thread(target=lambda: replies.setdefault(
            "write", reg.forward(op="set", scope="global", name="t", value=0.6)))
        started = time.monotonic()
        writer.start()
        time.sleep(0.3)  # not a wait for an event: the read below must fall while the write hangs on the server
        assert value(reg, "t") == 0.5 and time.monotonic() - started < 1.0  # a read never waits on it
        writer.join(timeout=15)
        assert not writer.is_alive() and time.monotonic() - started < 8
        assert replies["write"]["error"] == "unavailable"
        refused_at = time.monotonic()
        assert reg.forward(op="set", scope="global", name="t", value=0.7)["error"] == "unavailable"
        assert time.monotonic() - refused_at < 0.5  # refused at once from then on
        assert "is unreachable" in capfd.readouterr().err
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    try:
        wait_until(lambda: reg.forward(op="set", scope="global", name="t", value=0.8)["ok"], timeout=30)
    finally:
        reg.teardown()


@pytest.mark.timeout(120)
def test_a_registry_restarted_while_the_database_is_down_serves_its_last_values(own_server, tmp_path, capfd):
    url, cache = own_server.new_database(), str(tmp_path / "registry-cache.json")
    reg = registry(url, cache=cache)
    assert reg.forward(op="set", scope="global", name="t", value=0.25)["ok"]
    reg.teardown()
    assert os.stat(cache).st_mode & 0o777 == 0o600 and own_server.password not in open(cache).read()
    other = registry(url)
    assert other.forward(op="set", scope="global", name="k3", value=9)["ok"]  # while this node is away
    other.teardown()
    own_server.pause()
    try:
        started = time.monotonic()
        again = registry(url, cache=cache)
        assert time.monotonic() - started < 5
        assert value(again, "t") == 0.25  # served from the last values it knew
        assert len(again.forward(op="list", scope="global")["values"]) == 6
        assert again.forward(op="set", scope="global", name="t", value=0.5)["error"] == "unavailable"
        assert "serving the values this node last knew" in capfd.readouterr().err
    finally:
        own_server.resume()
    try:
        wait_until(lambda: value(again, "k3") == 9, timeout=30)  # caught up
        wait_until(lambda: again.forward(op="set", scope="global", name="t", value=0.5)["ok"], timeout=30)
    finally:
        again.teardown()


def test_without_a_cache_of_this_database_an_unreachable_one_still_fails_the_start(own_server, tmp_path,
                                                                                   monkeypatch):
    url, cache = own_server.new_database(), str(tmp_path / "registry-cache.json")
    registry(own_server.new_database(), cache=cache).teardown()  # the cache of another database
    own_server.pause()
    monkeypatch.setenv("OTPY_REGISTRY_START_WAIT", "0.3")
    try:
        with pytest.raises(RegistryFileError, match="unreachable"):
            registry(url, cache=cache)
    finally:
        own_server.resume()
