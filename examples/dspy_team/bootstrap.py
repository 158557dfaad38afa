"""Demonstrations for the coder from the running node's own traces: DSPy's ``BootstrapFewShot``
step done by hand on otpy's agents.

It scores the trainset through the manager of the running node (``Evaluate``, 4 examples at
once), keeps the manager's trace of every example the metric passes (``metric(example,
prediction, trace)``), makes the coder stage's entries demonstrations (``demos``), puts the
first ``--max-demos`` on a fresh module of the program that ran the coder (``program_state``)
and writes its saved state as JSON: a value for the variable ``coder.program_state``.

    python -m examples.dspy_team.bootstrap STATE.json [--node dspy_team] [--max-demos 4]
    otpy vars set coder program_state=@STATE.json
"""

from __future__ import annotations

import argparse
import json

import otpy
from otpy.agent.program import import_target
from otpy.dspy.evaluate import Evaluate, caller_program
from otpy.dspy.traces import demos, program_state, traces

from . import data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.dspy_team.bootstrap", description=__doc__.split("\n")[0])
    parser.add_argument("path", help="where to write the coder's program_state (JSON)")
    parser.add_argument("--node", default="dspy_team")
    parser.add_argument("--max-demos", type=int, default=4)
    options = parser.parse_args(argv)
    trainset = data.trainset()
    with otpy.Caller(options.node) as caller:
        scored = Evaluate(devset=trainset, metric=data.metric, num_threads=4)(caller_program(caller, "manager"))
    kept, program = [], None
    for example, prediction, _ in scored.results:
        if prediction is None or not data.metric(example, prediction, trace=traces(prediction)):
            continue
        kept += traces(prediction)
        program = next(step["program"] for step in prediction.trace if step["step"] == "coder")
    if program is None:
        raise SystemExit("no example passed the metric: no demonstration to keep")
    made = demos(kept, "coder")[:options.max_demos]
    module = import_target(import_target(program).module)()  # the coder agent's module, fresh
    state = program_state(module, made)
    with open(options.path, "w") as file:
        json.dump(state, file, indent=1)
    predictors = ", ".join(state)
    print(f"trainset score {scored.score}%; {len(made)} demos of {program} ({predictors}) written to {options.path}")


if __name__ == "__main__":
    main()
