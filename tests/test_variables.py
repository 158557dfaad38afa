"""Variables and spaces: every type checks its values and its declaration, a space reports every problem at once."""

from __future__ import annotations

import math
import pickle
import random
import tomllib

import msgspec
import optuna
import pytest

from otpy.topology.load import parse_topology
from otpy.variables.scopes import VariableSpace, spaces_from_topology
from otpy.variables.types import (
    BoolVariable,
    ChoiceVariable,
    CompositeVariable,
    FloatVariable,
    IntegerVariable,
    ModuleVariable,
    VariableError,
    WireVariable,
    variable_from_table,
)

KNN, SVM = "examples.digits.agents:KNN", "examples.digits.agents:SVM"


def problems_of(call, *args, **kwargs) -> list[str]:
    with pytest.raises(VariableError) as caught:
        call(*args, **kwargs)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def check(variable, value) -> str | None:
    """The one problem ``variable`` has with ``value``, checked through a space."""
    try:
        VariableSpace("s", [variable]).validate_one(variable.name, value)
    except VariableError as error:
        (problem,) = error.problems
        return problem
    return None


# Floats


def test_float_accepts_its_range_and_turns_ints_into_floats():
    temperature = FloatVariable(name="temperature", low=0.0, high=2.0, default=1)
    assert temperature.default == 1.0 and isinstance(temperature.default, float)
    space = VariableSpace("s", [temperature])
    assert space.validate_one("temperature", 2) == 2.0
    assert isinstance(space.validate_one("temperature", 2), float)
    assert check(temperature, 0.0) is None and check(temperature, 2.0) is None


@pytest.mark.parametrize("value", [3.5, -0.1, True, "1.0", None, math.nan, math.inf])
def test_float_rejects_values_out_of_range_or_of_the_wrong_type(value):
    temperature = FloatVariable(name="temperature", low=0.0, high=2.0)
    assert check(temperature, value) == f"temperature: got {value!r}; expected a float in [0.0, 2.0]"


def test_float_on_a_step_grid():
    ratio = FloatVariable(name="ratio", low=0.0, high=1.0, step=0.25)
    assert check(ratio, 0.75) is None
    assert check(ratio, 0.1 + 0.2 + 0.2 + 0.25) is None  # float noise is still on the grid
    assert check(ratio, 0.3) == "ratio: got 0.3; expected a float in [0.0, 1.0] on the grid 0.0 + k * 0.25"


def test_log_float_accepts_its_range():
    c = FloatVariable(name="C", low=0.001, high=100.0, log=True, default=1.0)
    assert check(c, 0.001) is None and check(c, 55.5) is None
    assert check(c, 0.0) == "C: got 0.0; expected a float in [0.001, 100.0]"


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"low": 2.0, "high": 1.0}, "x.high: got 1.0; expected a number >= low (2.0)"),
        ({"low": 0.0, "high": 1.0, "log": True}, "x.low: got 0.0; expected a number > 0 (log is true)"),
        ({"low": 0.1, "high": 1.0, "log": True, "step": 0.1},
         "x.step: got 0.1; expected no step when log is true (optuna cannot do both)"),
        ({"low": 0.0, "high": 1.0, "step": 0.3},
         "x.step: got 0.3; expected a step that divides high - low (1.0 - 0.0)"),
        ({"low": 0.0, "high": 1.0, "step": 0}, "x.step: got 0; expected a number > 0, or no step"),
        ({"low": "0", "high": math.inf}, "x.low: got '0'; expected a finite number"),
        ({"low": 0.0, "high": 1.0, "log": "yes"}, "x.log: got 'yes'; expected true or false"),
        ({"low": 0.0, "high": 2.0, "default": 3.5}, "x.default: got 3.5; expected a float in [0.0, 2.0]"),
        ({"low": 0.0, "high": 1.0, "step": 0.5, "default": 0.2},
         "x.default: got 0.2; expected a float in [0.0, 1.0] on the grid 0.0 + k * 0.5"),
    ],
)
def test_float_declaration_problems(fields, problem):
    assert problem in problems_of(FloatVariable, name="x", **fields)


# Integers and booleans


