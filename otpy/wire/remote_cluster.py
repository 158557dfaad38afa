"""The other nodes a caller may reach, resolved: node name -> (endpoint, keys folder).

``topology.cluster`` reads a cluster file or a ``[cluster]`` table into a ``ClusterSpec``
(checked, paths absolute); a node writes its own as JSON in its private folder
(``CLUSTER_FILE``), so that an agent's ``Caller(node)`` and ``otpy call`` reach ``AGENT@NODE``
with no argument (``calls.node_cluster``).

>>> spec = ClusterSpec(source="cluster.toml", nodes={"b": ClusterNode("tcp://10.0.0.2:7000", "/keys/b")})
>>> decode_cluster(encode_cluster(spec)) == spec
True
"""

from __future__ import annotations

import msgspec

CLUSTER_FILE = "cluster.json"  # in a node's folder: the cluster it runs with, resolved
MAX_CLUSTER_BYTES = 1 << 20


class ClusterNode(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One other node: its ``control_tcp`` endpoint (``tcp://HOST:PORT``; calls go to the port
    after it, ``remote_protocol.calls_endpoint``) and an absolute keys folder holding its
    ``server.key`` and this side's client ``NAME.key_secret``."""

    endpoint: str
    keys: str


class ClusterSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The nodes a caller may reach by name; ``source``: where they were declared (named in errors)."""

    source: str
    nodes: dict[str, ClusterNode] = {}


def encode_cluster(spec: ClusterSpec) -> bytes:
    return msgspec.json.encode(spec)


def decode_cluster(data: bytes) -> ClusterSpec:
    return msgspec.json.decode(data, type=ClusterSpec)
