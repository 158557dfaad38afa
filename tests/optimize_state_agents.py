"""Programs for the optimizer's tests of documents (variables no trial searches): ``Stated``
reads a saved state (``pool.state``, a document), ``Plain`` refuses any state, as a DSPy program
refuses another program's saved state. Labels are ``3x`` (``tests.optimize_agents:dataset``)."""

import otpy


class Stated(otpy.Program):
    """``y = 3x - 1 + offset``: exact with the state ``{"offset": 1}``, off by 1 without one."""

    def setup(self, args, config):
        self.on_config(config)

    def on_config(self, config):
        state = config.get("state") or {}
        if set(state) - {"offset"}:
            raise ValueError(f"Stated reads only 'offset'; the state has {sorted(state)}")
        self.offset = float(state.get("offset", 0.0))

    def forward(self, x: float = 0.0):
        return {"y": 3 * x - 1 + self.offset}


class Plain(otpy.Program):
    """``y = 3x - 0.5``: better than a ``Stated`` without its state; it takes no state (its setup
    raises on one: the node refuses to start it with it)."""

    def setup(self, args, config):
        self.on_config(config)

    def on_config(self, config):
        if config.get("state"):
            raise ValueError("Plain takes no saved state")

    def forward(self, x: float = 0.0):
        return {"y": 3 * x - 0.5}