def test_integer_range_step_and_types():
    layers = IntegerVariable(name="layers", low=1, high=10, step=3, default=4)
    assert [check(layers, value) for value in (1, 4, 7, 10)] == [None] * 4
    expected = "expected an integer in [1, 10] on the grid 1 + k * 3"
    assert check(layers, 5) == f"layers: got 5; {expected}"
    assert check(layers, 13) == f"layers: got 13; {expected}"
    assert check(layers, 4.0) == f"layers: got 4.0; {expected}"


def test_bool_is_not_an_integer_and_an_integer_is_not_a_bool():
    flag = IntegerVariable(name="n", low=0, high=1)
    assert check(flag, True) == "n: got True; expected an integer in [0, 1]"
    verbose = BoolVariable(name="verbose", default=False)
    assert check(verbose, False) is None
    assert check(verbose, 1) == "verbose: got 1; expected True or False"
    assert problems_of(BoolVariable, name="verbose", default=0) == ["verbose.default: got 0; expected True or False"]


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"low": 1, "high": 10, "step": 2}, "n.step: got 2; expected a step that divides high - low (10 - 1)"),
        ({"low": 1.0, "high": 10}, "n.low: got 1.0; expected an integer"),
        ({"low": True, "high": 10}, "n.low: got True; expected an integer"),
        ({"low": 5, "high": 1}, "n.high: got 1; expected an integer >= low (5)"),
        ({"low": 1, "high": 10, "step": 0}, "n.step: got 0; expected an integer >= 1"),
        ({"low": 1, "high": 10, "default": 11}, "n.default: got 11; expected an integer in [1, 10]"),
    ],
)
def test_integer_declaration_problems(fields, problem):
    assert problem in problems_of(IntegerVariable, name="n", **fields)


# Choices and modules


def test_choices_of_mixed_types_match_type_and_value():
    mode = ChoiceVariable(name="mode", choices=["auto", 1, 2.5, False], default="auto")
    assert mode.choices == ("auto", 1, 2.5, False)
    assert [check(mode, value) for value in ("auto", 1, 2.5, False)] == [None] * 4
    for wrong in (True, 1.0, "1", 0, None):
        assert check(mode, wrong) == f"mode: got {wrong!r}; expected one of 'auto', 1, 2.5, False"


def test_choices_that_python_and_optuna_cannot_tell_apart_are_refused():
    assert problems_of(ChoiceVariable, name="c", choices=[1, True, 1.0]) == [
        "c.choices[1]: got True; expected a value other than 1 (equal in Python)",
        "c.choices[2]: got 1.0; expected a value other than 1 (equal in Python)",
    ]
    assert problems_of(ChoiceVariable, name="c", choices=[]) == [
        "c.choices: got []; expected a non-empty array, each item a string, integer, finite float or boolean"
    ]
    assert problems_of(ChoiceVariable, name="c", choices=["a", None, math.nan])[0].startswith(
        "c.choices[1]: got None; expected a string"
    )
    assert problems_of(ChoiceVariable, name="c", choices=["a"], default="b") == ["c.default: got 'b'; expected one of 'a'"]


def test_module_strings_are_checked_not_imported():
    classifier = ModuleVariable(name="classifier", modules=["no.such.package:Thing", KNN], default=KNN)
    assert check(classifier, "no.such.package:Thing") is None
    assert check(classifier, SVM) == f"classifier: got {SVM!r}; expected one of the modules 'no.such.package:Thing', {KNN!r}"
    expected = "a 'module:attr' import string, e.g. 'examples.digits.agents:KNN'"
    for malformed in ("examples.digits.agents", "a:b:c", "1pkg:X", ":X", 42):
        assert problems_of(ModuleVariable, name="m", modules=[malformed]) == [
            f"m.modules[0]: got {malformed!r}; expected {expected}"
        ]
    assert problems_of(ModuleVariable, name="m", modules=[KNN], default=SVM) == [
        f"m.default: got {SVM!r}; expected one of the modules {KNN!r}"
    ]


def test_names_must_be_identifiers_and_problems_are_all_reported():
    assert problems_of(FloatVariable, name="top-p", low=1.0, high=0.0, description=3) == [
        "top-p: got 'top-p'; expected a Python identifier",
        "top-p.description: got 3; expected a string",
        "top-p.high: got 0.0; expected a number >= low (1.0)",
    ]


