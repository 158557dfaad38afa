"""What ``otpy vars`` and the registry refuse, and how (#17's adversarial report, items 3, 5, 6,
8 and 11): a document's VALUE that is not JSON, values no message can carry (one line naming
the variable, never a traceback), the total the registry's variables may weigh, the largest
``max_bytes`` that can be written, and JSON output that is always JSON."""

from __future__ import annotations

import json
import os

import msgspec
import pytest
from click.testing import CliRunner

from otpy.cli import set_values
from otpy.cli import vars as vars_cli
from otpy.topology.files import read_bounded_file
from otpy.variables.registry import Registry
from otpy.variables.types import VariableError, variable_from_table
from otpy.wire.codec import MAX_CALL_BYTES
from otpy.wire.protocol import ENCODER, Outcome, SetVariables
from otpy.wire.registry_protocol import (
    MAX_DOCUMENT_BYTES, MAX_TOTAL_BYTES, MAX_WRITE_BYTES, ValueEntry, ValueList,
)

pytestmark = pytest.mark.timeout(60)

DECLARED = {"doc": {"type": "document", "max_bytes": 4096}, "small": {"type": "document", "max_bytes": 16},
            "knob": {"type": "float", "low": 0.0, "high": 1.0}, "name": {"type": "choice", "choices": ["a", "b"]}}


@pytest.fixture
def sent(monkeypatch):
    """``otpy vars set`` against a scope declaring ``DECLARED``; the writes it would send."""
    writes: list = []
    monkeypatch.setattr(vars_cli, "_declared", lambda node, scope: DECLARED)
    monkeypatch.setattr(vars_cli, "_set_through_node", lambda node, scope, values, dry: writes.append(
        (scope, values)) or Outcome("ok"))
    return writes


def vars_set(*args: str):
    return CliRunner().invoke(vars_cli.vars_group, ["set", *args], catch_exceptions=False)


# --- item 3: a document's VALUE is JSON text, whatever it starts with ------------------------------


@pytest.mark.parametrize("args", [
    ("global", "doc=state.json"),  # the @ forgotten: was stored as the string "state.json"
    ("global", "doc=hello"), ("global", "doc=True"), ("global", "doc="), ("global", "doc=a=b=c"),
    ("global.doc", "knob=0.1"),  # SCOPE.NAME VALUE: the value is the text "knob=0.1"
])
def test_text_that_is_not_json_is_refused_for_a_document_whatever_it_starts_with(sent, args):
    result = vars_set(*args)
    assert result.exit_code == 1
    assert result.output.startswith("otpy: vars set global.doc: the value is not JSON: ")
    assert result.output.endswith("give JSON text (a string in quotes: '\"text\"') or @FILE\n")
    assert sent == []


def test_a_string_document_is_given_as_json_and_other_variables_still_take_plain_text(sent):
    assert vars_set("global", 'doc="state.json"').exit_code == 0
    assert vars_set("global", "name=a", "knob=0.5").exit_code == 0  # not JSON, not a document: the text
    assert sent == [("global", {"doc": "state.json"}), ("global", {"name": "a", "knob": 0.5})]


# --- item 6: what no message can carry is one line naming the variable ------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP = "got a value nested deeper than 32 levels; expected objects and arrays nested at most 32 deep"
SURROGATE = "got a value holding a string that is not Unicode text (a lone surrogate); expected JSON text"


@pytest.mark.parametrize("assignment, problem", [
    ('small="\ud800"', SURROGATE),
    ('small={"\udc00": 1}', SURROGATE),
    ('knob="\udcff"', SURROGATE),  # a byte of argv that is not UTF-8 reaches Python as a lone surrogate
    ("name=\udcff", SURROGATE),  # not JSON: the plain text, a lone surrogate all the same
    ("small=18446744073709551616", "got a value holding 18446744073709551616 (an int) at $; expected JSON: "
                                   "integers within 64 bits"),
    ("small=-9223372036854775809", "got a value holding -9223372036854775809 (an int) at $"),
    (f"doc={nested(5000)}", DEEP),  # was a RecursionError traceback
    (f"doc={nested(33)}", DEEP), (f"doc={nested(34)}", DEEP), (f"doc={nested(100)}", DEEP),  # was the wire's 100
    (f"knob={nested(60)}", DEEP),
])
def test_values_no_message_can_carry_are_one_line_naming_the_variable(sent, assignment, problem):
    result = vars_set("global", assignment)
    name = assignment.partition("=")[0]
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"otpy: vars set global.{name}: {problem}")
    assert result.output.count("\n") == 1 and sent == []


