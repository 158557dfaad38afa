"""The registry program: validation, compare-and-set, resolution, and durability in SQLite."""

from __future__ import annotations

import pytest

from otpy.variables.registry import Registry

VARIABLES = {
    "global": {
        "classifier": {"type": "module", "modules": ["pkg.a:KNN", "pkg.a:SVM"], "default": "pkg.a:KNN"},
        "temperature": {"type": "float", "low": 0.0, "high": 2.0, "default": 1.0},
    },
    "team": {"timeout": {"type": "float", "low": 0.1, "high": 10.0, "default": 2.0}},
    "critic": {"timeout": {"type": "float", "low": 0.1, "high": 5.0, "default": 0.5}},
}
PARENTS = {"team": "root", "critic": "team", "writer": "team"}


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "registry.db")


def registry(db) -> Registry:
    reg = Registry()
    reg.setup({"variables": VARIABLES, "parents": PARENTS, "path": db}, {})
    return reg


class TestValidation:
    def test_out_of_range_value_is_refused_naming_variable_value_and_range(self, db):
        reply = registry(db).forward(op="set", scope="global", name="temperature", value=3.5)
        assert reply["ok"] is False and reply["error"] == "invalid"
        assert "temperature" in reply["problems"][0] and "3.5" in reply["problems"][0]

    def test_unknown_variable_and_scope_are_refused(self, db):
        reg = registry(db)
        assert reg.forward(op="set", scope="global", name="nope", value=1)["error"] == "invalid"
        assert reg.forward(op="set", scope="nowhere", name="x", value=1)["error"] == "invalid"

    def test_a_refused_write_changes_nothing(self, db):
        reg = registry(db)
        reg.forward(op="set_many", values={"global": {"temperature": 0.5}, "team": {"timeout": 99.0}})
        assert reg.forward(op="get", scope="global", name="temperature")["reason"] == "default"
        assert registry(db).forward(op="get", scope="global", name="temperature")["value"] == 1.0

    def test_unknown_op_is_a_bad_request(self, db):
        assert registry(db).forward(op="drop_everything")["error"] == "bad_request"


class TestCompareAndSet:
    def test_expected_version_must_be_current(self, db):
        reg = registry(db)
        v1 = reg.forward(op="set", scope="global", name="temperature", value=0.5, expected_version=0)["version"]
        stale = reg.forward(op="set", scope="global", name="temperature", value=0.7, expected_version=0)
        assert stale["error"] == "conflict" and stale["current"] == v1
        assert reg.forward(op="set", scope="global", name="temperature", value=0.7, expected_version=v1)["ok"]


class TestResolution:
    def test_most_specific_scope_wins_and_explain_names_it(self, db):
        reg = registry(db)
        reg.forward(op="set", scope="team", name="timeout", value=4.0)
        assert reg.forward(op="resolve", child="writer")["config"]["timeout"] == 4.0
        assert reg.forward(op="resolve", child="critic")["config"]["timeout"] == 0.5
        explained = reg.forward(op="explain", child="writer", name="timeout")
        assert (explained["scope"], explained["reason"]) == ("team", "set")
        assert reg.forward(op="explain", child="critic", name="classifier")["scope"] == "global"


class TestDurability:
    def test_acknowledged_writes_survive_a_new_registry_on_the_same_file(self, db):
        reg = registry(db)
        for i in range(20):
            assert reg.forward(op="set", scope="global", name="temperature", value=i / 10)["ok"]
        reg.forward(op="set_many", values={"global": {"classifier": "pkg.a:SVM"}, "team": {"timeout": 3.0}})
        again = registry(db)
        assert again.forward(op="get", scope="global", name="temperature")["value"] == 1.9
        assert again.forward(op="resolve", child="writer")["config"] == {
            "classifier": "pkg.a:SVM", "temperature": 1.9, "timeout": 3.0}
        assert again.forward(op="set", scope="global", name="temperature", value=0.1)["version"] == 22


