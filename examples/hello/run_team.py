"""Start the team of examples/hello/team.toml, call its coordinator, print the answer.

    python examples/hello/run_team.py [goal]
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repo root: otpy and examples

import otpy  # noqa: E402
from otpy.wire.calls import Caller  # noqa: E402


def main() -> None:
    goal = sys.argv[1] if len(sys.argv) > 1 else "tea"
    with otpy.Node.from_toml(os.path.join(HERE, "team.toml"), on_output=lambda child, line: None) as node:
        with Caller(node.name) as caller:
            answer = caller.call("coordinator", {"goal": goal}, timeout=10.0)
    print(json.dumps(answer, indent=2))


if __name__ == "__main__":
    main()
