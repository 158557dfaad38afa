"""The cluster: the other nodes a node's agents (and ``otpy call``) reach as ``AGENT@NODE``.

Declared in the topology, inline or in a cluster file that every host may share::

    [cluster]                       # in topology.toml
    file = "cluster.toml"           # relative to the topology file's folder

    # cluster.toml
    [nodes.b]
    endpoint = "tcp://10.0.0.2:7000"   # node b's control_tcp (calls go to the port after it)
    keys = "keys/b"                    # b's server.key and this host's NAME.key_secret

or ``[cluster.nodes.b]`` tables in the topology itself (both may be used; a node named twice
is refused). Paths are relative to the folder of the file that names them. ``load_cluster``
reads a cluster file alone (``Caller(node, cluster=load_cluster("cluster.toml"))``);
``cluster_of`` the ``[cluster]`` table of a topology. Every problem is one line naming the
field (``cluster.toml: nodes.b.endpoint: got 'b:7000'; expected tcp://HOST:PORT``): node names
are names, never paths (``specs.model.name_problem``), endpoints ``tcp://HOST:PORT``, and each
keys folder must hold what a client needs (``wire.curve.client_keys_problem``).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from ..specs.model import name_problem
from ..wire.remote_cluster import ClusterNode, ClusterSpec
from .files import read_bounded_file

__all__ = ["ClusterError", "ClusterNode", "ClusterSpec", "MAX_CLUSTER_FILE_BYTES", "cluster_of", "load_cluster"]

MAX_CLUSTER_FILE_BYTES = 1 << 20
_NODE_FIELDS = ("endpoint", "keys")


class ClusterError(ValueError):
    """A cluster that cannot be used; ``problems``: one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def load_cluster(path: str | os.PathLike) -> ClusterSpec:
    """The cluster file ``path`` (``[nodes.NAME]`` tables), checked; ClusterError otherwise."""
    source = os.path.abspath(os.fspath(path))
    nodes, problems = _read_file(source)
    if problems:
        raise ClusterError(problems)
    return ClusterSpec(source=source, nodes=nodes)


def cluster_of(raw: dict[str, Any], base_dir: str, source: str) -> tuple[ClusterSpec | None, list[str]]:
    """The ``[cluster]`` table ``raw`` of the topology ``source`` (its folder ``base_dir``): the
    spec (None when the table is empty) and the problems, each naming its field."""
    if not raw:
        return None, []
    problems: list[str] = []
    nodes: dict[str, ClusterNode] = {}
    shown = source
    if (file := raw.get("file")) is not None:
        path = os.path.join(base_dir, file)
        shown = os.path.abspath(path)
        from_file, file_problems = _read_file(shown)
        problems += [f"cluster.file: {problem}" for problem in file_problems]
        nodes.update(from_file)
    for name, table in (raw.get("nodes") or {}).items():
        node, node_problems = _node(name, table, base_dir, f"cluster.nodes.{name}")
        problems += node_problems
        if name in nodes:
            problems.append(f"cluster.nodes.{name}: node {name!r} is also in {shown}: name it once")
        elif node is not None:
            nodes[name] = node
    if raw.get("nodes") and file is not None:
        shown = f"{shown} and [cluster] of {source}"
    return (None if problems else ClusterSpec(source=shown, nodes=nodes)), problems


def _read_file(source: str) -> tuple[dict[str, ClusterNode], list[str]]:
    import tomllib

    try:
        data = read_bounded_file(source, MAX_CLUSTER_FILE_BYTES, hint="give a cluster file (.toml)",
                                 allowed=f"the {MAX_CLUSTER_FILE_BYTES >> 20} MiB a cluster file may have")
        table = tomllib.loads(data.decode("utf-8"))
    except ValueError as exc:  # tomllib.TOMLDecodeError and UnicodeDecodeError are ValueErrors
        text = str(exc)
        return {}, [text if text.startswith(source) else f"{source}: {text}"]
    except RecursionError:  # tomllib parses nested arrays and tables by recursion
        return {}, [f"{source}: invalid TOML: values nested too deeply"]
    problems = [f"{source}: {key}: unknown table or field; expected [nodes.NAME] tables" for key in table
                if key != "nodes"]
    entries = table.get("nodes", {})
    if not isinstance(entries, dict):
        return {}, [*problems, f"{source}: nodes: got {_show(entries)}; expected [nodes.NAME] tables"]
    nodes: dict[str, ClusterNode] = {}
    base_dir = os.path.dirname(source)
    for name, entry in entries.items():
        node, node_problems = _node(name, entry, base_dir, f"nodes.{name}")
        problems += [f"{source}: {problem}" for problem in node_problems]
        if node is not None:
            nodes[name] = node
    return nodes, problems


def _node(name: str, table: object, base_dir: str, where: str) -> tuple[ClusterNode | None, list[str]]:
    from ..wire.curve import client_keys_problem  # only for a node with a cluster: zmq.auth
    from ..wire.remote_protocol import calls_endpoint

    if (problem := name_problem(name, "node name")) is not None:
        return None, [f"{where}: {problem}"]
    if not isinstance(table, dict):
        return None, [f"{where}: got {_show(table)}; expected a table with endpoint and keys"]
    problems = [f"{where}.{key}: unknown field; expected one of {', '.join(_NODE_FIELDS)}" for key in table
                if key not in _NODE_FIELDS]
    problems += [f"{where}.{key}: missing; expected {'tcp://HOST:PORT' if key == 'endpoint' else 'a keys folder'}"
                 for key in _NODE_FIELDS if key not in table]
    endpoint, keys = table.get("endpoint"), table.get("keys")
    if endpoint is not None:
        try:
            calls_endpoint(endpoint)
        except ValueError:
            problems.append(f"{where}.endpoint: got {_show(endpoint)}; expected tcp://HOST:PORT (the node's "
                            "control_tcp, a port below 65535)")
    if keys is not None:
        if not isinstance(keys, str) or not keys:
            problems.append(f"{where}.keys: got {_show(keys)}; expected a keys folder")
        else:
            keys = os.path.abspath(os.path.join(base_dir, os.path.expanduser(keys)))
            if (problem := _private_problem(keys)) is not None:
                problems.append(f"{where}.keys: {problem}")
            elif os.path.isdir(keys) and not os.path.lexists(os.path.join(keys, "server.key")):
                pass  # the node's public key exists once it started: checked at the call (NodeUnreachable)
            elif (problem := client_keys_problem(keys)) is not None:
                problems.append(f"{where}.keys: {problem}")
    if problems:
        return None, problems
    return ClusterNode(endpoint=endpoint, keys=keys), []


def _private_problem(folder: str) -> str | None:
    """Why ``folder`` is not a private keys folder (a folder of this user that others may not
    read or write, as ``otpy keys new`` makes: ``/`` or ``/tmp`` never), or None (also when it
    does not exist: ``client_keys_problem`` says so)."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    if info.st_uid != os.getuid():
        return f"{folder} belongs to another user (uid {info.st_uid}): keys go in a private folder of yours"
    if info.st_mode & 0o077:
        return (f"{folder} is open to others (mode {stat.S_IMODE(info.st_mode):04o}): `chmod 700 {folder}`, or "
                "give a private folder (`otpy keys new DIR` makes one)")
    return None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