class TestPublishing:
    def test_each_committed_write_is_published_and_a_refused_one_is_not(self, db, tmp_path):
        import zmq

        from otpy.wire.protocol import VARIABLE_CHANGED

        endpoint = f"ipc://{tmp_path}/events.sock"
        reg = Registry()
        reg.setup({"variables": VARIABLES, "parents": PARENTS, "path": db, "events": endpoint}, {})
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        try:
            for attempt in range(200):  # the subscription reaches the PUB a moment after connect
                reg.forward(op="set", scope="global", name="temperature", value=0.5)
                if sub.poll(20):
                    break
            while sub.poll(50):
                sub.recv()
            reg.forward(op="set", scope="global", name="temperature", value=3.5)  # refused
            reg.forward(op="set_many", values={"global": {"classifier": "pkg.a:SVM"}, "team": {"timeout": 3.0}})
            events = []
            while sub.poll(200):
                events.append(VARIABLE_CHANGED.decode(sub.recv()))
            assert sorted((e.scope, e.name, e.value) for e in events) == [
                ("global", "classifier", "pkg.a:SVM"), ("team", "timeout", 3.0)]
            assert len({e.version for e in events}) == 1
        finally:
            sub.close()
            reg.teardown()

    def test_a_missing_field_is_a_bad_request(self, db):
        reply = registry(db).forward(op="get", scope="global")
        assert reply["error"] == "bad_request" and "name" in reply["problems"][0]


def test_a_stored_value_the_topology_no_longer_accepts_is_dropped_on_load(db):
    reg = registry(db)
    assert reg.forward(op="set", scope="global", name="temperature", value=1.8)["ok"]
    narrower = {**VARIABLES, "global": {**VARIABLES["global"],
                                        "temperature": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}}}
    again = Registry()
    again.setup({"variables": narrower, "parents": PARENTS, "path": db}, {})
    assert again.forward(op="get", scope="global", name="temperature")["value"] == 0.5


class TestRegisterSpace:
    def test_a_space_registered_at_run_time_serves_values_and_survives_a_new_incarnation(self, db):
        reg = registry(db)
        reply = reg.forward(op="register_space", scope="writer",
                            variables={"style": {"type": "choice", "choices": ["terse", "chatty"], "default": "terse"}})
        assert reply == {"ok": True, "scope": "writer", "added": ["style"]}
        assert reg.forward(op="set", scope="writer", name="style", value="chatty")["ok"]
        assert reg.forward(op="resolve", child="writer")["config"]["style"] == "chatty"
        again = registry(db)
        assert again.forward(op="get", scope="writer", name="style")["value"] == "chatty"

    def test_a_bad_or_conflicting_declaration_is_refused_and_nothing_is_added(self, db):
        reg = registry(db)
        bad = reg.forward(op="register_space", scope="writer", variables={"n": {"type": "integer", "low": 5, "high": 1}})
        assert bad["error"] == "invalid"
        clash = reg.forward(op="register_space", scope="team",
                            variables={"timeout": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5}})
        assert clash["error"] == "invalid" and "already declared" in clash["problems"][0]
        same = reg.forward(op="register_space", scope="team",
                           variables={"timeout": {"type": "float", "low": 0.1, "high": 10.0, "default": 2.0}})
        assert same == {"ok": True, "scope": "team", "added": []}


class TestWrites:
    def test_a_write_looks_only_at_what_it_wrote_not_at_every_stored_version(self, db):
        reg = registry(db)
        assert reg.forward(op="set_many", values={"global": {"temperature": 0.5}, "team": {"timeout": 3.0}})["ok"]

        class Unscannable(dict):
            def scan(self, *args):
                raise AssertionError("a write scanned every stored version")

            items = values = keys = __iter__ = scan

        reg.store.versions = Unscannable(reg.store.versions)
        assert reg.forward(op="set", scope="critic", name="timeout", value=0.7) == {"ok": True, "version": 2}
        assert registry(db).forward(op="get", scope="critic", name="timeout")["version"] == 2

    def test_a_write_that_cannot_be_committed_leaves_memory_as_committed(self, db):
        reg = registry(db)
        assert reg.forward(op="set", scope="global", name="temperature", value=0.5)["ok"]
        reg.db.execute("PRAGMA query_only = ON")  # every write fails from now on
        reply = reg.forward(op="set", scope="global", name="temperature", value=0.9)
        assert reply["error"] == "internal" and "cannot write" in reply["problems"][0]
        assert reg.forward(op="get", scope="global", name="temperature")["value"] == 0.5
        assert reg.store.take_changes() == []


