"""Programs: what an agent process runs. DSPy's convention: ``forward(**inputs) -> outputs``.

>>> class Echo(Program):
...     def forward(self, **inputs):
...         return inputs
>>> Echo()(text="hi")
{'text': 'hi'}
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Mapping

from .plain_data import plain_outputs

if TYPE_CHECKING:
    from ..wire.calls import Caller


class Program:
    """Base class for agent programs.

    otpy's worker creates the program with no arguments, hands it its node's caller
    (``NodeCaller``), calls ``setup(args, config)`` once, reports READY to the node, then
    serves calls to ``forward``. ``teardown()`` runs when the worker is asked to shut down
    (SIGTERM).

    A program that follows variables may also have ``on_config(config)`` (new values while it
    runs; without it the child restarts for them) and ``check_config(config)``: asked by the node
    before a write is stored, with the configuration the program would have, it raises
    ``otpy.ConfigRefused(why)`` for values the program could not run, and changes nothing. A
    refusal there refuses the write (``invalid``, naming the child and why): nothing is stored,
    nothing restarts. The default accepts everything.
    """

    _otpy_node_caller: NodeCaller | None = None  # the worker's, handed over before setup

    def setup(self, args: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        """Called once in the worker before READY. ``args`` come from the child spec."""

    def forward(self, **inputs: Any) -> Mapping[str, Any]:
        raise NotImplementedError(f"{type(self).__name__}.forward is not written")

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Raise ``otpy.ConfigRefused(why)`` if the program could not run ``config``; change nothing."""

    def teardown(self) -> None:
        """Called once when the worker shuts down in order."""

    def __call__(self, **inputs: Any) -> Mapping[str, Any]:
        return self.forward(**inputs)

    def call(self, agent_id: str, inputs: Mapping[str, Any] | None = None, *,
             timeout: float = 5.0, retries: int = 0) -> dict[str, Any]:
        """Call another agent of this node from inside ``forward`` (or ``setup``).

        Raises the ``CallError``s of ``Caller.call``. An agent that calls itself with
        ``concurrency`` 1 waits for itself: that call times out.
        """
        return self.node_caller().call(agent_id, inputs, timeout=timeout, retries=retries)

    def node_caller(self) -> Caller:
        """The ``Caller`` of this agent's node (made on first use): for ``submit``/``acall``, or
        to run a ``Pipeline`` from ``forward``. The program the worker runs shares the worker's
        one; a Program made inside an agent (a sub-program, DSPy style) gets its own, for the
        node the agent belongs to (``OTPY_NODE``), closed when the sub-program is collected."""
        if self._otpy_node_caller is None:
            node = os.environ.get("OTPY_NODE")
            if not node:
                raise RuntimeError("Program.call works in an agent run by an otpy node (no OTPY_NODE)")
            own = self._otpy_node_caller = NodeCaller(node)
            weakref.finalize(self, own.close).atexit = False  # a process that ends frees it anyway
        return self._otpy_node_caller.get()


class FunctionProgram(Program):
    """A plain function ``module:func`` used as a program: ``func(**inputs)`` is ``forward``."""

    def __init__(self, func):
        self._func = func

    def forward(self, **inputs: Any) -> Mapping[str, Any]:
        return self._func(**inputs)

    def __repr__(self) -> str:
        return f"FunctionProgram({self._func.__module__}:{self._func.__qualname__})"