def test_settable_variables_cross_the_wire_and_errors_pickle():
    variables = [
        FloatVariable(name="C", low=0.001, high=100.0, log=True, default=1.0, description="SVM C"),
        IntegerVariable(name="k", low=1, high=9, step=2, default=5),
        ChoiceVariable(name="mode", choices=["auto", 1, 2.5, False], default=False),
        ModuleVariable(name="classifier", modules=[KNN, SVM], default=KNN),
        BoolVariable(name="verbose", default=True),
    ]
    wire = msgspec.json.encode(variables)
    assert msgspec.json.decode(wire, type=list[WireVariable]) == variables
    assert msgspec.json.decode(msgspec.json.encode(variables[0]))["type"] == "float"
    with pytest.raises(msgspec.ValidationError, match=r"x\.high: got 1\.0; expected a number >= low"):
        msgspec.json.decode(b'{"type": "float", "name": "x", "low": 3, "high": 1}', type=WireVariable)
    error = pickle.loads(pickle.dumps(VariableError(["a: got 1; expected 2", "b: missing"])))
    assert error.problems == ["a: got 1; expected 2", "b: missing"]


# Spaces: defaults, every problem at once, composites, constraints


def llm_space() -> VariableSpace:
    return VariableSpace("llm", [
        FloatVariable(name="temperature", low=0.0, high=2.0, default=0.7),
        IntegerVariable(name="max_tokens", low=16, high=4096, default=256),
        ChoiceVariable(name="provider", choices=["openai", "anthropic"], default="openai"),
        BoolVariable(name="stream", default=False),
    ])


def test_validate_fills_defaults_and_keeps_given_values():
    assert llm_space().validate({"temperature": 1}) == {
        "temperature": 1.0, "max_tokens": 256, "provider": "openai", "stream": False,
    }


def test_validate_reports_every_problem_at_once():
    space = llm_space().add(CompositeVariable("budget", lambda c: c["max_tokens"] * 2, ["max_tokens"]))
    space.add(FloatVariable(name="top_p", low=0.0, high=1.0))  # no default: required
    assert problems_of(space.validate, {
        "temperature": 3.5, "max_tokens": True, "provider": "mistral", "budget": 10, "seed": 1,
    }) == [
        "budget: got 10; expected no value: it is computed from 'max_tokens'",
        ("seed: unknown variable (got 1); space 'llm' declares 'temperature', 'max_tokens', 'provider', 'stream', "
        "'budget', 'top_p'"),
        "temperature: got 3.5; expected a float in [0.0, 2.0]",
        "max_tokens: got True; expected an integer in [16, 4096]",
        "provider: got 'mistral'; expected one of 'openai', 'anthropic'",
        "top_p: missing; expected a float in [0.0, 1.0] (this variable has no default)",
    ]


def test_composites_are_computed_dependencies_first():
    seen = []

    def record(name, compute):
        def wrapped(config):
            seen.append((name, dict(config)))
            return compute(config)
        return wrapped

    space = VariableSpace("s")
    # Declared before the composite it depends on: order of declaration does not matter.
    space.add(CompositeVariable("total_cost", record("total_cost", lambda c: c["cost_per_call"] * c["calls"]),
                                ["cost_per_call", "calls"]))
    space.add(CompositeVariable("cost_per_call", record("cost_per_call", lambda c: c["max_tokens"] * 0.01),
                                ["max_tokens"]))
    space.add(IntegerVariable(name="max_tokens", low=1, high=1000, default=100))
    space.add(IntegerVariable(name="calls", low=1, high=10, default=3))
    assert space.validate({"max_tokens": 200}) == {
        "total_cost": 6.0, "cost_per_call": 2.0, "max_tokens": 200, "calls": 3,
    }
    # compute sees only what it depends on.
    assert seen == [("cost_per_call", {"max_tokens": 200}), ("total_cost", {"cost_per_call": 2.0, "calls": 3})]


