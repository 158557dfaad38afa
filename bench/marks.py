"""Two programs that say who they are: the reconfigure benchmark swaps one for the other."""

import os

import otpy


class MarkA(otpy.Program):
    def forward(self, **inputs):
        return {"mark": "A", "pid": os.getpid()}


class MarkB(otpy.Program):
    def forward(self, **inputs):
        return {"mark": "B", "pid": os.getpid()}
