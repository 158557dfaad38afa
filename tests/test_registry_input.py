"""The registry's call socket is input like any other: nothing sent to it poisons the node.

A space registered at run time must not make a child's configuration unresolvable (every
restart would then fail for as long as ``registry.db`` holds it); a malformed request of any
shape is a typed ``bad_request`` naming the field; the database file is otpy's own regular
file, whose every row is read or refused by name.
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from otpy.variables.registry import Registry, RegistryFileError

pytestmark = pytest.mark.timeout(60)

VARIABLES = {"global": {"t": {"type": "float", "low": 0.0, "high": 2.0, "default": 1.0}},
             "team": {"n": {"type": "integer", "low": 0, "high": 9, "default": 1}}}
PARENTS = {"team": "root", "a": "team"}


def registry(path: str) -> Registry:
    reg = Registry()
    reg.setup({"variables": VARIABLES, "parents": PARENTS, "path": path}, {})
    return reg


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "registry.db")


@pytest.mark.parametrize("scope", ["global", "team", "a"])
def test_a_variable_without_a_default_where_children_read_is_refused_and_not_stored(db, scope):
    reg = registry(db)
    reply = reg.forward(op="register_space", scope=scope,
                        variables={"evil": {"type": "integer", "low": 0, "high": 1}})
    assert reply["ok"] is False and reply["error"] == "invalid", reply
    assert "'a'" in reply["problems"][0] and "unresolvable" in reply["problems"][0]
    assert reg.forward(op="resolve", child="a")["ok"]
    assert registry(db).forward(op="resolve", child="a")["ok"], "the refused declaration was stored"
    rows = sqlite3.connect(db).execute("SELECT * FROM space").fetchall()
    assert rows == []


def test_a_variable_with_a_default_is_still_registered(db):
    reg = registry(db)
    reply = reg.forward(op="register_space", scope="global",
                        variables={"fine": {"type": "integer", "low": 0, "high": 1, "default": 0}})
    assert reply == {"ok": True, "scope": "global", "added": ["fine"]}
    assert registry(db).forward(op="resolve", child="a")["config"]["fine"] == 0


@pytest.mark.parametrize("request_, field", [
    ({"op": "set_many", "values": [1, 2]}, "values"),
    ({"op": "set_many", "values": {"global": [1]}}, "values.global"),
    ({"op": "set_many"}, "'values'"),
    ({"op": "list", "scope": ["x"]}, "scope"),
    ({"op": "get", "scope": "global", "name": 3}, "name"),
    ({"op": "get", "scope": "global"}, "'name'"),
    ({"op": "set", "scope": "global", "name": "t", "value": 1.0, "expected_version": "0"}, "expected_version"),
    ({"op": "resolve", "child": {"x": 1}}, "child"),
    ({"op": "resolve", "child": "a", "chain": "team"}, "chain"),
    ({"op": "resolve", "child": "new", "chain": [1, 2]}, "chain"),
    ({"op": "register_space", "scope": "global", "variables": ["x"]}, "variables"),
    ({"op": "register_space", "scope": "global", "variables": {"e2": "notatable"}}, "variables"),
    ({"op": "register_space", "scope": 5, "variables": {}}, "scope"),
    ({"op": "get", "scope": "global", "name": "t", "extra": 1}, "'extra'"),
    ({"op": ["get"]}, "op"),
])
def test_a_malformed_request_of_any_shape_is_a_bad_request_naming_the_field(db, request_, field):
    reply = registry(db).forward(**request_)
    assert reply["ok"] is False and reply["error"] == "bad_request", reply
    assert field in reply["problems"][0], reply


def test_an_unexpected_exception_is_internal_and_logged_with_its_traceback(db, capsys):
    reg = registry(db)

    def broken(request):
        raise AttributeError("an otpy bug")

    reg._serve = broken
    reply = reg.forward(op="list")
    assert reply == {"ok": False, "error": "internal", "problems": ["list: AttributeError: an otpy bug"]}
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("error", [KeyError("scope"), TypeError("an otpy bug")])
def test_a_key_or_type_error_of_the_registry_is_internal_not_a_bad_request(db, capsys, error):
    """The request was read and typed before it ran: what the store raises then is an otpy bug."""
    reg = registry(db)

    def broken(*args, **kwargs):
        raise error

    reg.store.get = broken
    reply = reg.forward(op="get", scope="global", name="t")
    assert reply["ok"] is False and reply["error"] == "internal", reply
    assert type(error).__name__ in reply["problems"][0]
    assert "Traceback" in capsys.readouterr().err


# --- the database file --------------------------------------------------------------------


def test_a_symlinked_registry_file_is_refused_and_nothing_is_written_where_it_points(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    registry(str(elsewhere / "registry.db")).teardown()  # a real registry outside the node's folder, closed:
    before = sorted(os.listdir(elsewhere))  # its own files settled (SQLite's -wal/-shm come and go with it)
    folder = tmp_path / "node"
    folder.mkdir()
    os.symlink(elsewhere / "registry.db", folder / "registry.db")
    with pytest.raises(RegistryFileError) as caught:
        registry(str(folder / "registry.db"))
    assert str(folder / "registry.db") in str(caught.value) and "symbolic link" in str(caught.value)
    assert sorted(os.listdir(elsewhere)) == before


def test_a_symlinked_wal_file_is_refused(db, tmp_path):
    registry(db).db.close()
    target = tmp_path / "target-wal"
    for leftover in (f"{db}-wal", f"{db}-shm"):
        if os.path.lexists(leftover):
            os.unlink(leftover)
    os.symlink(target, f"{db}-wal")
    with pytest.raises(RegistryFileError, match="-wal is a symbolic link"):
        registry(db)
    assert not target.exists()


def test_a_directory_in_place_of_the_registry_is_refused(tmp_path):
    (tmp_path / "registry.db").mkdir()
    with pytest.raises(RegistryFileError, match="is not a regular file"):
        registry(str(tmp_path / "registry.db"))


def corrupt(db: str, statement: str, *params) -> None:
    reg = registry(db)
    assert reg.forward(op="set", scope="global", name="t", value=1.5)["ok"]
    reg.db.close()
    raw = sqlite3.connect(db)
    raw.execute(statement, params)
    raw.commit()
    raw.close()


@pytest.mark.parametrize("statement, params, named", [
    ("UPDATE meta SET value = ? WHERE key = 'version'", ("abc",), "meta.version"),
    ("UPDATE meta SET value = ? WHERE key = 'version'", (-1,), "meta.version"),
    ("UPDATE value SET value = ? WHERE name = 't'", ("{not json",), "value row ('global', 't')"),
    ("UPDATE value SET value = ? WHERE name = 't'", (b"\x00\xff",), "value row ('global', 't')"),
    ("UPDATE value SET version = ? WHERE name = 't'", ("x",), "value row ('global', 't') version"),
    ("INSERT INTO space VALUES ('global', 'v', ?)", ("nope",), "space row ('global', 'v')"),
    ("INSERT INTO space VALUES ('global', 'v', ?)", (json.dumps({"type": "float"}),), "space rows of scope 'global'"),
])
def test_a_registry_file_with_bad_contents_is_refused_naming_the_file_and_the_row(db, statement, params, named):
    corrupt(db, statement, *params)
    with pytest.raises(RegistryFileError) as caught:
        registry(db)
    assert db in str(caught.value) and named in str(caught.value), str(caught.value)


def test_a_reply_that_cannot_be_encoded_is_internal_and_the_registry_keeps_serving(db, capsys):
    reg = registry(db)
    reg.store.resolve = lambda child: {"t": object()}
    reply = reg.forward(op="resolve", child="a")
    assert reply["error"] == "internal" and "resolve: TypeError" in reply["problems"][0], reply
    assert "Traceback" in capsys.readouterr().err
    assert reg.forward(op="get", scope="global", name="t")["value"] == 1.0
