"""The public API is exactly what otpy/__init__.py lists; everything else is private."""

import otpy

PUBLIC = {
    "AgentCrashed", "AsyncClient", "AsyncNode", "BadRequest", "BoolVariable", "CallError", "CallTimeout",
    "Caller", "ChildSpec", "ChoiceVariable", "Client", "CompileResult", "CompositeVariable", "ControlError",
    "DynamicSupervisorSpec", "Example", "ExitReason", "FloatVariable", "IntegerVariable", "ManagerProgram", "ModuleVariable",
    "NoSuchAgent", "Node", "NodeNotFound", "NodeSpec", "NodeStartError", "Optimizer", "Overloaded",
    "Pipeline", "PipelineResult", "Program", "RemoteError", "Result", "Stage", "SupervisorSpec",
    "Unencodable", "VariableError", "VariableSpace", "connect",
    # every error a public call raises
    "OptimizeError", "PipelineError", "RuntimeDirError", "TopologyError", "NodeStale", "NodeAlreadyRunning",
}


def test_the_public_names_are_pinned():
    assert set(otpy.__all__) == PUBLIC


def test_every_public_name_exists_and_modules_stay_private():
    for name in otpy.__all__:
        assert getattr(otpy, name) is not None
    assert not [m for m in dir(otpy) if not m.startswith("_") and m not in PUBLIC]


def test_every_error_a_public_call_raises_is_public():
    import inspect

    for name in ("TopologyError", "PipelineError", "OptimizeError", "RuntimeDirError", "NodeStartError",
                 "NodeNotFound", "NodeStale", "NodeAlreadyRunning", "ControlError", "CallError", "VariableError"):
        error = getattr(otpy, name)
        assert inspect.isclass(error) and issubclass(error, Exception), name


def test_examples_are_not_installed_as_a_package(tmp_path):
    """`pip install otpy` installs `otpy` alone: `examples` is importable only from a checkout."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('examples'))"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert found.stdout.strip() == "None", found.stdout + found.stderr
