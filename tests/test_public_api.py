"""The public API is exactly what otpy/__init__.py lists; everything else is private."""

import otpy

PUBLIC = {
    "AgentCrashed", "AsyncClient", "AsyncNode", "BadRequest", "BoolVariable", "CallError", "CallTimeout",
    "Caller", "ChildSpec", "ChoiceVariable", "Client", "CompileResult", "CompositeVariable", "ConfigRefused", "ControlError",
    "DynamicSupervisorSpec", "Example", "ExitReason", "FloatVariable", "IntegerVariable", "ManagerProgram", "ModuleVariable",
    "NoSuchAgent", "Node", "NodeNotFound", "NodeSpec", "NodeStartError", "Optimizer", "Orchestrator", "Overloaded",
    "Pipeline", "PipelineResult", "Program", "RemoteError", "Result", "Stage", "SupervisorSpec",
    "Unencodable", "VariableError", "VariableSpace", "WatchPolicy", "connect",
    "ClusterError", "NodeUnreachable", "RemoteCaller", "load_cluster",  # beyond one machine (#18)
    # every error a public call raises
    "OptimizeError", "PipelineError", "RuntimeDirError", "TopologyError", "NodeStale", "NodeAlreadyRunning", "NoSuchSupervisor", "InvalidNodeName",
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
                 "NodeNotFound", "NodeStale", "NodeAlreadyRunning", "ControlError", "NoSuchSupervisor", "CallError",
                 "VariableError"):
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


def test_a_missing_supervisor_raises_the_public_error():
    from tests.helpers import unique_name

    with otpy.Node.from_spec(otpy.SupervisorSpec(id="root"), name=unique_name("api")) as node:
        try:
            node.which_children("nope")
        except otpy.NoSuchSupervisor as exc:
            assert isinstance(exc, otpy.ControlError) and isinstance(exc, LookupError)
        else:
            raise AssertionError("which_children of a missing supervisor returned")


# Errors that never leave otpy through a public call, and why.
INTERNAL_ERRORS = {
    "AgentDraining": "a Caller resends such a call to the name's next holder; only hand-made clients see it",
    "AlreadyRunning": "the run lock's; Node.start raises NodeAlreadyRunning",
    "BoundWrite": "the registry's; answered as a refusal of kind bound",
    "KeyFolderError": "otpy keys' (the CLI): a key folder that is not private or would be overwritten; one line, exit 2",
    "LogFolderError": "a log folder otpy may not write; Node.start raises NodeStartError with its text, the CLI one line",
    "Refused": "otpy.dspy's: an otpy.ConfigRefused (public) of a ModuleAgent's values; the write is undone",
    "PlanError": "a PipelineError (public): a manager's plan or args, raised in its agent (callers see "
                 "RemoteError, a start fails with its text); in-process it is caught as otpy.PipelineError",
    "RegistryDown": "the worker's registry link; the child's start fails with its text",
    "RegistryFileError": "raised in the registry child; its start fails with its text",
    "DatabaseLost": "an OptimizeError (public): the study's database stayed away longer than its bound",
    "ScratchNameTaken": "an OptimizeError (public): a trial worker's scratch node name is a running node's; it takes the next",
    "StorageUnavailable": "the registry's, while a shared database is unreachable; answered as a refusal of kind unavailable",
    "RegistryRefused": "RegistryClient's (worker, manager, otpy vars); public calls answer an Outcome",
    "StageFailed": "a manager's failed stage, raised in its agent: callers see RemoteError with its text",
    "TrialFailed": "a trial without a score, inside optuna's loop (caught there: the trial is FAIL, its reason kept)",
    "SymlinkRefused": "otpy logs': a symlink in place of a log file; the command prints it as one line (exit 1)",
    "StartFailed": "the process manager's; supervisors turn it into a start_failed outcome",
    "UnboundValue": "resolving a bound spec; a start fails with its text (start_failed)",
    "VersionConflict": "the registry's compare-and-set; answered as a refusal of kind conflict",
    "WireError": "decoding within limits; callers see Unencodable or BadRequest, the node a Refused",
    "ZygoteDied": "the process manager's; children end with reason lost",
}


def test_every_error_class_is_public_or_known_internal():
    """A new exception class is either importable from otpy or listed above with the reason it
    never reaches a user."""
    import importlib
    import inspect
    import pkgutil

    errors = set()
    for info in pkgutil.walk_packages(otpy.__path__, "otpy."):
        if info.name != "otpy.__main__":
            module = importlib.import_module(info.name)
            errors |= {name for name, value in vars(module).items()
                       if inspect.isclass(value) and issubclass(value, BaseException)
                       and value.__module__ == module.__name__ and not name.startswith("_")}
    assert errors - PUBLIC - set(INTERNAL_ERRORS) == set()
    assert set(INTERNAL_ERRORS) <= errors  # no stale entries