def test_a_composite_cycle_is_refused_when_it_is_declared():
    space = VariableSpace("s", [IntegerVariable(name="n", low=1, high=3, default=1)])
    space.add(CompositeVariable("a", lambda c: c["b"], ["b", "n"]))
    space.add(CompositeVariable("b", lambda c: c["c"], ["c"]))
    assert problems_of(space.add, CompositeVariable("c", lambda c: c["a"], ["a"])) == [
        "c: composite dependencies form a cycle: c -> a -> b -> c"
    ]
    assert "c" not in space.variables
    assert problems_of(space.add, CompositeVariable("me", lambda c: 1, ["me"])) == [
        "me: composite dependencies form a cycle: me -> me"
    ]


def test_composite_problems_unknown_dependency_and_failing_compute():
    space = VariableSpace("s", [IntegerVariable(name="n", low=0, high=3, default=0)])
    space.add(CompositeVariable("ghost", lambda c: 1, ["nope"]))
    space.add(CompositeVariable("ratio", lambda c: 1 / c["n"], ["n"]))
    assert problems_of(space.validate, {}) == [
        "ghost: depends on 'nope'; expected declared variables: 'ghost', 'n', 'ratio'",
        "ratio: compute raised ZeroDivisionError: division by zero",
    ]
    assert problems_of(CompositeVariable, "x", compute=3, depends_on="n") == [
        "x.compute: got 3; expected a function of the configuration",
        "x.depends_on: got 'n'; expected a list of variable names",
    ]


def test_constraints_are_checked_after_composites_and_only_on_valid_values():
    calls = []
    space = llm_space().add(CompositeVariable("double", lambda c: c["max_tokens"] * 2, ["max_tokens"]))
    space.add_constraint(lambda c: calls.append(c) or c["double"] <= 1000, "double <= 1000")
    space.add_constraint(lambda c: c["missing_key"], "reads a key that is not there")
    space.add_constraint(lambda c: not (c["temperature"] > 1.5 and c["provider"] == "anthropic"), "hot anthropic")
    assert problems_of(space.validate, {"max_tokens": 600, "temperature": 1.8, "provider": "anthropic"}) == [
        "constraint 'double <= 1000': not met",
        "constraint 'reads a key that is not there': raised KeyError: 'missing_key'",
        "constraint 'hot anthropic': not met",
    ]
    assert calls[-1]["double"] == 1200
    calls.clear()
    assert problems_of(space.validate, {"max_tokens": 0}) == ["max_tokens: got 0; expected an integer in [16, 4096]"]
    assert calls == []


def test_validate_one():
    space = llm_space().add(CompositeVariable("double", lambda c: 2, ["max_tokens"]))
    assert space.validate_one("max_tokens", 32) == 32
    assert problems_of(space.validate_one, "double", 3) == ["double: got 3; expected no value: it is computed from 'max_tokens'"]
    assert problems_of(space.validate_one, "nope", 3)[0].startswith("nope: unknown variable (got 3); space 'llm'")


def test_a_variable_is_declared_once_per_space():
    space = llm_space()
    assert problems_of(space.add, BoolVariable(name="stream")) == ["stream: already declared in space 'llm'"]
    assert problems_of(space.add, "stream")[0].startswith("got 'stream'; expected a variable")


# Sampling


def test_sample_respects_types_steps_and_constraints():
    space = VariableSpace("s", [
        FloatVariable(name="lr", low=1e-4, high=1.0, log=True),
        FloatVariable(name="ratio", low=0.0, high=1.0, step=0.1),
        IntegerVariable(name="k", low=1, high=9, step=2),
        ChoiceVariable(name="mode", choices=["a", 1, 2.5, False]),
        ModuleVariable(name="classifier", modules=[KNN, SVM]),
        BoolVariable(name="flag"),
        CompositeVariable("k_squared", lambda c: c["k"] ** 2, ["k"]),
    ])
    space.add_constraint(lambda c: c["k"] + c["ratio"] * 10 <= 12, "k + 10 * ratio <= 12")
    rng = random.Random(7)
    samples = [space.sample(rng) for _ in range(300)]
    for sample in samples:
        assert space.validate({n: v for n, v in sample.items() if n != "k_squared"}) == sample
        assert sample["k_squared"] == sample["k"] ** 2
    assert {s["k"] for s in samples} == {1, 3, 5, 7, 9}
    assert {s["flag"] for s in samples} == {False, True}
    assert {s["classifier"] for s in samples} == {KNN, SVM}
    below_one_percent = sum(s["lr"] < 1e-2 for s in samples) / len(samples)
    assert 0.35 < below_one_percent < 0.65  # log-uniform: half of [1e-4, 1] in log scale is below 1e-2


