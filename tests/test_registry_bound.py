"""Writes the node reconciles: a bound variable (it decides what runs) is written only by the
node, reconciled; a dry run is checked as the write and changes nothing (#13 section 1)."""

from __future__ import annotations

import msgspec
import pytest
import zmq

from otpy.specs.model import Bound, ChildSpec, SupervisorSpec
from otpy.variables.placement import REGISTRY_ID, with_registry
from otpy.variables.registry import Registry
from otpy.wire.protocol import VARIABLE_CHANGED

VARIABLES = {
    "global": {
        "classifier": {"type": "module", "modules": ["pkg.a:KNN", "pkg.a:SVM"], "default": "pkg.a:KNN"},
        "temperature": {"type": "float", "low": 0.0, "high": 2.0, "default": 1.0},
    },
    "pool": {
        "workers": {"type": "integer", "low": 0, "high": 4, "default": 1},
        "low": {"type": "integer", "low": 0, "high": 10, "default": 1},
        "high": {"type": "integer", "low": 0, "high": 10, "default": 5},
    },
}
BOUND = ["global.classifier", "pool.workers"]


def low_below_high(config: dict) -> bool:
    return config["low"] < config["high"]


CONSTRAINTS = {"pool": [{"check": "tests.test_registry_bound:low_below_high", "description": "low < high"}]}


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "registry.db")


WRITER = "the-node-secret"  # what the node would put in its registry's environment


@pytest.fixture(autouse=True)
def _node_secret(monkeypatch):
    from otpy.variables.placement import WRITER_ENV

    monkeypatch.setenv(WRITER_ENV, WRITER)


def registry(db, events: str | None = None, bound=BOUND) -> Registry:
    reg = Registry()
    reg.setup({"variables": VARIABLES, "constraints": CONSTRAINTS, "bound": bound, "path": db,
               "events": events}, {})
    return reg


def value(reg: Registry, scope: str, name: str):
    entry = reg.forward(op="get", scope=scope, name=name)
    return entry["value"], entry["version"]


class TestBound:
    def test_a_bound_write_from_anyone_but_the_node_is_refused_naming_it_and_the_way(self, db):
        reg = registry(db)
        refused = reg.forward(op="set", scope="global", name="classifier", value="pkg.a:SVM")
        assert refused["ok"] is False and refused["error"] == "bound"
        (problem,) = refused["problems"]
        assert problem.startswith("global.classifier: bound")
        assert "otpy vars set global.classifier" in problem and "SetVariables" in problem
        assert "Node.set_variables" in problem and "before the value is stored" in problem
        assert value(reg, "global", "classifier") == ("pkg.a:KNN", 0)

    def test_set_many_with_one_bound_variable_writes_none_of_them(self, db):
        reg = registry(db)
        refused = reg.forward(op="set_many", values={"global": {"temperature": 0.5}, "pool": {"workers": 2}})
        assert refused["error"] == "bound" and len(refused["problems"]) == 1
        assert "pool.workers" in refused["problems"][0]
        assert value(reg, "global", "temperature") == (1.0, 0)

    def test_with_compare_and_set_too(self, db):
        refused = registry(db).forward(op="set", scope="global", name="classifier", value="pkg.a:SVM",
                                       expected_version=0)
        assert refused["error"] == "bound"

    def test_the_node_writes_it_reconciled(self, db):
        reg = registry(db)
        written = reg.forward(op="set", scope="global", name="classifier", value="pkg.a:SVM", reconciled=True, writer=WRITER)
        assert written == {"ok": True, "version": 1}
        many = reg.forward(op="set_many", values={"pool": {"workers": 3}}, reconciled=True, writer=WRITER)
        assert many == {"ok": True, "versions": {"pool": {"workers": 2}}, "before": {"pool": {"workers": 1}}}
        assert registry(db).forward(op="get", scope="pool", name="workers")["value"] == 3  # committed

    def test_a_reconciled_write_is_still_checked(self, db):
        refused = registry(db).forward(op="set", scope="global", name="classifier", value="pkg.a:RF",
                                       reconciled=True, writer=WRITER)
        assert refused["error"] == "invalid" and "pkg.a:RF" in refused["problems"][0]

    def test_other_variables_are_written_as_before(self, db):
        reg = registry(db)
        assert reg.forward(op="set", scope="global", name="temperature", value=0.5) == {"ok": True, "version": 1}
        assert reg.forward(op="set_many", values={"pool": {"low": 2}})["ok"]

    def test_no_bound_list_no_refusal(self, db):
        reg = registry(db, bound=[])
        assert reg.forward(op="set", scope="global", name="classifier", value="pkg.a:SVM")["ok"]


