"""The registry's messages: one tagged request per operation, one typed reply each, one refusal.

A request travels as the inputs of an ordinary agent call (``Call.inputs``): the request
Struct, tagged by ``op``, encodes to the very map callers sent before it was typed
(``{"op": "get", "scope": ..., "name": ...}``), and a reply is the call's outputs (``ok``
first). The wire format of agent calls is untouched: ``otpy.Caller(node).call("registry",
{"op": ...})`` still works, and gets the same maps back.

Each direction is read once, by a decoder built once: ``read_request`` (the registry's side,
``TO_REGISTRY``) and ``read_registry_reply`` (a client's side: the request says which reply it
expects). A request that is not one of these is a ``RegistryRefusal`` of kind ``bad_request`` naming
the field; ``invalid``, ``conflict`` and ``internal`` come from the registry's answer.

>>> read_request({"op": "get", "scope": "global", "name": "t"})
GetValue(scope='global', name='t')
>>> request_inputs(SetValue(scope="global", name="t", value=1.5))
{'op': 'set', 'scope': 'global', 'name': 't', 'value': 1.5}
>>> read_request({"op": "get", "scope": "global"}).problems
["get: missing field 'name'"]
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Union

import msgspec

from .protocol import ENCODER

MAX_WRITE_BYTES = 1 << 20  # 1 MiB: the most a write weighs on the wire. Every write reaches the registry in
# one message to the node (``SetVariables``, a frame of at most ``node.control.MAX_MESSAGE_BYTES``, also 1 MiB)
WRITE_ENVELOPE_BYTES = 16 << 10  # what a write carries besides its value: the request's fields, scope, names
MAX_DOCUMENT_BYTES = MAX_WRITE_BYTES - WRITE_ENVELOPE_BYTES  # 1,032,192: the most a document variable's
# ``max_bytes`` may be (compact JSON, UTF-8), so that a document of that size fits one write with its envelope
# (msgpack carries JSON text in fewer bytes, except floats: 9 bytes each, said by the write that is too big)
MAX_TOTAL_BYTES = 8 << 20  # 8 MiB: the most all the variables the registry serves may weigh together
# (``otpy.variables.weight``: each one's value and default as msgpack, with its names). A reply carrying
# all of them (``list``, ``get_space``'s defaults) or some (a child's ``resolve``) stays under the 16 MiB a
# reply may weigh (``codec.MAX_CALL_BYTES``), whatever the number of variables

# --- replies (registry -> caller, as the call's outputs) ----------------------------------


class RegistryReply(msgspec.Struct, frozen=True):
    """Base of the registry's answers; ``ok`` comes first on the wire."""

    ok: bool = True


class ValueEntry(RegistryReply, kw_only=True):
    """One variable's value at one scope: ``reason`` is ``set`` (``version`` > 0), ``default``,
    ``computed`` (a composite) or ``missing`` (``value`` None). The reply to ``get``, and each
    item of ``list``'s."""

    scope: str
    name: str
    value: Any
    version: int
    reason: Literal["set", "default", "computed", "missing"]


class ValueList(RegistryReply, kw_only=True):
    values: list[ValueEntry]


class Resolved(RegistryReply, kw_only=True):
    config: dict[str, Any]


class Explained(RegistryReply, kw_only=True):
    scope: str
    value: Any
    reason: Literal["set", "default", "computed", "missing"]


class SpaceRegistered(RegistryReply, kw_only=True):
    scope: str
    added: list[str]  # the names new to the scope


class Written(RegistryReply, kw_only=True):
    version: int


class WrittenMany(RegistryReply, kw_only=True):
    versions: dict[str, dict[str, int]]  # {scope: {name: version}}; {} when nothing was given
    before: dict[str, dict[str, Any]] = {}  # the values written (or, dry run, to be written) over: set or default


class SpaceTables(RegistryReply, kw_only=True):
    """The declared variables, as a topology declares them: ``spaces`` is ``{scope: {name:
    table}}`` (a composite's table names its ``compute`` function), ``constraints`` is ``{scope:
    [{"check": "module:function", "description": ...}]}``, ``bound`` the ``SCOPE.NAME`` of the
    variables that decide what runs (set through the node). The reply to ``get_space``."""

    spaces: dict[str, dict[str, dict[str, Any]]]
    constraints: dict[str, list[dict[str, str]]] = {}
    bound: list[str] = []


