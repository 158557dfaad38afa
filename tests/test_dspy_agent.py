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
    assert node.set_variables("lm", {"program_state": saved_program("kept")}).ok
    pid = pids(node)["lm"]
    bad = saved_program("never")
    bad["respond"]["demos"][0]["answr"] = bad["respond"]["demos"][0].pop("answer")
    assert node.set_variables("lm", {"program_state": bad}).ok  # stored: the agent refuses it
    line = lines.wait_for("lm", "program_state is refused")
    assert "predictor 'respond'" in line and "'answr'" in line, line
    got = node.call("lm", {"question": "the question"}, timeout=10.0)
    assert got["answer"] == "kept" and got["pid"] == pid
    assert node.set_variables("lm", {"program_state": {"nope": {}}}).ok
    assert "predictor(s) 'nope'" in lines.wait_for("lm", "program_state is refused")
    assert node.call("lm", {"question": "the question"}, timeout=10.0)["answer"] == "kept"
    assert pids(node)["lm"] == pid


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
    with pytest.raises(ValueError, match=r"program_state is refused: predictor 'respond': signature.fields"):
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
    agent.on_config({"lm_temperature": "secret-ish"})  # hot_or_cold compares it with 1.0: TypeError
    assert agent(question="q") == {"answer": "tame"} and agent.running.lm.kwargs["temperature"] == 0.5
    assert "lm_temperature" in agent.refused and "secret-ish" not in agent.refused