def test_sample_fails_clearly_after_a_bounded_number_of_attempts():
    tries = []
    space = VariableSpace("impossible", [IntegerVariable(name="n", low=1, high=3)])
    space.add_constraint(lambda c: tries.append(c) or c["n"] > 3, "n > 3")
    assert problems_of(space.sample, random.Random(0), max_attempts=5) == [
        "impossible: could not meet the constraints in 5 attempts",
        "last attempt: constraint 'n > 3': not met",
    ]
    assert len(tries) == 5
    with pytest.raises(ValueError, match="max_attempts"):
        space.sample(random.Random(0), max_attempts=0)


def test_sample_is_reproducible_with_a_seeded_rng():
    assert llm_space().sample(random.Random(3)) == llm_space().sample(random.Random(3))


# Optuna


def test_optuna_distributions_mapping():
    space = VariableSpace("s", [
        FloatVariable(name="C", low=0.001, high=100.0, log=True, default=1.0),
        FloatVariable(name="ratio", low=0.0, high=1.0, step=0.25),
        IntegerVariable(name="k", low=1, high=9, step=2),
        ChoiceVariable(name="mode", choices=["auto", 1, 2.5, False]),
        ModuleVariable(name="classifier", modules=[KNN, SVM]),
        BoolVariable(name="flag"),
        CompositeVariable("k2", lambda c: c["k"] * 2, ["k"]),
    ])
    d = optuna.distributions
    assert space.to_optuna_distributions() == {
        "C": d.FloatDistribution(0.001, 100.0, log=True),
        "ratio": d.FloatDistribution(0.0, 1.0, step=0.25),
        "k": d.IntDistribution(1, 9, step=2),
        "mode": d.CategoricalDistribution(("auto", 1, 2.5, False)),
        "classifier": d.CategoricalDistribution((KNN, SVM)),
        "flag": d.CategoricalDistribution((False, True)),
    }


@pytest.mark.parametrize("sampler", [optuna.samplers.RandomSampler, optuna.samplers.TPESampler])
def test_what_optuna_suggests_is_valid(sampler):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = VariableSpace("s", [
        FloatVariable(name="C", low=0.001, high=100.0, log=True, default=1.0),
        FloatVariable(name="ratio", low=0.1, high=0.7, step=0.2, default=0.1),
        FloatVariable(name="temperature", low=0.0, high=2.0, default=0.7),
        IntegerVariable(name="k", low=1, high=9, step=2, default=1),
        ChoiceVariable(name="mode", choices=["auto", 1, 2.5, False], default="auto"),
        ModuleVariable(name="classifier", modules=[KNN, SVM], default=KNN),
        BoolVariable(name="flag", default=False),
        CompositeVariable("k2", lambda c: c["k"] * 2, ["k"]),
    ])
    study = optuna.create_study(sampler=sampler(seed=1))
    distributions = space.to_optuna_distributions()
    for _ in range(15):
        trial = study.ask(distributions)
        config = space.validate(trial.params)
        assert config["k2"] == trial.params["k"] * 2
        study.tell(trial, config["C"] * config["temperature"])


# The topology form


def test_variables_from_the_topology_form():
    tables = tomllib.loads(f"""
[variables.global]
classifier = {{ type = "module", modules = ["{KNN}", "{SVM}"], default = "{KNN}" }}
timeout = {{ type = "float", low = 0.1, high = 10.0, default = 2.0 }}
C = {{ type = "float", low = 0.001, high = 100.0, log = true, default = 1.0, description = "SVM regularisation" }}
k = {{ type = "integer", low = 1, high = 9, step = 2, default = 5 }}
mode = {{ type = "choice", choices = ["auto", 1, 2.5, false], default = 1 }}
verbose = {{ type = "bool", default = false }}
""")["variables"]
    space = spaces_from_topology(tables)["global"]
    assert space.variables["classifier"] == ModuleVariable(name="classifier", modules=(KNN, SVM), default=KNN)
    assert space.variables["C"].log is True and space.variables["C"].description == "SVM regularisation"
    assert space.validate({}) == {
        "classifier": KNN, "timeout": 2.0, "C": 1.0, "k": 5, "mode": 1, "verbose": False,
    }


