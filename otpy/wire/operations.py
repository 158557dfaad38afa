"""The operations of a node, each one control request, for everything that answers requests.

``Node``, ``AsyncNode``, ``Client`` and ``AsyncClient`` all answer ``request(msg) -> reply``
with the messages of ``protocol`` (``ToNode`` in, ``FromNode`` out). ``Operations`` adds OTP's
named operations on top, each one line: the request to send and the part of the reply to
return. A subclass gives ``_ask(request, take)``: send ``request`` (with a fresh request id
where it goes over a socket), then return ``take(reply)``, at once or as a coroutine.

Replies are returned as they are (the wire's Structs: ``Outcome`` alias ``otpy.Result``,
``ChildInfo``, ``Counts``, ``Status``), with ``request_id`` 0: the id belongs to the round trip,
not to the answer, so ``client.terminate_child("a") == otpy.Result("ok")``. A ``Refused``
reply is raised as ``ControlError`` (``NoSuchSupervisor`` for ``not_found``).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import msgspec

from ..specs.model import AnySpec
from .protocol import (
    Action, ChildInfo, Children, CountChildren, Counts, DeleteChild, GetStatus, Message, Outcome,
    Reconfigure, Refused, Reload, RestartChild, SetVariables, SignalChild, Announce, StartChild,
    StartFromTemplate, Status, TerminateChild, WhichChildren,
)

Reply = TypeVar("Reply", bound=Message)


class ControlError(RuntimeError):
    """The node refused the request; nothing changed. ``kind``: bad_request, not_found, stopping, internal."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class NoSuchSupervisor(ControlError, LookupError):
    """``which_children``/``count_children`` of a supervisor the node does not have (kind ``not_found``)."""


def refusal(reply: Refused) -> ControlError:
    """The exception a ``Refused`` reply is raised as."""
    kind = NoSuchSupervisor if reply.kind == "not_found" else ControlError
    return kind(reply.kind, reply.message)


def expect(kind: type[Reply]) -> Callable[[Message], Reply]:
    """What to take from a reply that should be a ``kind``: the reply itself, its id set to 0;
    a ``Refused`` raised as ``ControlError``; any other reply is a bug (ControlError internal)."""

    def take(reply: Message) -> Reply:
        if isinstance(reply, Refused):
            raise refusal(reply)
        if not isinstance(reply, kind):
            raise ControlError("internal", f"expected {kind.__name__}, got {type(reply).__name__}")
        return msgspec.structs.replace(reply, request_id=0) if reply.request_id else reply

    return take


_outcome = expect(Outcome)
_counts = expect(Counts)
_status = expect(Status)
_children_reply = expect(Children)


def _children(reply: Message) -> list[ChildInfo]:
    return _children_reply(reply).children


class Operations:
    """OTP's operations as requests; ``_ask`` is the round trip (blocking or a coroutine)."""

    def _ask(self, request: Message, take: Callable[[Message], Any]) -> Any:
        raise NotImplementedError

    def which_children(self, sup: str | None = None) -> list[ChildInfo]:
        return self._ask(WhichChildren(0, sup or ""), _children)

    def count_children(self, sup: str | None = None) -> Counts:
        return self._ask(CountChildren(0, sup or ""), _counts)

    def start_child(self, sup: str | None, spec: AnySpec) -> Outcome:
        return self._ask(StartChild(0, sup or "", spec), _outcome)

    def start_from_template(self, sup: str, template: str, child_id: str, args: dict | None = None) -> Outcome:
        return self._ask(StartFromTemplate(0, sup or "", template, child_id, args or {}), _outcome)

    def terminate_child(self, child_id: str, sup: str | None = None) -> Outcome:
        return self._ask(TerminateChild(0, child_id, sup or ""), _outcome)

    def restart_child(self, child_id: str, sup: str | None = None) -> Outcome:
        return self._ask(RestartChild(0, child_id, sup or ""), _outcome)

    def delete_child(self, child_id: str, sup: str | None = None) -> Outcome:
        return self._ask(DeleteChild(0, child_id, sup or ""), _outcome)

    def signal_child(self, child_id: str, signal: int, sup: str | None = None) -> Outcome:
        """Send the signal number ``signal`` to the running worker ``child_id``."""
        return self._ask(SignalChild(0, child_id, int(signal), sup or ""), _outcome)

    def reload(self, path: str = "", *, code: bool = False, dry_run: bool = False) -> Outcome:
        """Make the tree match the topology file ``path`` (empty: the node's own file); the
        outcome's ``changes`` say what was done (``dry_run``: what would be)."""
        return self._ask(Reload(0, path, code, dry_run), _outcome)

    def reconfigure(self, sup: str | None, source: str, target: AnySpec) -> Outcome:
        """Replace the running child ``source`` by ``target`` (same id), make-before-break."""
        return self._ask(Reconfigure(0, sup or "", source, target), _outcome)

    def set_variables(self, scope: str, values: dict[str, Any], *, dry_run: bool = False,
                      expected: dict[str, dict[str, int]] | None = None) -> Outcome:
        """Set ``values`` in the registry's ``scope``, all or nothing, once the running tree
        matches them; the outcome's ``changes`` say what changed (with ``dry_run``: the plan,
        and nothing changes). ``expected``: ``{scope: {name: version}}`` (0: never set), a
        compare-and-set in the same transaction as the commit."""
        return self._ask(SetVariables(0, scope, values, dry_run, expected=expected or {}), _outcome)

    def set_config(self, config: dict[str, dict[str, Any]], *, dry_run: bool = False) -> Outcome:
        """Set ``config`` (``{scope: {name: value}}``: several scopes) in one all-or-nothing
        write, as ``set_variables`` does for one scope (an optimizer's configuration)."""
        return self._ask(SetVariables(0, "", {}, dry_run, {scope: dict(v) for scope, v in config.items()}), _outcome)

    def announce(self, kind: str, detail: str = "") -> Outcome:
        """Publish a decision as a node event of ``kind`` (``otpy events`` shows it)."""
        return self._ask(Announce(0, kind, detail), _outcome)

    def apply(self, action: Action) -> Outcome:
        """Carry out one optimizer action as it is."""
        return self._ask(action, _outcome)

    def status(self) -> Status:
        return self._ask(GetStatus(0), _status)