class NodeCaller:
    """A worker's ``Caller`` for its node, made on first use (importing the caller's machinery
    costs a start ~50 ms: a program that never calls never pays it). The worker holds it for
    the life of its process and hands it to its program (``Program.node_caller``)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._caller: Caller | None = None
        self._lock = threading.Lock()

    def get(self) -> Caller:
        with self._lock:
            if self._caller is None:
                from ..wire.calls import Caller

                self._caller = Caller(self.node)
            return self._caller

    def close(self) -> None:
        """Close the caller, if one was made (its sockets, its threads' engines, its eventfds)."""
        with self._lock:
            caller, self._caller = self._caller, None
        if caller is not None:
            caller.close()

    def hand_to(self, program: object) -> None:
        """Give ``program`` this caller for ``Program.call`` (an object that is no ``Program``
        has no ``call``: nothing to give)."""
        if isinstance(program, Program):
            program._otpy_node_caller = self


def import_target(target: str) -> Any:
    """Import ``"module:attr"`` (``attr`` may be dotted). Raises ImportError naming what failed."""
    import importlib

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ImportError(f"{target!r} is not of the form 'module:attr'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


class ObjectProgram(Program):
    """An object that is no ``Program`` (a ``dspy.Module``, any class with ``forward``) used as
    one: its ``setup``, ``teardown`` and ``on_config`` run only if it has them (the config
    watcher sees ``on_config`` only then: without it the child restarts for new values); a call
    is ``obj(**inputs)`` when it is callable (a DSPy module's ``__call__`` runs its callbacks,
    then ``forward``), else ``obj.forward(**inputs)``; a result that is a mapping, has
    ``toDict()`` (a DSPy ``Prediction``) or ``items()`` becomes a dict of plain data, as a
    ``ModuleAgent``'s outputs (``agent.plain_data``: a key that is no string becomes its
    ``str()``, and so does a value the wire or JSON cannot carry). Its ``concurrency`` and
    ``max_queue`` class attributes count as the program's. A raw DSPy module gets its LM from
    DSPy's settings (``dspy.configure`` in its own ``setup``): ``otpy.dspy.ModuleAgent`` is
    the way to have LM settings as variables."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        if not callable(obj) and not callable(getattr(obj, "forward", None)):
            raise TypeError(f"a {type(obj).__name__!r} object has no forward and is not callable")
        self._run = obj if callable(obj) else obj.forward
        if callable(on_config := getattr(obj, "on_config", None)):
            self.on_config = on_config
        if callable(check_config := getattr(obj, "check_config", None)):
            self.check_config = check_config
        for name in ("concurrency", "max_queue"):
            if hasattr(obj, name):
                setattr(self, name, getattr(obj, name))

    def setup(self, args: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        if callable(setup := getattr(self.obj, "setup", None)):
            setup(args, config=config)

    def forward(self, **inputs: Any) -> Any:
        outputs = as_dict(self._run(**inputs))
        return plain_outputs(outputs) if isinstance(outputs, dict) else outputs

    def teardown(self) -> None:
        if callable(teardown := getattr(self.obj, "teardown", None)):
            teardown()

    def __repr__(self) -> str:
        return f"ObjectProgram({type(self.obj).__module__}:{type(self.obj).__qualname__})"


def as_dict(result: Any) -> Any:
    """A mapping, a DSPy-like ``Prediction`` (``toDict()``) or an object with ``items()`` as a
    dict; anything else as it is (the call's encoding says what it makes of it)."""
    if isinstance(result, Mapping):
        return dict(result)
    if callable(to_dict := getattr(result, "toDict", None)):
        return dict(to_dict())
    if callable(items := getattr(result, "items", None)):
        return dict(items())
    return result


def is_program_class(obj: Any) -> bool:
    """A class the worker instantiates and runs: one with ``forward`` (``setup`` is optional)."""
    return isinstance(obj, type) and callable(getattr(obj, "forward", None))


def instantiate(target: str) -> Program:
    """The program object for ``target``: a class is instantiated with no arguments (one that
    is no ``Program``, such as a ``dspy.Module``, wrapped in an ``ObjectProgram``), a function
    wrapped as ``forward``."""
    obj = import_target(target)
    if isinstance(obj, type):
        made = obj()
        return made if isinstance(made, Program) else ObjectProgram(made)
    if callable(obj):
        return FunctionProgram(obj)
    raise TypeError(f"{target!r} is neither a class nor a function")