RefusalKind = Literal["bad_request", "invalid", "conflict", "bound", "unavailable", "internal"]


class RegistryRefusal(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The registry did not do it. ``kind``: ``bad_request`` (not a request: unknown op, a
    missing, unexpected or mistyped field, named), ``invalid`` (a value or declaration refused,
    nothing written), ``conflict`` (a compare-and-set lost; ``current`` is the current version),
    ``bound`` (a write of a variable that decides what runs, sent to the registry instead of
    the node: nothing written; the problems name it and say to set it through the node),
    ``unavailable`` (the shared database is unreachable: the write was not stored, the problem
    says where and to retry; reads still answer) or ``internal`` (an otpy bug or an unusable file, logged by the registry with its traceback).
    On the wire: ``{"ok": false, "error": kind, "problems": [...]}`` (+ ``current``)."""

    ok: bool = msgspec.field(default_factory=bool)  # False; a factory default stays on the wire
    kind: RefusalKind = msgspec.field(name="error")
    problems: list[str]
    current: int | None = None


# --- requests (caller -> registry, as the call's inputs) ----------------------------------


class RegistryRequest(msgspec.Struct, frozen=True, kw_only=True, tag_field="op",
                      forbid_unknown_fields=True, omit_defaults=True):
    """Base of the registry's requests; ``reply`` is the type of its answer when not refused."""

    reply: ClassVar[type[RegistryReply]]


class GetValue(RegistryRequest, tag="get"):
    """The value at ``scope`` itself (set, default or computed), with its version."""

    reply = ValueEntry
    scope: str
    name: str


class ListValues(RegistryRequest, tag="list"):
    """Every variable of ``scope``, or of every scope."""

    reply = ValueList
    scope: str | None = None


class SetValue(RegistryRequest, tag="set"):
    """Set one value; with ``expected_version`` (0: never set), only if it is the current one.

    ``dry_run``: checked exactly as the write (constraints, ``expected_version``), nothing
    committed or published; the reply is the version it would get. ``reconciled``: the node
    says the running tree already runs the value (only the node may write a bound variable),
    and proves it is the node with ``writer``, the secret it gave its registry at start."""

    reply = Written
    scope: str
    name: str
    value: Any
    expected_version: int | None = None
    dry_run: bool = False
    reconciled: bool = False
    writer: str = ""


class SetValues(RegistryRequest, tag="set_many"):
    """Set ``{scope: {name: value}}`` at once: all checked first, one transaction, one version.
    ``dry_run``, ``reconciled`` and ``writer`` as ``SetValue``'s. ``expected``: ``{scope: {name:
    version}}`` (0: never set), a compare-and-set in the same transaction (``conflict``, nothing
    written, when one is not at its version)."""

    reply = WrittenMany
    values: dict[str, dict[str, Any]]
    expected: dict[str, dict[str, int]] = {}
    dry_run: bool = False
    reconciled: bool = False
    writer: str = ""


class Resolve(RegistryRequest, tag="resolve"):
    """``child``'s configuration; ``chain``: its supervisors, nearest first (a child the tree
    does not know yet is learnt from it). ``overlay`` (``{scope: {name: value}}``): the
    configuration as it would be with those values written (checked as the write; nothing
    stored): what a program is asked to accept before a write is stored (``ConfigCheck``)."""

    reply = Resolved
    child: str
    chain: list[str] = []
    overlay: dict[str, dict[str, Any]] = {}


class Explain(RegistryRequest, tag="explain"):
    """Where ``child``'s ``name`` comes from."""

    reply = Explained
    child: str
    name: str
    chain: list[str] = []


class RegisterSpace(RegistryRequest, tag="register_space"):
    """Declare variables (the topology's table form) in ``scope`` at run time, durably."""

    reply = SpaceRegistered
    scope: str
    variables: dict[str, dict[str, Any]]


class GetSpace(RegistryRequest, tag="get_space"):
    """The declared variables of ``scope`` (or of every scope), topology-declared and registered
    at run time, in the topology's table form, with the constraints: what an optimizer searches."""

    reply = SpaceTables
    scope: str | None = None


ToRegistry = Union[GetValue, ListValues, SetValue, SetValues, Resolve, Explain, RegisterSpace, GetSpace]
TO_REGISTRY = msgspec.msgpack.Decoder(ToRegistry)
REQUESTS: dict[str, type[RegistryRequest]] = {
    cls.__struct_config__.tag: cls for cls in typing.get_args(ToRegistry)}
_PLAIN = msgspec.msgpack.Decoder()


def request_inputs(request: RegistryRequest) -> dict[str, Any]:
    """The call inputs that carry ``request``: exactly what the wire carries (``op`` first,
    optional fields left out when not given)."""
    return _PLAIN.decode(ENCODER.encode(request))


def reply_outputs(reply: RegistryReply | RegistryRefusal) -> dict[str, Any]:
    """The call outputs that carry ``reply`` (``ok`` first). Raises ``msgspec.EncodeError`` or
    ``TypeError`` for a value msgpack cannot carry (a composite that computed an odd object)."""
    return _PLAIN.decode(ENCODER.encode(reply))


def read_request(inputs: Mapping[str, Any]) -> ToRegistry | RegistryRefusal:
    """The request the call's inputs carry, or the ``bad_request`` refusal naming the field."""
    try:
        data = ENCODER.encode(inputs)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        return RegistryRefusal(kind="bad_request", problems=[f"the request cannot be read: {exc}"])  # in-process callers
    try:
        return TO_REGISTRY.decode(data)
    except msgspec.ValidationError as exc:
        return RegistryRefusal(kind="bad_request", problems=[_problem(inputs, str(exc))])


def read_registry_reply(request: RegistryRequest, outputs: Mapping[str, Any]) -> RegistryReply | RegistryRefusal:
    """The registry's answer to ``request``, from the call's outputs. A map that is neither
    (another program answered as ``registry``, or an otpy bug) raises ``msgspec.ValidationError``."""
    return msgspec.convert(outputs, RegistryRefusal if outputs.get("ok") is False else request.reply)


# --- a malformed request, in words --------------------------------------------------------

_MESSAGE = re.compile(r"^(?P<what>.*?)(?: - at (?:`(?P<key>key)` in )?`\$(?P<path>[^`]*)`)?$", re.S)
_TYPES = {"str": "a string", "int": "an integer", "object": "a table", "array": "an array", "null": "none"}


def _problem(inputs: Mapping[str, Any], message: str) -> str:
    """msgspec's ``message`` about ``inputs`` as otpy words it: ``OP: FIELD: got X; expected Y``."""
    op = inputs.get("op")
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    known = ", ".join(REQUESTS)
    match = _MESSAGE.match(message)
    what, path = match["what"], (match["path"] or "").lstrip(".")
    if cls is None:  # msgspec's message is about ``op``
        if isinstance(op, str):
            return f"unknown op {op!r}; expected one of {known}"
        return f"op: got {type(op).__name__}; expected one of {known}" if "op" in inputs \
            else f"missing field 'op'; expected one of {known}"
    if missing := re.match(r"Object missing required field `(.+)`", what):
        return f"{op}: missing field {missing[1]!r}"
    if unknown := re.match(r"Object contains unknown field `(.+)`", what):
        fields = ", ".join(sorted(cls.__struct_fields__))
        return f"{op}: unexpected field {unknown[1]!r}; expected {fields}"
    if "[...]" in path:
        path = _entry_path(cls, inputs, path)
    if match["key"]:
        path += " (a key)"
    if wrong := re.match(r"Expected `(.+?)`, got `(.+?)`", what):
        expected = " or ".join(_TYPES.get(kind, kind) for kind in wrong[1].split(" | "))
        return f"{op}: {path}: got {wrong[2]}; expected {expected}"
    return f"{op}: {path}: {what}"


def _entry_path(cls: type[RegistryRequest], inputs: Mapping[str, Any], path: str) -> str:
    """``values[...]`` as ``values.SCOPE``: the first entry of a table field that is refused."""
    field = path.split("[", 1)[0]
    table = inputs.get(field)
    entry_type = typing.get_args(typing.get_type_hints(cls).get(field, Any))[-1:]
    if not isinstance(table, Mapping) or not entry_type:
        return path
    for key, value in table.items():
        try:
            msgspec.convert(value, entry_type[0])
        except msgspec.ValidationError:
            return f"{field}.{key}{path[len(field) + 5:]}"
    return path