class TestDryRun:
    def test_a_dry_run_is_never_refused_for_being_bound_and_commits_nothing(self, db):
        reg = registry(db)
        reg.forward(op="set", scope="global", name="temperature", value=0.5)  # version 1
        planned = reg.forward(op="set", scope="global", name="classifier", value="pkg.a:SVM", dry_run=True)
        assert planned == {"ok": True, "version": 2}  # the version the write would get
        assert value(reg, "global", "classifier") == ("pkg.a:KNN", 0)
        assert value(registry(db), "global", "classifier") == ("pkg.a:KNN", 0)
        written = reg.forward(op="set", scope="global", name="classifier", value="pkg.a:SVM", reconciled=True, writer=WRITER)
        assert written["version"] == 2  # nothing was used up by the dry run

    def test_set_many_dry_run_replies_the_versions_it_would_get(self, db):
        reg = registry(db)
        planned = reg.forward(op="set_many", values={"global": {"temperature": 0.2}, "pool": {"workers": 2}},
                              dry_run=True)
        assert planned == {"ok": True, "versions": {"global": {"temperature": 1}, "pool": {"workers": 1}},
                           "before": {"global": {"temperature": 1.0}, "pool": {"workers": 1}}}
        assert value(reg, "pool", "workers") == (1, 0) and reg.store.take_changes() == []

    @pytest.mark.parametrize("request_, kind, named", [
        ({"op": "set", "scope": "global", "name": "classifier", "value": "pkg.a:RF"}, "invalid", "pkg.a:RF"),
        ({"op": "set", "scope": "pool", "name": "low", "value": 7}, "invalid", "low < high"),
        ({"op": "set_many", "values": {"pool": {"low": 5, "workers": 2}}}, "invalid", "low < high"),
        ({"op": "set", "scope": "global", "name": "temperature", "value": 0.1, "expected_version": 4}, "conflict",
         "expected version 4"),
    ])
    def test_a_dry_run_is_checked_exactly_as_the_write(self, db, request_, kind, named):
        reg = registry(db)
        dry = reg.forward(**request_, dry_run=True)
        assert dry["error"] == kind and named in dry["problems"][0]
        wet = reg.forward(**request_, reconciled=True, writer=WRITER)
        assert (wet["error"], wet["problems"]) == (kind, dry["problems"])

    def test_a_dry_run_publishes_nothing(self, db, tmp_path):
        endpoint = f"ipc://{tmp_path}/events.sock"
        reg = registry(db, events=endpoint)
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.subscribe(b"")
        sub.connect(endpoint)
        try:
            # a published write reaches the subscriber once it is connected: wait for one
            for attempt in range(500):
                reg.forward(op="set", scope="pool", name="high", value=5 + attempt % 2)
                if sub.poll(20):
                    break
            while sub.poll(50):
                sub.recv()
            reg.forward(op="set", scope="global", name="classifier", value="pkg.a:SVM", dry_run=True)
            reg.forward(op="set_many", values={"global": {"temperature": 0.3}}, dry_run=True)
            reg.forward(op="set", scope="global", name="temperature", value=0.4)  # a marker after them
            assert sub.poll(5000)
            event = VARIABLE_CHANGED.decode(sub.recv())
            assert (event.name, event.value) == ("temperature", 0.4)  # the dry runs sent nothing before it
        finally:
            sub.close(linger=0)
            context.term()
            reg.teardown()


def test_with_registry_tells_the_registry_the_bound_variables_and_the_constraints():
    root = SupervisorSpec(id="root", children=(
        ChildSpec(id="clf", program=Bound("global.classifier")),
        SupervisorSpec(id="pool", children=(
            ChildSpec(id="cache", program="pkg.a:Cache", enabled=Bound("pool.use_cache")),
            ChildSpec(id="plain", program="pkg.a:KNN"),
        )),
    ))
    placed = with_registry(root, VARIABLES, CONSTRAINTS)
    first = placed.children[0]
    assert first.id == REGISTRY_ID
    assert first.args["bound"] == ["global.classifier", "pool.use_cache"]
    assert first.args["constraints"] == CONSTRAINTS
    plain = with_registry(msgspec.structs.replace(root, children=root.children[1:]), VARIABLES)
    assert plain.children[0].args["bound"] == ["pool.use_cache"] and "constraints" not in plain.children[0].args
