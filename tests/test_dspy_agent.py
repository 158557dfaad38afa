"""DSPy modules as supervised agents (#17): ``otpy.dspy.ModuleAgent`` (a module from a factory,
its LM from the ``lm_*`` variables, its saved program from ``program_state``, both changed live
through on_config) and a raw ``dspy.Module`` subclass as a program. Real nodes, DummyLM only."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time

import pytest

import otpy
from tests.helpers import pids, unique_name

pytest.importorskip("dspy")

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOPOLOGY = """
[node]
name = "{name}"

[supervisor]
max_restarts = 3
max_seconds = 5

[[supervisor.children]]
id = "qa"
program = "tests.dspy_agents:Agent"

[[supervisor.children]]
id = "lm"
program = "tests.dspy_agents:LMAgent"

[[supervisor.children]]
id = "raises"
program = "otpy.dspy:ModuleAgent"
args = {{ module = "tests.dspy_agents:Raises" }}

[variables.lm]
lm_temperature = {{ type = "float", low = 0.0, high = 2.0, default = 0.5 }}
lm_max_tokens = {{ type = "integer", low = 1, high = 4000, default = 200 }}
program_state = {{ type = "document", default = {{}}, max_bytes = 65536, description = "the saved program" }}
"""


class Lines:
    """The lines the node's children write, for waiting on one with a deadline."""

    def __init__(self) -> None:
        self.lines: queue.Queue = queue.Queue()

    def __call__(self, child_id: str, stream: str, line: str) -> None:
        self.lines.put((child_id, stream, line))

    def wait_for(self, child_id: str, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                child, _, line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if child == child_id and text in line:
                return line
        raise AssertionError(f"{child_id} wrote no line with {text!r} within {timeout} s")


@pytest.fixture
def lines():
    return Lines()


@pytest.fixture
def node(tmp_path, lines):
    name = unique_name("dspy")
    path = tmp_path / f"{name}.toml"
    path.write_text(TOPOLOGY.format(name=name))
    with otpy.Node.from_toml(path, on_output=lines) as node:
        yield node


def saved_program(answer: str) -> dict:
    """A saved program (``dump_state()``) whose one demo answers "the question" with ``answer``."""
    import dspy

    from tests.dspy_agents import ShowsLM

    module = ShowsLM()
    module.respond.demos = [dspy.Example(question="the question", answer=answer).with_inputs("question")]
    return module.dump_state()


def test_a_module_agent_answers_with_its_prediction_s_fields(node):
    caller = otpy.Caller(node.name)
    try:
        assert caller.call("qa", {"question": "What colour is the sky?"}, timeout=10.0) == {"answer": "blue"}
        assert caller.call("qa", {"question": "And grass?"}, timeout=10.0) == {"answer": "green"}
        assert caller.call("qa", {"question": "Why?"}, timeout=10.0) == {"answer": "unsure"}  # the "" default
    finally:
        caller.close()


def test_a_module_s_exception_reaches_the_caller_typed(node):
    """args.module names the factory (here the Module subclass) of a plain ModuleAgent."""
    with pytest.raises(otpy.RemoteError) as caught:
        node.call("raises", {"question": "q"}, timeout=10.0)
    assert caught.value.error_type == "LookupError" and "no answer for 'q'" in caught.value.remote_message
    assert node.call("qa", {"question": "sky"}, timeout=10.0) == {"answer": "blue"}  # the node goes on


def test_lm_settings_changed_live_reach_the_same_process(node):
    first = node.call("lm", {"question": "q"}, timeout=10.0)
    assert first["model"] == "dummy" and first["kwargs"] == {"temperature": 0.5, "max_tokens": 200}
    assert first["answer"] == "first"
    assert node.call("lm", {"question": "q"}, timeout=10.0)["answer"] == "second"  # the list script goes on
    assert node.set_variables("lm", {"lm_temperature": 1.25, "lm_max_tokens": 50}).ok
    after = node.call("lm", {"question": "q"}, timeout=10.0)
    assert after["kwargs"] == {"temperature": 1.25, "max_tokens": 50}
    assert after["answer"] == "first"  # a new LM: its script starts again
    assert after["pid"] == first["pid"] == pids(node)["lm"]  # on_config, no restart


def test_a_saved_program_set_as_program_state_changes_the_running_agent_s_answers(node):
    before = node.call("lm", {"question": "the question"}, timeout=10.0)
    assert before["answer"] == "first" and before["demos"] == 0
    assert node.set_variables("lm", {"program_state": saved_program("from the demo")}).ok
    after = node.call("lm", {"question": "the question"}, timeout=10.0)
    assert after["answer"] == "from the demo" and after["demos"] == 1  # the dummy LM follows the demo
    assert after["pid"] == before["pid"]
    other = node.call("lm", {"question": "another one"}, timeout=10.0)
    assert other["answer"] == "second"  # no demo for it: the script, where it was
    assert node.set_variables("lm", {"program_state": {}}).ok  # back to the factory's fresh module
    assert node.call("lm", {"question": "the question"}, timeout=10.0)["demos"] == 0


def test_a_bad_program_state_is_refused_and_the_old_answers_stay(node, lines):
    """Before: the write was stored (ok) while the agent ran the old state, and the next start
    of the child failed on the stored value. Now the write is undone and refused."""
    assert node.set_variables("lm", {"program_state": saved_program("kept")}).ok
    pid = pids(node)["lm"]
    bad = saved_program("never")
    bad["respond"]["demos"][0]["answr"] = bad["respond"]["demos"][0].pop("answer")
    refused = node.set_variables("lm", {"program_state": bad})
    assert refused.outcome == "invalid", refused
    assert 'program_state["respond"]["demos"][0]["answr"]: not a field' in refused.detail, refused.detail
    assert "nothing was stored" in refused.detail  # check_config refused it before it was stored
    got = node.call("lm", {"question": "the question"}, timeout=10.0)
    assert got["answer"] == "kept" and got["pid"] == pid
    refused = node.set_variables("lm", {"program_state": {"nope": {}}})
    assert refused.outcome == "invalid" and "the module has no predictor 'nope'" in refused.detail
    assert node.call("lm", {"question": "the question"}, timeout=10.0)["answer"] == "kept"
    assert pids(node)["lm"] == pid
    assert node.set_variables("lm", {"lm_temperature": 0.3}).ok  # a later write is not held up by it


def test_a_raw_dspy_module_subclass_is_a_program():
    """Before, the worker failed: 'RawModule' object has no attribute 'setup'. Its LM is DSPy's
    global one (dspy.configure, run when its module was imported)."""
    root = otpy.SupervisorSpec(id="root", children=(
        otpy.ChildSpec(id="raw", program="tests.dspy_raw_agents:RawModule"),))
    with otpy.Node.from_spec(root, name=unique_name("rawdspy")) as node:
        assert node.call("raw", {"question": "the sky?"}, timeout=10.0) == {"answer": "blue"}
        assert node.call("raw", {"question": "why?"}, timeout=10.0) == {"answer": "raw"}


def test_import_otpy_does_not_import_dspy():
    code = "import otpy, otpy.agent.worker, sys; assert 'dspy' not in sys.modules, 'dspy was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_otpy_dspy_without_dspy_names_the_extra():
    code = ("import sys; sys.modules['dspy'] = None\n"
            "try:\n    import otpy.dspy\nexcept ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60,
                         capture_output=True, text=True).stdout
    assert "otpy.dspy needs DSPy: pip install 'otpy[dspy]'" in out, out


def test_the_script_and_the_model_come_from_args_and_the_environment(monkeypatch):
    """In-process (no node): args.script wins over the factory's SCRIPT; OTPY_DSPY_LM names
    the model of a real dspy.LM (built, never called here) whatever lm_model says."""
    from otpy.dspy import ModuleAgent

    agent = ModuleAgent()
    agent.setup({"module": "tests.dspy_agents:make_answerer", "script": [{"answer": "scripted"}]},
                {"lm_temperature": 0.25})
    assert agent(question="sky") == {"answer": "scripted"}  # not the module's SCRIPT ("blue")
    monkeypatch.setenv("OTPY_DSPY_LM", "ollama_chat/llama3.2")
    agent.on_config({"lm_temperature": 0.75, "lm_model": "dummy"})
    assert agent.running.lm.model == "ollama_chat/llama3.2" and agent.running.lm.kwargs["temperature"] == 0.75
    with pytest.raises(ValueError, match="needs a module factory"):
        ModuleAgent().setup({}, {})
    with pytest.raises(ValueError, match=r'program_state is refused: program_state\["respond"\]\["signature"\]\["fields"\]'):
        ModuleAgent().setup({"module": "tests.dspy_agents:make_answerer"},
                            {"program_state": {"respond": {"signature": {"fields": []}}}})


def test_a_script_function_gets_the_lm_settings_each_time_the_lm_is_made():
    from otpy.dspy import ModuleAgent
    from tests.dspy_agents import KnobAgent

    agent = KnobAgent()
    agent.setup({}, {"lm_temperature": 0.5})
    assert agent(question="q") == {"answer": "tame"}
    agent.on_config({"lm_temperature": 1.5})
    assert agent(question="q") == {"answer": "wild"} and agent.refused is None
    shows = ModuleAgent()  # a function factory whose module's class has SCRIPT
    shows.setup({"module": "tests.dspy_agents:make_shows_lm"}, {})
    assert shows(question="q")["answer"] == "first"


def test_lm_settings_the_lm_refuses_keep_the_old_lm():
    """A script function that raises stands for any LM the settings cannot make (dspy.LM refuses
    a reasoning model's temperature): the old LM stays, the refusal names the keys, not their values."""
    from tests.dspy_agents import KnobAgent

    agent = KnobAgent()
    agent.setup({}, {"lm_temperature": 0.5})
    with pytest.raises(otpy.ConfigRefused):  # hot_or_cold compares it with 1.0: TypeError
        agent.on_config({"lm_temperature": "secret-ish"})
    assert agent(question="q") == {"answer": "tame"} and agent.running.lm.kwargs["temperature"] == 0.5
    assert "lm_temperature" in agent.refused and "secret-ish" not in agent.refused


# --- program_state carries demos and signature texts only (security), falsy non-objects ----------


def answerer(config=None):
    """A ModuleAgent over tests.dspy_agents' Answerer (one predictor, 'respond'), in-process."""
    from otpy.dspy import ModuleAgent

    agent = ModuleAgent()
    agent.setup({"module": "tests.dspy_agents:make_answerer"}, dict(config or {}))
    return agent


# The adversary's document: DSPy's Predict.load_state set any key as an attribute, and `config`
# became the LM call's keywords: the real LM (and its API key) went to this host.
API_BASE = {"respond": {"config": {"api_base": "http://127.0.0.1:18777/v1"}}}

NOT_LOADED = [
    (API_BASE, '["respond"]["config"]: not part of a saved program'),
    ({"respond": {"forward": 1}}, '["respond"]["forward"]: not part of'),
    ({"respond": {"__dict__": {}}}, '["respond"]["__dict__"]: not part of'),
    ({"respond": {"callbacks": ["x"]}}, '["respond"]["callbacks"]: not part of'),
    ({"respond": {"lm": {"model": "openai/gpt-4o-mini", "api_base": "http://127.0.0.1:18777/v1"}}},
     '["respond"]["lm"]: otpy does not load it (the LM is the agent\'s'),
    ({"respond": {"traces": [{"x": 1}]}}, '["respond"]["traces"]: otpy does not load it'),
    ({"respond": {"train": [1]}}, '["respond"]["train"]: otpy does not load it'),
    ({"respond": {"fields": {"answer": {"kind": "x"}}}}, '["respond"]["fields"]: otpy does not load it'),
    ({"respond": {"demos": [{"question": "q", "answer": "a", "augmented": "yes"}]}},
     '["respond"]["demos"][0]["augmented"]: must be true or false'),
    ({"respond": {"demos": [{"question": "q", "config": {}}]}}, '["respond"]["demos"][0]["config"]: not a field'),
    ({"respond": {"signature": {"instructions": "x", "config": {}}}}, '["respond"]["signature"]["config"]: not part'),
    ({"respond": {"signature": {"instructions": 3}}}, '["respond"]["signature"]["instructions"]: must be a string'),
    ({"respond": {"signature": {"fields": [{"prefix": "Q:", "description": "q", "x": 1},
                                           {"prefix": "A:", "description": "a"}]}}},
     '["respond"]["signature"]["fields"][0]: the texts of \'question\''),
    ({"nope": {"demos": []}}, '["nope"]: the module has no predictor \'nope\''),
]


@pytest.mark.parametrize("state, why", NOT_LOADED, ids=[why.split(":")[0] for _, why in NOT_LOADED])
def test_a_program_state_key_otpy_does_not_load_is_refused_naming_its_path(state, why):
    """Before, every key but demos/signature went to DSPy's load_state (setattr): all accepted."""
    agent = answerer({"program_state": saved_program("kept")})
    before = agent.running
    with pytest.raises(otpy.ConfigRefused):
        agent.on_config({"program_state": state})
    assert agent.refused is not None and f"program_state is refused: program_state{why}" in agent.refused
    assert agent.running is before  # nothing put in place
    from otpy.dspy.agent import Refused

    with pytest.raises(Refused, match="program_state is refused") as caught:
        answerer({"program_state": state})
    assert f"program_state{why}" in str(caught.value)


def test_the_api_base_document_is_refused_and_the_real_lm_keeps_its_settings(monkeypatch):
    """No request leaves: the agent's LM is the one its lm_* variables made (a real dspy.LM,
    never called here), and the predictor has no call keywords of the document's."""
    monkeypatch.setenv("OTPY_DSPY_LM", "ollama_chat/llama3.2")
    agent = answerer({"lm_temperature": 0.5})
    lm, kwargs = agent.running.lm, dict(agent.running.lm.kwargs)
    with pytest.raises(otpy.ConfigRefused):
        agent.on_config({"lm_temperature": 0.5, "program_state": API_BASE})
    assert 'program_state["respond"]["config"]' in agent.refused
    assert agent.running.lm is lm and lm.kwargs == kwargs and "api_base" not in lm.kwargs
    assert agent.running.module.respond.config == {}


def test_a_dump_state_document_loads_and_only_checked_keys_reach_load_state(monkeypatch):
    """module.dump_state() round-trips (its traces/train/lm as a fresh predictor has them); what
    DSPy's load_state gets is built by the agent: the fresh predictor's state, the document's
    demos and signature texts, and no LM."""
    import dspy

    given = []
    original = dspy.Predict.load_state
    monkeypatch.setattr(dspy.Predict, "load_state", lambda self, state, **kw: (given.append(state),
                                                                               original(self, state, **kw))[1])
    state = saved_program("from the demo")
    state["respond"]["signature"]["instructions"] = "Answer tersely."
    agent = answerer()
    agent.on_config({"program_state": state})
    assert agent.refused is None
    assert agent.running.module.respond.demos == state["respond"]["demos"]
    assert agent.running.module.respond.signature.instructions == "Answer tersely."
    assert len(given) == 1 and set(given[0]) <= {"traces", "train", "demos", "signature", "lm", "fields"}
    assert given[0]["lm"] is None and set(given[0]["signature"]) == {"instructions", "fields"}


@pytest.mark.parametrize("value", [[], 0, "", False, [1], "abc"])
def test_a_program_state_that_is_not_an_object_is_refused_even_when_falsy(value):
    """Before, [] / 0 / "" / false meant the fresh module, silently."""
    agent = answerer({"program_state": saved_program("kept")})
    with pytest.raises(otpy.ConfigRefused):
        agent.on_config({"program_state": value})
    assert "program_state is refused: not a program state (an object" in agent.refused
    assert len(agent.running.module.respond.demos) == 1


@pytest.mark.parametrize("value", [{}, None])
def test_an_empty_object_or_null_program_state_is_the_fresh_module(value):
    agent = answerer({"program_state": saved_program("kept")})
    agent.on_config({"program_state": value})
    assert agent.refused is None and agent.running.module.respond.demos == []


def test_a_refusal_applies_nothing_and_setup_says_how_to_start_the_child_again(monkeypatch, capsys):
    """One place (prepared) refuses: a good lm_* change with a bad program_state is not half
    applied (before, the LM changed); setup names the variable and the command that fixes it."""
    from otpy.dspy.agent import Refused

    agent = answerer({"lm_temperature": 0.5})
    with pytest.raises(Refused) as caught:
        agent.prepared({"lm_temperature": 0.9, "program_state": {"nope": {}}})
    with pytest.raises(otpy.ConfigRefused):  # the node undoes the write that brought it
        agent.on_config({"lm_temperature": 0.9, "program_state": {"nope": {}}})
    assert agent.refused == str(caught.value) and "the module has no predictor 'nope'" in agent.refused
    assert agent.running.lm.kwargs["temperature"] == 0.5
    monkeypatch.setenv("OTPY_CHILD_ID", "coder")
    monkeypatch.setenv("OTPY_NODE", "team")
    with pytest.raises(Refused) as started:
        answerer({"program_state": {"nope": {}}})
    assert isinstance(started.value, ValueError)
    assert "otpy vars set --node team SCOPE program_state={}" in str(started.value)
    assert "'coder', a supervisor of it, or global" in str(started.value)


# --- outputs as plain data -------------------------------------------------------------------


REPLY_DEPTH = 98  # the containers one output may nest: the wire's 100, less the reply and its outputs


def nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value  # `levels` lists, one in the other


def make_odd():
    """A factory whose module's Prediction holds what JSON and the wire cannot carry as is."""
    import dspy

    class OddModule(dspy.Module):
        def forward(self, kind: str = "") -> dspy.Prediction:
            return dspy.Prediction(nan=float("nan"), inf=float("-inf"), big=10**30, keys={1: "a", (1, 2): "b"},
                                   fits=nested(REPLY_DEPTH), deep=nested(REPLY_DEPTH + 1), raw=b"\xff\x00",
                                   plain=[1, 2.5, "s", None, True])

    return OddModule()


def test_a_prediction_s_odd_values_become_plain_data_and_the_reply_encodes():
    """Before: NaN/inf went out as floats (`otpy call` printed invalid JSON), 10**30 and 99
    nested lists failed the call (Unencodable), tuple keys crashed `otpy call`."""
    import json

    from otpy.agent.one_call import run_call
    from otpy.dspy import ModuleAgent
    from otpy.wire.codec import MAX_DEPTH as WIRE_DEPTH, decode
    from otpy.wire.protocol import FROM_AGENT, Call, Reply

    agent = ModuleAgent()
    agent.setup({"module": f"{__name__}:make_odd"}, {})
    out = agent(kind="x")
    assert (out["nan"], out["inf"], out["big"]) == ("nan", "-inf", str(10**30))
    assert out["keys"] == {"1": "a", "(1, 2)": "b"} and out["raw"] == b"\xff\x00"
    assert out["plain"] == [1, 2.5, "s", None, True]
    assert out["fits"] == nested(REPLY_DEPTH) and nested_inner(out["deep"], REPLY_DEPTH) == "[]"
    json.dumps({k: v for k, v in out.items() if k != "raw"}, allow_nan=False)
    reply = decode(FROM_AGENT, run_call(agent, Call(call_id=7, inputs={"kind": "x"})))
    assert isinstance(reply, Reply) and reply.outputs["keys"] == {"1": "a", "(1, 2)": "b"}
    from otpy.agent.plain_data import MAX_DEPTH

    assert MAX_DEPTH == REPLY_DEPTH == WIRE_DEPTH - 2


def nested_inner(value, levels: int):
    for _ in range(levels):
        value = value[0]
    return value


def test_the_example_without_dspy_says_to_install_the_extra(tmp_path):
    """Before: "cannot import 'examples.dspy_team.programs:Reviewer': No module named dspy"
    (programs.py imported dspy before otpy.dspy). A fake dspy that cannot be imported stands for
    an install without it; validate's program check is the one `otpy start` runs."""
    (tmp_path / "dspy").mkdir()
    (tmp_path / "dspy" / "__init__.py").write_text('raise ImportError("No module named dspy (simulated)")\n')
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    done = subprocess.run([sys.executable, "-m", "otpy", "validate", "examples/dspy_team/topology.toml"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "cannot import 'examples.dspy_team.programs:Reviewer': otpy.dspy needs DSPy: pip install 'otpy[dspy]'" \
        in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_parameter_that_is_no_predict_loads_nothing_and_is_refused_unless_as_it_dumps_fresh():
    """A dspy.Retrieve's state ({"k": 3}) went to its load_state (setattr of any key) before."""
    import dspy

    from otpy.dspy.agent import Refused, load_program_state

    class WithRetrieve(dspy.Module):
        def __init__(self):
            super().__init__()
            self.find = dspy.Retrieve(k=3)
            self.respond = dspy.Predict("question -> answer")

    module = WithRetrieve()
    load_program_state(module, {"find": {"k": 3}, "respond": {"demos": [{"question": "q", "answer": "a"}]}})
    assert module.find.k == 3 and module.respond.demos == [{"question": "q", "answer": "a"}]
    with pytest.raises(Refused, match=r'program_state\["find"\]: the parameter is a Retrieve'):
        load_program_state(WithRetrieve(), {"find": {"k": 50}})
