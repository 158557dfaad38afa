"""otpy: Erlang/OTP supervision trees for multi-agent Python programs.

Every agent runs in its own OS process; supervisors restart them with OTP's strategies and
restart intensity. The public names are listed here and pinned by ``tests/test_public_api.py``.
"""

from ._client import AsyncClient as AsyncClient
from ._client import Client as Client
from ._client import ControlError as ControlError
from ._client import NodeNotFound as NodeNotFound
from ._client import connect as connect
from ._effects import Result as Result
from ._exit import ExitReason as ExitReason
from ._node import AsyncNode as AsyncNode
from ._node import Node as Node
from ._node import NodeStartError as NodeStartError
from ._program import Program as Program
from ._specs import ChildSpec as ChildSpec
from ._specs import DynamicSupervisorSpec as DynamicSupervisorSpec
from ._specs import NodeSpec as NodeSpec
from ._specs import SupervisorSpec as SupervisorSpec

__all__ = [
    "AsyncClient",
    "AsyncNode",
    "ChildSpec",
    "Client",
    "ControlError",
    "DynamicSupervisorSpec",
    "ExitReason",
    "Node",
    "NodeNotFound",
    "NodeSpec",
    "NodeStartError",
    "Program",
    "Result",
    "SupervisorSpec",
    "connect",
]
