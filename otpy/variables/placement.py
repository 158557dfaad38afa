"""Where the registry stands in a node: its id, its program, its events socket, and how a
topology's ``[variables]`` tables make it the root's first child.

Kept apart from the registry program (``otpy.variables.registry``: SQLite, ZeroMQ) so that reading a
topology file, or a worker asking whether its node has a registry, imports neither.
"""

from __future__ import annotations

import os

import msgspec

from .scopes import parents_of, spaces_from_topology
from ..specs.bindings import variables_of
from ..specs.model import ChildSpec, SupervisorSpec

REGISTRY_ID = "registry"
REGISTRY_PROGRAM = "otpy.variables.registry:Registry"
REGISTRY_ENV = "OTPY_REGISTRY"  # "1" in the children's environment when the node's tree has a registry
EVENTS_SOCKET = "registry-events.sock"
WRITER_ENV = "OTPY_REGISTRY_WRITER"  # the node's secret for reconciled writes: in the registry's env only


def with_writer(root: SupervisorSpec, secret: str) -> SupervisorSpec:
    """The root whose registry child has ``secret`` in its environment (``WRITER_ENV``): the
    registry stores a write of a bound variable only from whoever knows it, the node."""
    return msgspec.structs.replace(root, children=tuple(
        msgspec.structs.replace(child, env={**child.env, WRITER_ENV: secret})
        if child.id == REGISTRY_ID and getattr(child, "program", None) == REGISTRY_PROGRAM else child
        for child in root.children))


def events_endpoint(node_dir: str | os.PathLike | None = None) -> str | None:
    """``ipc://<node dir>/registry-events.sock`` (node dir: ``OTPY_NODE_DIR``), or None outside a node."""
    folder = node_dir or os.environ.get("OTPY_NODE_DIR")
    return f"ipc://{os.path.join(folder, EVENTS_SOCKET)}" if folder else None


def with_registry(root: SupervisorSpec, variables: dict[str, dict[str, dict]],
                  constraints: dict[str, list[dict]] | None = None, storage: str | None = None) -> SupervisorSpec:
    """The root with the registry as its first child, when the topology declares variables.

    Checks the ``[variables]`` tables and the ``[constraints]`` first (VariableError naming
    ``variables.SCOPE.NAME`` or ``constraints.SCOPE[i]``; composites' and constraints'
    functions are imported here). The registry is told the **bound** variables, those the
    tree's fields are bound to (``otpy.specs.bindings.variables_of``): it stores a value of
    one only when the node wrote it, reconciled. ``storage``: ``[registry] storage`` (a
    PostgreSQL URL shared by several nodes; None: the node's SQLite file). A child the user placed with id ``registry``
    is kept where it is and given the tables.
    """
    if not variables and not constraints:
        return root
    parents = parents_of(root)
    spaces_from_topology(variables, constraints, scopes={root.id, *parents})
    args = {"variables": variables, "parents": parents, "bound": sorted(variables_of(root))}
    if constraints:
        args["constraints"] = constraints
    if storage:
        args["storage"] = storage  # [registry] storage: a PostgreSQL URL (else the node's SQLite file)
    if any(child.id == REGISTRY_ID for child in root.children):
        children = tuple(
            msgspec.structs.replace(child, args={**args, **child.args}) if child.id == REGISTRY_ID else child
            for child in root.children)
    else:
        children = (ChildSpec(id=REGISTRY_ID, program=REGISTRY_PROGRAM, args=args), *root.children)
    return msgspec.structs.replace(root, children=children)
