"""From configurations to a live system: the optimizer's actions, sent as messages.

A *binding* says which running agent a ``module`` variable decides: the agent ``classifier``
under the dynamic supervisor ``pool`` runs the program that ``global.classifier`` names, with
the values of scope ``pool`` as its args. ``LiveSystem`` turns a configuration into actions
(``SetVariables``, ``StartChild``, ``Reconfigure``) and sends them over the node's control
socket, never into the supervisor's objects, so the optimizer can run in any process.

``optimize_topology`` is ``otpy optimize``: it runs the trials on a scratch node started
from the topology (named ``<node>-optimize``), keeps the study in the node's state folder,
and returns the best configuration with the actions that turn the running node into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..wire.client import Client
from ..wire.protocol import Action, Outcome, Reconfigure, SetVariables, StartChild
from ..specs.model import ChildSpec


class OptimizeError(RuntimeError):
    """The optimizer table, or an action, could not be carried out; the message says which."""


@dataclass(frozen=True)
class Binding:
    agent: str
    supervisor: str
    program: str  # "SCOPE.NAME" of a module variable
    args: str | None = None  # a scope whose values are the agent's args

    def spec(self, config: Mapping[str, Mapping[str, Any]]) -> ChildSpec:
        scope, _, name = self.program.rpartition(".")
        args = dict(config.get(self.args, {})) if self.args else {}
        return ChildSpec(id=self.agent, program=config[scope][name], args=args)


def bindings_from_table(table: Mapping[str, Any]) -> list[Binding]:
    bindings = []
    for agent, entry in table.items():
        try:
            bindings.append(Binding(agent=agent, supervisor=entry["supervisor"], program=entry["program"],
                                    args=entry.get("args")))
        except (KeyError, TypeError) as exc:
            raise OptimizeError(f"optimizer.bindings.{agent}: needs 'supervisor' and 'program' "
                                f"(a module variable, SCOPE.NAME), and may have 'args' (a scope); {exc}") from None
    return bindings


class LiveSystem:
    """Applies configurations to a running node through its control socket."""

    def __init__(self, client: Client, bindings: list[Binding], *, has_registry: bool = True) -> None:
        self.client = client
        self.bindings = bindings
        self.has_registry = has_registry
        self.current: dict[str, ChildSpec] = {}  # what this system started or reconfigured

    def plan(self, config: Mapping[str, Mapping[str, Any]]) -> list[Action]:
        """The actions that make the node match ``config`` (request ids are filled in at send)."""
        actions: list[Action] = []
        if self.has_registry:
            actions += [SetVariables(0, scope, dict(values)) for scope, values in config.items() if values]
        for binding in self.bindings:
            target = binding.spec(config)
            if self.current.get(binding.agent) != target:
                actions.append(Reconfigure(0, binding.supervisor, binding.agent, target))
        return actions

    def apply(self, config: Mapping[str, Mapping[str, Any]]) -> None:
        """Carry out ``plan(config)``; raises OptimizeError if an action fails."""
        self.send(self.plan(config))

    def send(self, actions: list[Action]) -> list[Outcome]:
        results = []
        for action in actions:
            result = self.client.apply(action)
            if isinstance(action, Reconfigure) and result.outcome == "not_found":
                # Not running yet: start it instead (same target).
                result = self.client.apply(StartChild(0, action.supervisor, action.target))
            if not result.ok:
                raise OptimizeError(f"{type(action).__name__} failed: {result.outcome}: {result.detail}")
            if isinstance(action, Reconfigure):
                self.current[action.source] = action.target
            results.append(result)
        return results


def optimize_topology(topology, *, trials: int | None = None, seed: int | None = None,
                      progress: bool = True):
    """Run the ``[optimizer]`` of ``topology`` on a scratch node; returns the CompileResult."""
    from ..wire.calls import Caller
    from ..wire.client import connect
    from ..node.node import Node
    from .optimizer import Optimizer
    from ..agent.program import import_target
    from ..host.runtime_dir import node_dir
    from ..variables.scopes import spaces_from_topology
    from ..specs.model import NodeSpec

    table = dict(topology.raw_optimizer)
    for key in ("program", "dataset", "metric"):
        if key not in table:
            raise OptimizeError(f"optimizer.{key} is missing: the [optimizer] table needs program (the agent "
                                f"called per example), dataset and metric ('module:attr')")
    bindings = bindings_from_table(table.get("bindings", {}))
    dataset = import_target(table["dataset"])
    examples = dataset() if callable(dataset) else dataset
    metric = import_target(table["metric"])
    name = topology.node.name
    optimizer = Optimizer(spaces_from_topology(topology.raw_variables), seed=table.get("seed", seed) if seed is None else seed,
                          storage=str(node_dir(name) / "study.db"), study_name=table.get("study", name),
                          progress=progress)
    scratch = NodeSpec(name=f"{name}-optimize", root=topology.node.root, program_folders=topology.node.program_folders)
    with Node(scratch, on_output=lambda *_: None), connect(scratch.name) as client, Caller(scratch.name) as caller:
        live = LiveSystem(client, bindings, has_registry=bool(topology.raw_variables))
        agent, timeout = table["program"], float(table.get("timeout", 30.0))
        result = optimizer.compile(lambda **inputs: caller.call(agent, inputs, timeout=timeout), examples, metric,
                                   trials=trials or int(table.get("trials", 20)), apply=live.apply,
                                   plan_actions=LiveSystem(client, bindings,
                                                           has_registry=bool(topology.raw_variables)).plan)
    return result
