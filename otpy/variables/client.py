"""The one client of the variable registry: typed requests out, typed replies back.

Every part of otpy that talks to the registry goes through ``RegistryClient``: the worker of a
program child (``otpy.agent.registry_link``: ``resolve`` at start and after each change), the
manager program, the node (``set_variables``), the optimizer (``get_space``) and ``otpy vars``.
The client carries a request over any *caller*: an object with ``call(agent, inputs,
timeout=...)`` (``otpy.Caller``, a program's node caller, the worker's own DEALER) and, for
``aask``, ``acall``. It does no I/O of its own, so a starting child does not import the caller
machinery to ask for its configuration.

``ask``/``aask`` return the typed reply or the ``RegistryRefusal``; the helpers return the reply's
content and raise ``RegistryRefused`` for a refusal. A caller's ``CallError`` (timeout, no
registry running) passes through.

>>> class Fake:  # a registry that has one value
...     def call(self, agent, inputs, timeout):
...         return {"ok": True, "scope": "global", "name": "t", "value": 1.5, "version": 3, "reason": "set"}
>>> RegistryClient(Fake()).get("global", "t").value
1.5
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..wire.registry_protocol import (
    Explain,
    Explained,
    GetSpace,
    GetValue,
    ListValues,
    RegistryRefusal,
    RegisterSpace,
    RegistryReply,
    RegistryRequest,
    Resolve,
    SetValue,
    SetValues,
    SpaceTables,
    ValueEntry,
    read_registry_reply,
    request_inputs,
)
from .placement import REGISTRY_ID

DEFAULT_TIMEOUT = 5.0  # per attempt, as ``Caller.call``'s


class RegistryRefused(RuntimeError):
    """The registry refused a request: ``refused`` says how (``kind``, ``problems``, ``current``);
    the message is the problems, one per ``; ``."""

    def __init__(self, refused: RegistryRefusal):
        self.refused = refused
        super().__init__("; ".join(refused.problems) or refused.kind)


class RegistryClient:
    """Typed requests to the node's registry over ``caller`` (see the module's docstring)."""

    def __init__(self, caller: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.caller, self.timeout = caller, timeout

    def ask(self, request: RegistryRequest) -> RegistryReply | RegistryRefusal:
        outputs = self.caller.call(REGISTRY_ID, request_inputs(request), timeout=self.timeout)
        return read_registry_reply(request, outputs)

    async def aask(self, request: RegistryRequest) -> RegistryReply | RegistryRefusal:
        outputs = await self.caller.acall(REGISTRY_ID, request_inputs(request), timeout=self.timeout)
        return read_registry_reply(request, outputs)

    def _answer(self, request: RegistryRequest) -> Any:
        reply = self.ask(request)
        if isinstance(reply, RegistryRefusal):
            raise RegistryRefused(reply)
        return reply

    def get(self, scope: str, name: str) -> ValueEntry:
        return self._answer(GetValue(scope=scope, name=name))

    def list(self, scope: str | None = None) -> list[ValueEntry]:
        return self._answer(ListValues(scope=scope)).values

    def set(self, scope: str, name: str, value: Any, expected_version: int | None = None, *,
            dry_run: bool = False, reconciled: bool = False) -> int:
        """The value's new version (``dry_run``: the version it would get, nothing written); a
        lost compare-and-set is a refusal of kind ``conflict``, a bound variable written without
        ``reconciled`` (only the node writes those) one of kind ``bound``."""
        return self._answer(SetValue(scope=scope, name=name, value=value, expected_version=expected_version,
                                     dry_run=dry_run, reconciled=reconciled)).version

    def set_many(self, values: Mapping[str, Mapping[str, Any]], *, dry_run: bool = False,
                 reconciled: bool = False) -> dict[str, dict[str, int]]:
        return self._answer(SetValues(values={scope: dict(v) for scope, v in values.items()}, dry_run=dry_run,
                                      reconciled=reconciled)).versions

    def get_space(self, scope: str | None = None) -> SpaceTables:
        """The declared variables (topology and run time) in the topology's table form, by scope,
        with the constraints and the bound variables: the space an optimizer searches."""
        return self._answer(GetSpace(scope=scope))

    def resolve(self, child: str, chain: Iterable[str] = ()) -> dict[str, Any]:
        return self._answer(Resolve(child=child, chain=list(chain))).config

    def explain(self, child: str, name: str, chain: Iterable[str] = ()) -> Explained:
        return self._answer(Explain(child=child, name=name, chain=list(chain)))

    def register_space(self, scope: str, variables: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """The names new to ``scope`` (the topology's table form, by name)."""
        return self._answer(RegisterSpace(scope=scope, variables={n: dict(t) for n, t in variables.items()})).added