class TestClient:
    """``RegistryClient`` over a caller that hands the inputs to a registry in this process."""

    @pytest.fixture
    def client(self, db):
        from otpy.variables.client import RegistryClient

        class InProcess:
            def __init__(self):
                self.registry, self.sent = registry(db), []

            def call(self, agent, inputs, timeout):
                assert agent == "registry"
                self.sent.append(inputs)
                return self.registry.forward(**inputs)

        return RegistryClient(InProcess())

    def test_typed_helpers_send_the_maps_callers_always_sent(self, client):
        assert client.set("global", "temperature", 0.5) == 1
        assert client.set_many({"team": {"timeout": 3.0}}) == {"team": {"timeout": 2}}
        entry = client.get("team", "timeout")
        assert (entry.scope, entry.name, entry.value, entry.version, entry.reason) == ("team", "timeout", 3.0, 2, "set")
        assert [e.name for e in client.list("global")] == ["classifier", "temperature"]
        assert client.resolve("writer", ["team"])["timeout"] == 3.0
        assert client.explain("critic", "timeout").reason == "default"
        assert client.register_space("writer", {"n": {"type": "integer", "low": 0, "high": 3, "default": 1}}) == ["n"]
        assert client.caller.sent[:4] == [
            {"op": "set", "scope": "global", "name": "temperature", "value": 0.5},
            {"op": "set_many", "values": {"team": {"timeout": 3.0}}},
            {"op": "get", "scope": "team", "name": "timeout"},
            {"op": "list", "scope": "global"},
        ]

    def test_a_refusal_is_raised_typed(self, client):
        from otpy.variables.client import RegistryRefused

        client.set("global", "temperature", 0.5, expected_version=0)
        with pytest.raises(RegistryRefused) as lost:
            client.set("global", "temperature", 0.7, expected_version=0)
        assert (lost.value.refused.kind, lost.value.refused.current) == ("conflict", 1)
        with pytest.raises(RegistryRefused, match="temperature: got 3.5") as invalid:
            client.set("global", "temperature", 3.5)
        assert invalid.value.refused.kind == "invalid"

    def test_aask_is_ask_for_asyncio_code(self, client):
        import asyncio

        from otpy.wire.registry_protocol import RegistryRefusal, SetValues, WrittenMany

        async def acall(agent, inputs, timeout):
            return client.caller.call(agent, inputs, timeout)

        client.caller.acall = acall
        written = asyncio.run(client.aask(SetValues(values={"team": {"timeout": 3.0}})))
        assert written == WrittenMany(versions={"team": {"timeout": 1}}, before={"team": {"timeout": 2.0}})
        refused = asyncio.run(client.aask(SetValues(values={"team": {"timeout": 99.0}})))
        assert isinstance(refused, RegistryRefusal) and refused.kind == "invalid"

    def test_ask_returns_the_reply_or_the_refusal(self, client):
        from otpy.wire.registry_protocol import GetValue, RegistryRefusal, ValueEntry

        assert isinstance(client.ask(GetValue(scope="global", name="temperature")), ValueEntry)
        refused = client.ask(GetValue(scope="nowhere", name="x"))
        assert isinstance(refused, RegistryRefusal) and refused.kind == "invalid"


def test_a_manager_asks_the_registry_only_when_its_node_says_it_has_one(tmp_path, monkeypatch):
    """A socket file a previous run left is no registry (as for every worker: ``has_registry``)."""
    from otpy.host.runtime_dir import agent_socket_path
    from otpy.optimize.manager import ManagerProgram

    monkeypatch.setenv("OTPY_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("OTPY_NODE", "stale")
    monkeypatch.setenv("OTPY_CHILD_ID", "manager")
    monkeypatch.delenv("OTPY_REGISTRY", raising=False)
    left = agent_socket_path("stale", "registry")
    left.parent.mkdir(parents=True, exist_ok=True)
    left.touch()
    manager = ManagerProgram()
    manager.setup({}, {"module": "a"})
    manager.node_caller = lambda: pytest.fail("the manager called a registry its node does not have")
    assert manager.resolve_config() == {"module": "a"}
