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
    "AgentCrashed": "_errors",
    "AsyncClient": "_client",
    "AsyncNode": "_node",
    "BadRequest": "_errors",
    "BoolVariable": "_variables",
    "CallError": "_errors",
    "CallTimeout": "_errors",
    "Caller": "_calls",
    "ChildSpec": "_specs",
    "ChoiceVariable": "_variables",
    "Client": "_client",
    "CompileResult": "_optimizer",
    "CompositeVariable": "_variables",
    "ControlError": "_client",
    "DynamicSupervisorSpec": "_specs",
    "Example": "_optimizer",
    "ExitReason": "_exit",
    "FloatVariable": "_variables",
    "IntegerVariable": "_variables",
    "ManagerProgram": "_manager",
    "ModuleVariable": "_variables",
    "NoSuchAgent": "_errors",
    "Node": "_node",
    "NodeAlreadyRunning": "_node",
    "NodeNotFound": "_client",
    "NodeSpec": "_specs",
    "NodeStale": "_client",
    "NodeStartError": "_node",
    "OptimizeError": "_live",
    "Optimizer": "_optimizer",
    "Overloaded": "_errors",
    "Pipeline": "_pipeline",
    "PipelineError": "_pipeline",
    "PipelineResult": "_pipeline",
    "Program": "_program",
    "RemoteError": "_errors",
    "Result": "_effects",
    "RuntimeDirError": "_runtime",
    "Stage": "_pipeline",
    "SupervisorSpec": "_specs",
    "TopologyError": "_config",
    "Unencodable": "_errors",
    "VariableError": "_variables",
    "VariableSpace": "_scopes",
    "connect": "_client",
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
    from ._errors import AgentCrashed as AgentCrashed
    from ._client import AsyncClient as AsyncClient
    from ._node import AsyncNode as AsyncNode
    from ._errors import BadRequest as BadRequest
    from ._variables import BoolVariable as BoolVariable
    from ._errors import CallError as CallError
    from ._errors import CallTimeout as CallTimeout
    from ._calls import Caller as Caller
    from ._specs import ChildSpec as ChildSpec
    from ._variables import ChoiceVariable as ChoiceVariable
    from ._client import Client as Client
    from ._optimizer import CompileResult as CompileResult
    from ._variables import CompositeVariable as CompositeVariable
    from ._client import ControlError as ControlError
    from ._specs import DynamicSupervisorSpec as DynamicSupervisorSpec
    from ._optimizer import Example as Example
    from ._exit import ExitReason as ExitReason
    from ._variables import FloatVariable as FloatVariable
    from ._variables import IntegerVariable as IntegerVariable
    from ._manager import ManagerProgram as ManagerProgram
    from ._variables import ModuleVariable as ModuleVariable
    from ._errors import NoSuchAgent as NoSuchAgent
    from ._node import Node as Node
    from ._node import NodeAlreadyRunning as NodeAlreadyRunning
    from ._client import NodeNotFound as NodeNotFound
    from ._specs import NodeSpec as NodeSpec
    from ._client import NodeStale as NodeStale
    from ._node import NodeStartError as NodeStartError
    from ._live import OptimizeError as OptimizeError
    from ._optimizer import Optimizer as Optimizer
    from ._errors import Overloaded as Overloaded
    from ._pipeline import Pipeline as Pipeline
    from ._pipeline import PipelineError as PipelineError
    from ._pipeline import PipelineResult as PipelineResult
    from ._program import Program as Program
    from ._errors import RemoteError as RemoteError
    from ._effects import Result as Result
    from ._runtime import RuntimeDirError as RuntimeDirError
    from ._pipeline import Stage as Stage
    from ._specs import SupervisorSpec as SupervisorSpec
    from ._config import TopologyError as TopologyError
    from ._errors import Unencodable as Unencodable
    from ._variables import VariableError as VariableError
    from ._scopes import VariableSpace as VariableSpace
    from ._client import connect as connect
