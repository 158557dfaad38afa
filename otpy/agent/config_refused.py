"""``ConfigRefused``: what a program's ``on_config`` raises for values it cannot run.

The agent then keeps running the values it had, and says why to the node; the node undoes the
write that brought them (the previous values are stored and run again) and refuses it, naming
the child and the reason (``node.variable_writes``). Declared stays what runs.

>>> import otpy
>>> class Agent(otpy.Program):
...     def on_config(self, config):
...         if config.get("k", 1) < 1:
...             raise otpy.ConfigRefused(f"k: got {config['k']}; expected at least 1")
"""


class ConfigRefused(ValueError):
    """Raised by ``on_config`` for values the program cannot run; its message says why (it
    reaches the writer). Any other exception in ``on_config`` crashes the child, which its
    supervisor restarts with the new values."""
