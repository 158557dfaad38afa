"""Child and supervisor specifications: immutable data, validated before anything starts.

Specs are msgspec Structs so that the same object is read from a topology file, built in
Python, and sent over the control socket (``start_child``) without a second model.
Defaults live here and nowhere else (OTP's ``?default_child_spec``), with the names
otpy uses everywhere: ``max_restarts`` / ``max_seconds``.

>>> ChildSpec(id="greeter", program="examples.hello.agents:Greeter").shutdown
5.0
>>> SupervisorSpec(id="team").shutdown
'infinity'
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

RestartType = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
AutoShutdown = Literal["never", "any_significant", "all_significant"]
# Seconds to wait after SIGTERM before SIGKILL, or one of OTP's two atoms.
Shutdown = Union[float, Literal["brutal_kill", "infinity"]]
Readiness = Literal["exec", "notify"]

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"  # ids and node names
NAME_EXPECTED = "a non-empty name of letters, digits, '_', '.' and '-'"

DEFAULT_MAX_RESTARTS = 3  # Elixir's default; OTP's raw supervisor uses 1.
DEFAULT_MAX_SECONDS = 5
DEFAULT_START_TIMEOUT = 10.0


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="worker"):
    """A worker: a Python ``program`` run by otpy's worker process, or any ``command``.

    Exactly one of ``program`` (``"module:attr"``) and ``command`` (argv) is given.
    """

    id: str
    program: str | None = None
    command: tuple[str, ...] | None = None
    args: dict[str, Any] = {}
    env: dict[str, str] = {}
    cwd: str | None = None
    restart: RestartType = "permanent"
    shutdown: Shutdown = 5.0
    significant: bool = False
    ready: Readiness = "exec"
    start_timeout: float = DEFAULT_START_TIMEOUT
    max_rss: float | None = None  # MiB: a program child above it after a call exits to be restarted

    @property
    def kind(self) -> str:
        return "worker"


class SupervisorSpec(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="supervisor"):
    """A static supervisor: an ordered list of children and one restart strategy."""

    id: str
    strategy: Strategy = "one_for_one"
    max_restarts: int = DEFAULT_MAX_RESTARTS
    max_seconds: int = DEFAULT_MAX_SECONDS
    auto_shutdown: AutoShutdown = "never"
    children: tuple[AnySpec, ...] = ()
    restart: RestartType = "permanent"
    shutdown: Shutdown = "infinity"
    significant: bool = False

    @property
    def kind(self) -> str:
        return "supervisor"


class DynamicSupervisorSpec(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="dynamic_supervisor"
):
    """A supervisor that starts with no children; they are added with ``start_child``.

    All children are ``one_for_one``; ``max_children`` counts restarting children too.
    ``templates`` name child specs that ``start_child`` can start with extra args.
    """

    id: str
    max_children: int | None = None
    max_restarts: int = DEFAULT_MAX_RESTARTS
    max_seconds: int = DEFAULT_MAX_SECONDS
    templates: dict[str, ChildSpec] = {}
    restart: RestartType = "permanent"
    shutdown: Shutdown = "infinity"
    significant: bool = False

    @property
    def kind(self) -> str:
        return "dynamic_supervisor"


AnySpec = Union[ChildSpec, SupervisorSpec, DynamicSupervisorSpec]


class NodeSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A whole node: its name, its root supervisor, and an opt-in TCP control endpoint (CURVE)."""

    name: str
    root: SupervisorSpec
    control_tcp: str | None = None


def walk(spec: AnySpec, parent: str | None = None):
    """Yield ``(parent_id, spec)`` for ``spec`` and every spec below it, in start order."""
    yield parent, spec
    if isinstance(spec, SupervisorSpec):
        for child in spec.children:
            yield from walk(child, spec.id)


def from_template(template: ChildSpec, child_id: str, args: dict[str, Any] | None = None) -> ChildSpec:
    """A child spec made from a dynamic supervisor's template, with ``args`` merged over its own."""
    return msgspec.structs.replace(template, id=child_id, args={**template.args, **(args or {})})
