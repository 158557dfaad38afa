"""``agent.program.ObjectProgram``: a class that is no otpy.Program (a dspy.Module, any class with
``forward``) run by the worker. In-process; tests/test_dspy_agent.py serves a raw dspy.Module."""

from __future__ import annotations

import pytest

from otpy.agent.program import ObjectProgram, Program, instantiate

pytestmark = pytest.mark.timeout(30)


class Pairs:
    """Not a Mapping: it has items() only."""

    def items(self):
        return iter([("answer", 42)])


class ForwardOnly:
    def forward(self, **inputs):
        return Pairs()


class Prediction:
    def toDict(self):
        return {"answer": "from toDict"}


class CallableModule:
    """A DSPy-like module: ``__call__`` runs the callbacks, then forward."""

    def __init__(self):
        self.called = []

    def __call__(self, **inputs):
        self.called.append(inputs)
        return self.forward(**inputs)

    def forward(self, **inputs):
        return Prediction()


class Hooked(ForwardOnly):
    def __init__(self):
        self.events = []

    def setup(self, args, config):
        self.events.append(("setup", dict(args), dict(config)))

    def on_config(self, config):
        self.events.append(("on_config", dict(config)))

    def teardown(self):
        self.events.append(("teardown",))


def test_a_class_with_forward_only_is_wrapped_and_has_no_on_config():
    program = instantiate(f"{__name__}:ForwardOnly")
    assert isinstance(program, ObjectProgram) and isinstance(program, Program)
    program.setup({"a": 1}, config={})  # no setup of its own: nothing to call
    assert program(x=1) == {"answer": 42}  # items() made a dict
    assert not callable(getattr(program, "on_config", None))  # the config watcher restarts it instead
    program.teardown()


def test_a_callable_module_is_called_and_its_prediction_becomes_a_dict():
    program = instantiate(f"{__name__}:CallableModule")
    assert program(question="q") == {"answer": "from toDict"}
    assert program.obj.called == [{"question": "q"}]  # through __call__, not forward alone


def test_setup_on_config_and_teardown_run_when_the_object_has_them():
    program = instantiate(f"{__name__}:Hooked")
    program.setup({"a": 1}, config={"t": 0.5})
    program.on_config({"t": 0.9})
    program.teardown()
    assert program.obj.events == [("setup", {"a": 1}, {"t": 0.5}), ("on_config", {"t": 0.9}), ("teardown",)]


def test_an_object_without_forward_that_cannot_be_called_is_refused():
    with pytest.raises(TypeError, match="no forward and is not callable"):
        ObjectProgram(object())


class OddPrediction:
    """A DSPy-like Prediction (toDict) holding what JSON and the wire cannot carry as is."""

    def toDict(self):
        return {1: "int key", "nan": float("nan"), "big": -(10**30), "pairs": {(1, 2): "b"}, "set": {3}}


class RawOdd:
    def forward(self, **inputs):
        return OddPrediction()


def test_a_raw_module_s_result_becomes_plain_data_as_a_module_agent_s():
    """Before: the int key made the reply unreadable by the caller (ValidationError), NaN was
    printed as invalid JSON and the tuple key crashed `otpy call`."""
    import json

    from otpy.agent.one_call import run_call
    from otpy.wire.codec import decode
    from otpy.wire.protocol import FROM_AGENT, Call, Reply

    program = instantiate(f"{__name__}:RawOdd")
    expected = {"1": "int key", "nan": "nan", "big": str(-(10**30)), "pairs": {"(1, 2)": "b"}, "set": "{3}"}
    assert program(x=1) == expected
    json.dumps(program(x=1), allow_nan=False)
    reply = decode(FROM_AGENT, run_call(program, Call(call_id=1, inputs={})))
    assert isinstance(reply, Reply) and reply.outputs == expected
