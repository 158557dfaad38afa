"""otpy: Erlang/OTP supervision trees for multi-agent Python programs.

Every agent runs in its own OS process; supervisors restart them with OTP's strategies and
restart intensity. The public names are listed here and pinned by ``tests/test_public_api.py``.
"""

from ._calls import Caller as Caller
from ._client import AsyncClient as AsyncClient
from ._client import Client as Client
from ._client import ControlError as ControlError
from ._client import NodeNotFound as NodeNotFound
from ._client import connect as connect
from ._effects import Result as Result
from ._errors import AgentCrashed as AgentCrashed
from ._errors import BadRequest as BadRequest
from ._errors import CallError as CallError
from ._errors import CallTimeout as CallTimeout
from ._errors import NoSuchAgent as NoSuchAgent
from ._errors import Overloaded as Overloaded
from ._errors import RemoteError as RemoteError
from ._errors import Unencodable as Unencodable
from ._exit import ExitReason as ExitReason
from ._manager import ManagerProgram as ManagerProgram
from ._node import AsyncNode as AsyncNode
from ._node import Node as Node
from ._node import NodeStartError as NodeStartError
from ._optimizer import CompileResult as CompileResult
from ._optimizer import Example as Example
from ._optimizer import Optimizer as Optimizer
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineResult as PipelineResult
from ._pipeline import Stage as Stage
from ._program import Program as Program
from ._scopes import VariableSpace as VariableSpace
from ._specs import ChildSpec as ChildSpec
from ._specs import DynamicSupervisorSpec as DynamicSupervisorSpec
from ._specs import NodeSpec as NodeSpec
from ._specs import SupervisorSpec as SupervisorSpec
from ._variables import BoolVariable as BoolVariable
from ._variables import ChoiceVariable as ChoiceVariable
from ._variables import CompositeVariable as CompositeVariable
from ._variables import FloatVariable as FloatVariable
from ._variables import IntegerVariable as IntegerVariable
from ._variables import ModuleVariable as ModuleVariable
from ._variables import VariableError as VariableError

__all__ = [
    "AgentCrashed",
    "AsyncClient",
    "AsyncNode",
    "BadRequest",
    "BoolVariable",
    "CallError",
    "CallTimeout",
    "Caller",
    "ChildSpec",
    "ChoiceVariable",
    "Client",
    "CompileResult",
    "CompositeVariable",
    "ControlError",
    "DynamicSupervisorSpec",
    "Example",
    "ExitReason",
    "FloatVariable",
    "IntegerVariable",
    "ManagerProgram",
    "ModuleVariable",
    "NoSuchAgent",
    "Node",
    "NodeNotFound",
    "NodeSpec",
    "NodeStartError",
    "Optimizer",
    "Overloaded",
    "Pipeline",
    "PipelineResult",
    "Program",
    "RemoteError",
    "Result",
    "Stage",
    "SupervisorSpec",
    "Unencodable",
    "VariableError",
    "VariableSpace",
    "connect",
]
