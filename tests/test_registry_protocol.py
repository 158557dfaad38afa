"""The registry's messages: the maps on the wire are the ones callers always sent and got."""

from __future__ import annotations

import pytest

from otpy.wire.registry_protocol import (
    REQUESTS,
    Explain,
    GetSpace,
    GetValue,
    ListValues,
    RegistryRefusal,
    RegisterSpace,
    Resolve,
    Resolved,
    SetValue,
    SetValues,
    ValueEntry,
    ValueList,
    Written,
    read_registry_reply,
    read_request,
    reply_outputs,
    request_inputs,
)

WIRE = [
    (GetValue(scope="global", name="t"), {"op": "get", "scope": "global", "name": "t"}),
    (ListValues(), {"op": "list"}),
    (ListValues(scope="team"), {"op": "list", "scope": "team"}),
    (SetValue(scope="global", name="t", value=None), {"op": "set", "scope": "global", "name": "t", "value": None}),
    (SetValue(scope="global", name="t", value=1.5, expected_version=0),
     {"op": "set", "scope": "global", "name": "t", "value": 1.5, "expected_version": 0}),
    (SetValues(values={"team": {"n": 2}}), {"op": "set_many", "values": {"team": {"n": 2}}}),
    (Resolve(child="a"), {"op": "resolve", "child": "a"}),
    (Resolve(child="a", chain=["team", "root"]), {"op": "resolve", "child": "a", "chain": ["team", "root"]}),
    (Explain(child="a", name="t"), {"op": "explain", "child": "a", "name": "t"}),
    (RegisterSpace(scope="a", variables={"b": {"type": "bool", "default": True}}),
     {"op": "register_space", "scope": "a", "variables": {"b": {"type": "bool", "default": True}}}),
    (SetValue(scope="g", name="t", value=1, dry_run=True), {"op": "set", "scope": "g", "name": "t", "value": 1,
                                                            "dry_run": True}),
    (SetValues(values={"g": {"t": 1}}, reconciled=True), {"op": "set_many", "values": {"g": {"t": 1}},
                                                          "reconciled": True}),
    (GetSpace(), {"op": "get_space"}),
    (GetSpace(scope="team"), {"op": "get_space", "scope": "team"}),
]


@pytest.mark.parametrize("request_, inputs", WIRE)
def test_a_request_travels_as_the_map_callers_always_sent(request_, inputs):
    assert request_inputs(request_) == inputs and list(request_inputs(request_))[0] == "op"
    assert read_request(inputs) == request_


def test_every_op_is_covered():
    assert {type(request).__struct_config__.tag for request, _ in WIRE} == set(REQUESTS)


def test_replies_and_refusals_are_the_maps_callers_always_got():
    entry = ValueEntry(scope="global", name="t", value=1.5, version=3, reason="set")
    assert reply_outputs(ValueList(values=[entry])) == {
        "ok": True, "values": [{"ok": True, "scope": "global", "name": "t", "value": 1.5, "version": 3, "reason": "set"}]}
    assert reply_outputs(Written(version=4)) == {"ok": True, "version": 4}
    assert reply_outputs(RegistryRefusal(kind="invalid", problems=["p"])) == {"ok": False, "error": "invalid", "problems": ["p"]}
    conflict = RegistryRefusal(kind="conflict", problems=["p"], current=3)
    assert reply_outputs(conflict) == {"ok": False, "error": "conflict", "problems": ["p"], "current": 3}
    assert read_registry_reply(SetValue(scope="g", name="t", value=1), reply_outputs(conflict)) == conflict
    assert read_registry_reply(Resolve(child="a"), {"ok": True, "config": {"t": 1}}) == Resolved(config={"t": 1})


@pytest.mark.parametrize("inputs, problem", [
    ({}, "missing field 'op'; expected one of get, list, set, set_many, resolve, explain, register_space, get_space"),
    ({"op": "drop"}, "unknown op 'drop'; expected one of get, list, set, set_many, resolve, explain, register_space, get_space"),
    ({"op": "get", "scope": "global"}, "get: missing field 'name'"),
    ({"op": "get", "scope": "g", "name": "t", "x": 1}, "get: unexpected field 'x'; expected name, scope"),
    ({"op": "set", "scope": "g", "name": "t", "value": 1, "expected_version": True},
     "set: expected_version: got bool; expected an integer or none"),
    ({"op": "set_many", "values": {"g": {"t": 1}, "team": 3}}, "set_many: values.team: got int; expected a table"),
    ({"op": "resolve", "child": "a", "chain": ["team", 2]}, "resolve: chain[1]: got int; expected a string"),
])
def test_a_malformed_request_is_a_bad_request_in_words(inputs, problem):
    assert read_request(inputs) == RegistryRefusal(kind="bad_request", problems=[problem])