@pytest.mark.parametrize(
    "table, problem",
    [
        ({"low": 0.0}, ("variables.team.x.type: missing; expected one of 'float', 'integer', 'choice', 'module', "
                        "'bool', 'document', 'composite'")),
        ({"type": "str"}, ("variables.team.x.type: got 'str'; expected one of 'float', 'integer', 'choice', "
                           "'module', 'bool', 'document', 'composite'")),
        ({"type": "composite", "depends_on": ["a"]}, "variables.team.x.compute: missing; this key is required"),
        ({"type": "composite", "compute": "math:nope", "depends_on": ["a"]},
         "variables.team.x.compute: cannot import 'math:nope': AttributeError"),
        ({"type": "composite", "compute": "math", "depends_on": ["a"]},
         "variables.team.x.compute: got 'math'; expected a 'module:function' import string"),
        ({"type": "composite", "compute": "math:pi", "depends_on": ["a"]},
         "variables.team.x.compute: 'math:pi' is 3.14"),
        ({"type": "composite", "compute": "math:floor", "depends_on": "a"}, "variables.team.x.depends_on: got 'a'"),
        ({"type": "composite", "compute": "math:floor", "depends_on": ["a"], "low": 1},
         "variables.team.x.low: unknown key 'low'; accepted keys: 'type', 'compute', 'depends_on', 'description'"),
        ({"type": "float", "low": 0.0, "high": 1.0, "max": 2.0},
         ("variables.team.x.max: unknown key 'max'; accepted keys: 'type', 'default', 'description', 'high', 'log', "
         "'low', 'step'")),
        ({"type": "float", "low": 0.0}, "variables.team.x.high: missing; this key is required"),
        ({"type": "choice"}, "variables.team.x.choices: missing; this key is required"),
        ({"type": "float", "low": 0.0, "high": 1.0, "default": 2.0},
         "variables.team.x.default: got 2.0; expected a float in [0.0, 1.0]"),
        ({"type": "integer", "low": 0, "high": "10"}, "variables.team.x.high: got '10'; expected an integer"),
        ({"type": "module", "modules": ["nope"]}, "variables.team.x.modules[0]: got 'nope'; expected a 'module:attr'"),
        ("float", "variables.team.x: got 'float'; expected a table such as"),
    ],
)
def test_topology_problems_name_the_key_path(table, problem):
    (found,) = problems_of(variable_from_table, "x", table, scope="team")
    assert found.startswith(problem)


def test_every_problem_of_every_scope_at_once():
    raw = {
        "global": {"a": {"type": "float", "low": 1.0, "high": 0.0}, "ok": {"type": "bool", "default": True}},
        "team.one": {"b": {"type": "integer", "low": 0, "high": 9, "default": 10}, "top-p": {"type": "bool"}},
        "ghost": {},
    }
    assert problems_of(spaces_from_topology, raw, scopes=["team.one"]) == [
        "variables.global.a.high: got 0.0; expected a number >= low (1.0)",
        "variables.\"team.one\".b.default: got 10; expected an integer in [0, 9]",
        "variables.\"team.one\".top-p: got 'top-p'; expected a Python identifier",
        "variables.ghost: unknown scope 'ghost'; expected 'global' or an id of the topology: 'team.one'",
    ]


def test_variables_read_from_a_topology_file():
    topology = parse_topology(f"""
[supervisor]
[[supervisor.children]]
id = "digits"
program = "otpy.agent.program:Program"

[variables.global]
classifier = {{ type = "module", modules = ["{KNN}", "{SVM}"], default = "{KNN}" }}

[variables.digits]
timeout = {{ type = "float", low = 0.1, high = 10.0, default = 2.0 }}
""")
    spaces = spaces_from_topology(topology.raw_variables, scopes=["root", "digits"])
    assert {scope: list(space.variables) for scope, space in spaces.items()} == {
        "global": ["classifier"], "digits": ["timeout"],
    }
