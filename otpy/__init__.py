"""otpy: Erlang/OTP supervision trees for multi-agent Python programs.

Every agent runs in its own OS process; supervisors restart them with OTP's strategies and
restart intensity. The public names are listed here and pinned by ``tests/test_public_api.py``.

Names are imported on first use (PEP 562): a worker process, forked from the zygote,
imports only what it runs (``import otpy`` stays cheap, and the zygote stays small).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "AgentCrashed": "wire.errors",
    "AsyncClient": "wire.client",
    "AsyncNode": "node.node",
    "BadRequest": "wire.errors",
    "BoolVariable": "variables.types",
    "CallError": "wire.errors",
    "CallTimeout": "wire.errors",
    "Caller": "wire.calls",
    "ClusterError": "topology.cluster",
    "NodeUnreachable": "wire.errors",
    "RemoteCaller": "wire.remote_calls",
    "load_cluster": "topology.cluster",
    "ChildSpec": "specs.model",
    "ChoiceVariable": "variables.types",
    "Client": "wire.client",
    "CompileResult": "optimize.optimizer",
    "CompositeVariable": "variables.types",
    "ConfigRefused": "agent.config_refused",
    "ControlError": "wire.client",
    "DynamicSupervisorSpec": "specs.model",
    "Example": "optimize.optimizer",
    "ExitReason": "supervision.exit",
    "FloatVariable": "variables.types",
    "IntegerVariable": "variables.types",
    "InvalidNodeName": "wire.client",
    "ManagerProgram": "optimize.manager",
    "ModuleVariable": "variables.types",
    "NoSuchAgent": "wire.errors",
    "NoSuchSupervisor": "wire.operations",
    "Node": "node.node",
    "NodeAlreadyRunning": "node.node",
    "NodeNotFound": "wire.client",
    "NodeSpec": "specs.model",
    "NodeStale": "wire.client",
    "NodeStartError": "node.node",
    "OptimizeError": "optimize.live_system",
    "Optimizer": "optimize.optimizer",
    "Orchestrator": "optimize.orchestrator",
    "Overloaded": "wire.errors",
    "Pipeline": "optimize.pipeline",
    "PipelineError": "optimize.pipeline",
    "PipelineResult": "optimize.pipeline",
    "Program": "agent.program",
    "RemoteError": "wire.errors",
    "Result": "wire.protocol",
    "RuntimeDirError": "host.runtime_dir",
    "Stage": "optimize.pipeline",
    "SupervisorSpec": "specs.model",
    "TopologyError": "topology.load",
    "Unencodable": "wire.errors",
    "VariableError": "variables.types",
    "VariableSpace": "variables.scopes",
    "WatchPolicy": "optimize.orchestrator",
    "connect": "wire.client",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'otpy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"otpy.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .agent.config_refused import ConfigRefused as ConfigRefused
    from .wire.errors import AgentCrashed as AgentCrashed
    from .wire.client import AsyncClient as AsyncClient
    from .node.node import AsyncNode as AsyncNode
    from .wire.errors import BadRequest as BadRequest
    from .variables.types import BoolVariable as BoolVariable
    from .wire.errors import CallError as CallError
    from .wire.errors import CallTimeout as CallTimeout
    from .wire.calls import Caller as Caller
    from .topology.cluster import ClusterError as ClusterError
    from .topology.cluster import load_cluster as load_cluster
    from .wire.errors import NodeUnreachable as NodeUnreachable
    from .wire.remote_calls import RemoteCaller as RemoteCaller
    from .specs.model import ChildSpec as ChildSpec
    from .variables.types import ChoiceVariable as ChoiceVariable
    from .wire.client import Client as Client
    from .optimize.optimizer import CompileResult as CompileResult
    from .variables.types import CompositeVariable as CompositeVariable
    from .wire.client import ControlError as ControlError
    from .specs.model import DynamicSupervisorSpec as DynamicSupervisorSpec
    from .optimize.optimizer import Example as Example
    from .supervision.exit import ExitReason as ExitReason
    from .variables.types import FloatVariable as FloatVariable
    from .variables.types import IntegerVariable as IntegerVariable
    from .wire.client import InvalidNodeName as InvalidNodeName
    from .optimize.manager import ManagerProgram as ManagerProgram
    from .variables.types import ModuleVariable as ModuleVariable
    from .wire.errors import NoSuchAgent as NoSuchAgent
    from .wire.operations import NoSuchSupervisor as NoSuchSupervisor
    from .node.node import Node as Node
    from .node.node import NodeAlreadyRunning as NodeAlreadyRunning
    from .wire.client import NodeNotFound as NodeNotFound
    from .specs.model import NodeSpec as NodeSpec
    from .wire.client import NodeStale as NodeStale
    from .node.node import NodeStartError as NodeStartError
    from .optimize.live_system import OptimizeError as OptimizeError
    from .optimize.optimizer import Optimizer as Optimizer
    from .optimize.orchestrator import Orchestrator as Orchestrator
    from .wire.errors import Overloaded as Overloaded
    from .optimize.pipeline import Pipeline as Pipeline
    from .optimize.pipeline import PipelineError as PipelineError
    from .optimize.pipeline import PipelineResult as PipelineResult
    from .agent.program import Program as Program
    from .wire.errors import RemoteError as RemoteError
    from .wire.protocol import Result as Result
    from .host.runtime_dir import RuntimeDirError as RuntimeDirError
    from .optimize.pipeline import Stage as Stage
    from .specs.model import SupervisorSpec as SupervisorSpec
    from .topology.load import TopologyError as TopologyError
    from .wire.errors import Unencodable as Unencodable
    from .variables.types import VariableError as VariableError
    from .variables.scopes import VariableSpace as VariableSpace
    from .optimize.orchestrator import WatchPolicy as WatchPolicy
    from .wire.client import connect as connect
