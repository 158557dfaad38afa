"""Datasets and metrics an ``[optimizer]`` table may name by mistake (tests of the usage errors)."""

import otpy


def raises():
    raise RuntimeError("the data file is gone")


NOT_A_LIST = 5
EMPTY: list = []


def not_examples():
    return [otpy.Example(inputs={"x": 1.0}, label=3.0), "x=2"]


def inputs_not_a_mapping():
    return [{"inputs": 5, "label": 1}]


def mappings():
    return [{"inputs": {"x": float(x)}, "label": 3.0 * x} for x in range(1, 4)]


def half_read():
    yield otpy.Example(inputs={"x": 1.0}, label=3.0)
    raise OSError("the stream broke")


NOT_CALLABLE = "exact"