def test_a_scope_that_is_not_unicode_text_is_one_line(sent):
    for args in (["g\udcff", "doc=1"], ["global.d\udcff", "1"]):
        result = vars_set(*args)
        assert result.exit_code == 1
        assert "the argument is not Unicode text (it holds a byte that is not UTF-8)" in result.output
        assert "\\udcff" in result.output
    assert sent == []


def test_a_folder_or_deep_json_given_as_a_file_is_one_line(sent, tmp_path):
    (tmp_path / "link").symlink_to(tmp_path)
    for path in (tmp_path, tmp_path / "link"):
        result = vars_set("global", f"doc=@{path}")
        assert result.exit_code == 1
        assert result.output == (f"otpy: vars set global.doc: {path}: cannot read the file: it is a folder, not a "
                                 "regular file; give a JSON file (compact JSON counts fewest bytes)\n")
    deep = tmp_path / "deep.json"
    deep.write_text(nested(2000))
    result = vars_set("global", f"doc=@{deep}")
    assert result.exit_code == 1 and result.output == f"otpy: vars set global.doc: {deep}: {DEEP.replace('value', 'document')}\n"
    assert sent == []


def test_the_safe_reader_leaves_no_descriptor_open_when_it_refuses(tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(ValueError, match="it is a folder, not a regular file"):
            read_bounded_file(str(tmp_path), 10, allowed="10 bytes", hint="give a file")
        with pytest.raises(ValueError, match="over 10 bytes"):
            (tmp_path / "big").write_bytes(b"x" * 11)
            read_bounded_file(str(tmp_path / "big"), 10, allowed="10 bytes", hint="give a file")
    assert len(os.listdir("/proc/self/fd")) <= before


# --- item 8: max_bytes is at most what one write carries -------------------------------------------


def test_a_document_of_the_largest_max_bytes_fits_one_write():
    with pytest.raises(VariableError, match=r"max_bytes: got 1048576; expected an integer in \[1, 1032192\]"):
        variable_from_table("doc", {"type": "document", "max_bytes": MAX_WRITE_BYTES})
    doc = variable_from_table("d" * 200, {"type": "document", "max_bytes": MAX_DOCUMENT_BYTES})
    text = "é" * ((MAX_DOCUMENT_BYTES - 2) // 2)  # as compact JSON: exactly max_bytes (quotes included)
    assert doc.problem(text) is None
    values = {doc.name: text}
    assert set_values.too_big("s" * 200, values, dry_run=False) is None
    assert len(ENCODER.encode(SetVariables(2**63 - 1, "s" * 200, values, False))) <= MAX_WRITE_BYTES


# --- item 5: what the registry's variables weigh together ------------------------------------------

BIG = {f"big{i}": {"type": "document", "default": {}, "max_bytes": MAX_DOCUMENT_BYTES} for i in range(12)}
MEGA = "x" * 1_000_000


def open_registry(tmp_path, variables=None) -> Registry:
    registry = Registry()
    parents = {"echo": "root", "root": "global"}
    registry.setup({"variables": variables or {"global": BIG}, "parents": parents,
                    "path": str(tmp_path / "registry.db")}, {})
    return registry


def test_a_write_past_the_total_is_refused_naming_it_and_every_reply_still_fits(tmp_path):
    registry = open_registry(tmp_path)
    written = 0
    while (reply := registry.forward(op="set", scope="global", name=f"big{written}", value=MEGA))["ok"]:
        written += 1
    assert written == 8  # 8 MiB: eight values of 1 MB fit, with their names and defaults; the ninth does not
    assert reply["error"] == "invalid"
    (problem,) = reply["problems"]
    assert problem.startswith("setting global.big8 would make the registry's variables weigh ")
    assert f"over its total of {MAX_TOTAL_BYTES:,} bytes (8 MiB)" in problem and "nothing was written" in problem
    assert registry.forward(op="get", scope="global", name="big8")["reason"] == "default"
    many = registry.forward(op="set_many", values={"global": {"big8": MEGA, "big9": {}}})
    assert many["ok"] is False and many["problems"][0].startswith("setting global.big8, global.big9 would make")
    for request in ({"op": "list"}, {"op": "resolve", "child": "echo", "chain": ["root"]}, {"op": "get_space"}):
        assert len(ENCODER.encode(registry.forward(**request))) < MAX_CALL_BYTES - (1 << 20)
    assert registry.forward(op="set", scope="global", name="big0", value="smaller")["ok"]  # lighter: taken
    assert registry.forward(op="set", scope="global", name="big8", value=MEGA[:500_000])["ok"]  # room made
    registry.teardown()
    again = open_registry(tmp_path)  # a restart: everything stored is served, and still fits
    assert again.forward(op="resolve", child="echo", chain=["root"])["config"]["big8"] == MEGA[:500_000]
    again.teardown()


def test_floats_are_weighed_as_the_wire_carries_them(tmp_path):
    """A document of floats is 4 bytes a float as JSON and 9 as msgpack: the total counts msgpack,
    so a resolve reply cannot pass the limit through JSON's smaller count."""
    registry = open_registry(tmp_path)
    floats = [0.5] * 200_000  # 800 KB of JSON, 1.8 MB on the wire
    written = 0
    while registry.forward(op="set", scope="global", name=f"big{written}", value=floats)["ok"]:
        written += 1
    assert written == 4
    assert len(ENCODER.encode(registry.forward(op="resolve", child="echo", chain=["root"]))) <= MAX_TOTAL_BYTES + 4096
    registry.teardown()


def test_declaring_variables_at_run_time_past_the_total_is_refused(tmp_path):
    registry = open_registry(tmp_path)
    for i in range(7):
        assert registry.forward(op="set", scope="global", name=f"big{i}", value=MEGA)["ok"]
    table = {"type": "document", "default": MEGA, "max_bytes": MAX_DOCUMENT_BYTES}
    refused = registry.forward(op="register_space", scope="echo", variables={"d1": table, "d2": table})
    assert refused["ok"] is False
    assert refused["problems"][0].startswith("register_space: declaring echo.d1, echo.d2 would make the registry's")
    assert registry.forward(op="get_space", scope=None)["spaces"].keys() == {"global"}
    assert registry.forward(op="register_space", scope="echo", variables={"d1": table})["ok"]
    registry.teardown()


def test_declarations_over_the_total_are_refused_when_read():
    from otpy.variables.space import spaces_from_topology

    table = {"type": "document", "default": MEGA, "max_bytes": MAX_DOCUMENT_BYTES}
    spaces_from_topology({"global": {f"d{i}": table for i in range(8)}})
    with pytest.raises(VariableError, match=r"^variables: the declarations weigh 9,00\d,\d{3} bytes together .*"
                                            r"over the registry's total of 8,388,608 bytes \(8 MiB\)"):
        spaces_from_topology({"global": {f"d{i}": table for i in range(9)}})


def test_the_total_keeps_every_reply_under_the_call_limit():
    assert MAX_TOTAL_BYTES + MAX_WRITE_BYTES < MAX_CALL_BYTES  # the values, and a write's before/after


# --- item 11: printed JSON is JSON ------------------------------------------------------------------


def strict(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_value_that_is_not_finite_prints_as_json_null(monkeypatch):
    entry = ValueEntry(scope="global", name="ratio", value=float("nan"), version=0, reason="computed")
    doc = ValueEntry(scope="global", name="d", value={"x": [float("inf"), 1.5]}, version=0, reason="computed")
    monkeypatch.setattr(vars_cli, "_ask", lambda node, request, bound_hint="": (
        ValueList(values=[entry, doc]) if request.reply is ValueList else entry))
    runner = CliRunner()
    assert strict(runner.invoke(vars_cli.vars_group, ["get", "global.ratio"]).output) is None
    assert strict(runner.invoke(vars_cli.vars_group, ["get", "global.ratio", "--json"]).output)["value"] is None
    listed = strict(runner.invoke(vars_cli.vars_group, ["list", "--json"]).output)
    assert [item["value"] for item in listed] == [None, {"x": [None, 1.5]}]
    assert msgspec.json.decode(runner.invoke(vars_cli.vars_group, ["list", "--json"]).output)[0]["name"] == "ratio"
