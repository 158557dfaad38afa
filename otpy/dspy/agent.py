"""``ModuleAgent``: an otpy program that serves a ``dspy.Module``, its LM settings and its saved
state (instructions, demonstrations) taken from the child's variables.

**The module** comes from a factory named ``"pkg.mod:make_program"``: the class attribute
``module`` of a ``ModuleAgent`` subclass, or the child's ``args.module`` (which wins). The
factory is a function returning a ``dspy.Module`` (or a ``dspy.Module`` subclass), or the
subclass itself; it is called with no arguments, at setup and again for each new
``program_state``.

**A call** is ``module(**inputs)`` under ``dspy.context(lm=<the agent's LM>)``; its outputs are
the ``Prediction``'s fields (``toDict()``) as plain data (``otpy.agent.plain_data``, the rule
of a raw module's outputs too): a key that is no string, a non-finite float, an integer over
64 bits, a set, any object that is not JSON data becomes its ``str()`` (``"nan"``), as does
what nests deeper than a reply may (bytes stay bytes). What ``forward`` raises reaches the
caller as a ``RemoteError`` naming its type (an ``AdapterParseError`` when the LM's answer did
not parse), as for any program.

**The LM** comes from the child's resolved configuration (its variables along its scope
chain; the child's ``args`` give defaults underneath): every key ``lm_<kw>`` is a keyword of
``dspy.LM(model=lm_model, <kw>=value)`` (``lm_temperature``, ``lm_max_tokens``, any other).
The environment variable ``OTPY_DSPY_LM`` (e.g. ``ollama_chat/llama3.2``) overrides the model
when set, for real runs. ``lm_model = "dummy"``, the default, is DSPy's ``DummyLM``: **its
answers are scripted**, no network, no key (its ``kwargs`` still show the ``lm_*`` settings).

**The script** of the dummy LM, the first found of: the child's ``args.script``, the
``script`` class attribute of the ``ModuleAgent`` subclass, a ``SCRIPT`` attribute of the
factory (a function's attribute, or a class attribute of the module it makes), a ``SCRIPT``
global of the factory's Python module. It has ``DummyLM``'s two forms, or is a function
``script(settings) -> answers`` called with the LM settings (the ``lm_*`` keys without the
prefix, e.g. ``{"temperature": 0.9}``) each time the LM is made, so that a knob can change
what the dummy LM answers:

* a list of answers, ``[{"answer": "red"}, {"answer": "blue"}]``: one per LM request, in
  order, for the life of the LM (a change of ``lm_*`` starts it again);
* a mapping ``{text: answer}``, ``{"sky": {"answer": "blue"}, "": {"answer": "unsure"}}``:
  the first entry whose ``text`` occurs in the request's last message (the one holding the
  call's inputs, as ``[[ ## question ## ]]\\nWhat colour is the sky?``) answers; ``""``
  occurs in every message: put it last, as the default.

An answer is a mapping of the signature's output fields to their text. The dummy LM also
follows demonstrations (``DummyLM(follow_examples=True)``): when the module's demos (from
``program_state``) hold an example whose inputs are the call's, the example's outputs are the
answer. So applying a saved program changes what the agent answers, with no network.

**program_state**: a config key holding a saved program, ``module.dump_state()`` (JSON: per
predictor name, its state). ``{}`` or null (or no such key): the factory's fresh module; any
other value that is not an object (``[]``, ``0``, ``""``, ``false``) is refused. Of a
predictor's state otpy loads only what a saved program carries for it: its ``demos`` (a list
of objects whose keys are the predictor's signature fields, plus DSPy's ``augmented`` flag)
and its ``signature``'s texts (``instructions``; ``fields``: one ``{prefix, description}`` of
strings per field). ``dump_state()``'s other keys (``traces``, ``train``, ``lm``, ``fields``)
are accepted only as a fresh predictor dumps them (``[]``, ``[]``, null, ``{}``), and never
loaded: the LM is the agent's alone, from the ``lm_*`` variables. Any other key, or a
predictor the module does not have, is refused, naming its key path
(``program_state["respond"]["config"]``). The state given to DSPy's ``load_state`` is built
from the fresh predictor's and these checked values, never the document's other keys. A
predictor left out of the document keeps its fresh state.

**on_config** (otpy runs it on a call thread, in turn with the calls): a change of the
``lm_*`` settings builds a new LM, a change of ``program_state`` a fresh module from the
factory with the state loaded; both are made aside (``prepared``) and put in place in one
assignment, so a call runs either the old pair or the new one, never half of it, and the
process stays (same pid). ``prepared`` is the one place that refuses values the agent cannot
run (a ``program_state`` that does not fit, ``lm_*`` settings ``dspy.LM`` refuses: named,
not their values): it raises ``Refused`` (a ``ValueError``) and nothing is put in place, the
LM included. ``on_config`` then keeps running what it ran and writes why on its stderr
(``otpy logs CHILD``); ``refused`` holds the last refusal (None after a change applied). At
setup such a value fails the start (declared = running): ``setup`` raises ``Refused``, naming
the variable and how to set one the child can run (``otpy vars set SCOPE program_state={}``).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import dspy
from dspy.utils.dummies import DummyLM

from ..agent.config_refused import ConfigRefused
from ..agent.plain_data import plain_outputs
from ..agent.program import Program, import_target

LM_ENV = "OTPY_DSPY_LM"  # overrides the model when set (a real LM for real runs)
DUMMY = "dummy"  # lm_model's default: DummyLM with the scripted answers
LM_PREFIX = "lm_"
STATE_KEY = "program_state"
LOADED_KEYS = frozenset({"demos", "signature"})  # what otpy loads of a predictor's saved state
INERT_KEYS = {"traces": [], "train": [], "lm": None, "fields": {}}  # dump_state()'s other keys: never loaded
AUGMENTED = "augmented"  # DSPy's flag on a bootstrapped demo, besides the signature's fields


class Refused(ConfigRefused):
    """Values the agent cannot run: a ``program_state`` that does not fit the module (the
    message names its key path), or ``lm_*`` settings no LM can be made of (named, not their
    values). Raised by ``prepared``, the one place that decides; from ``on_config`` it makes the
    node undo the write (``otpy.ConfigRefused``)."""


class ScriptedLM(DummyLM):
    """``DummyLM(script, follow_examples=True)`` that falls back to the script when no demo
    matches (DummyLM alone answers nothing then)."""

    def __init__(self, script: list | dict) -> None:
        super().__init__(list(script) if isinstance(script, list) else dict(script), follow_examples=True)

    def _use_example(self, messages):
        try:
            output = super()._use_example(messages)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):  # no field headers at all
            output = None
        return output if output else self._scripted(messages)

    def _scripted(self, messages) -> str:
        if isinstance(self.answers, dict):
            last = messages[-1].get("content", "") if messages else ""
            return next((self._format_answer_fields(answer) for text, answer in self.answers.items()
                         if text in last), "No more responses")
        return self._format_answer_fields(next(self.answers, {"answer": "No more responses"}))


@dataclass(frozen=True)
class Running:
    """What calls run, replaced in one assignment: the module, the LM, and the settings and
    state they were made from."""

    module: dspy.Module
    lm: Any
    lm_settings: dict[str, Any]
    state: Any


class ModuleAgent(Program):
    """Serves a ``dspy.Module`` made by a factory; see the module's docstring."""

    module: str | None = None  # "pkg.mod:make_program"; the child's args.module wins
    script: list | dict | Callable | None = None  # the dummy LM's answers (see the module's docstring)

    refused: str | None = None  # the last value on_config could not apply, and why

    def setup(self, args: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        target = args.get("module", self.module)
        if not isinstance(target, str) or not target:
            raise ValueError(f"{type(self).__name__} needs a module factory 'pkg.mod:make_program': the class "
                             f"attribute `module` or the child's args.module (got {target!r})")
        self.target = target
        self.factory = import_target(target)
        self.args = dict(args)
        self._lock = threading.Lock()  # one on_config at a time (calls never wait for it)
        fresh = self._fresh()
        self.the_script = self._find_script(args, fresh)
        if not callable(self.the_script):
            self.the_script = _checked_script(self.the_script)
        try:
            self.running = self.prepared(config, fresh=fresh)
        except Refused as exc:  # declared = running: a value it cannot run fails the start
            raise Refused(f"{exc}; {_how_to_fix(str(exc))}") from None

    def forward(self, **inputs: Any) -> dict[str, Any]:
        running = self.running  # one read: the old pair or the new one, never half
        with dspy.context(lm=running.lm):
            prediction = running.module(**inputs)
        return outputs_of(prediction, self.target)

    def on_config(self, config: Mapping[str, Any]) -> None:
        """New values, applied all or nothing; values it cannot run raise ``Refused`` (an
        ``otpy.ConfigRefused``): it keeps running what it ran, and the node undoes the write."""
        with self._lock:
            try:
                running = self.prepared(config)
            except Refused as exc:
                self.refused = str(exc)
                raise
            self.running, self.refused = running, None

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Asked by the node before a write is stored: raises ``Refused`` (an ``otpy.ConfigRefused``)
        for values it could not run, as ``on_config`` would; builds them aside, applies nothing."""
        self.prepared(config)

    def prepared(self, config: Mapping[str, Any], fresh: dspy.Module | None = None) -> Running:
        """What calls would run with ``config``: the LM of its ``lm_*`` settings and the module
        with its ``program_state`` (made aside; what is unchanged is kept). Raises ``Refused``
        when either cannot be made, naming each (all or nothing: nothing is put in place)."""
        now = getattr(self, "running", None)
        settings, state = self._lm_settings(config), config.get(STATE_KEY)
        if state == {}:
            state = None  # {} and null: the factory's fresh module
        refusals, lm, module = [], None, None
        if now is not None and settings == now.lm_settings:
            lm = now.lm
        else:
            try:
                lm = self._made_lm(settings)
            except Exception as exc:
                names = ", ".join(LM_PREFIX + name for name in sorted(settings)) or "none"  # not values: a key may be secret
                refusals.append(f"the LM settings ({names}) are refused: {type(exc).__name__}: {exc}")
        if now is not None and state == now.state:
            module = now.module
        else:
            try:
                module = self._made_module(state, fresh)
            except Exception as exc:
                refusals.append(f"{STATE_KEY} is refused: {_why(exc)}")
        if refusals:
            raise Refused("; ".join(refusals))
        return Running(module, lm, settings, state)

    def _find_script(self, args: Mapping[str, Any], module: dspy.Module) -> Any:
        if args.get("script") is not None:
            return args["script"]
        if type(self).script is not None:
            return type(self).script  # from the class: a function stays a function (not a method)
        for holder in (self.factory, type(module)):
            if getattr(holder, "SCRIPT", None) is not None:
                return holder.SCRIPT
        python_module = sys.modules.get(getattr(self.factory, "__module__", "") or "")
        return getattr(python_module, "SCRIPT", None)

    def _lm_settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``{kw: value}`` of the ``lm_*`` keys: the args' under the config's."""
        merged = {**self.args, **config}
        return {key[len(LM_PREFIX):]: value for key, value in merged.items()
                if key.startswith(LM_PREFIX) and len(key) > len(LM_PREFIX)}

    def _made_lm(self, settings: dict[str, Any]) -> Any:
        kwargs = dict(settings)
        model = os.environ.get(LM_ENV) or kwargs.pop("model", DUMMY)
        kwargs.pop("model", None)
        if model == DUMMY:
            script = self.the_script
            lm = ScriptedLM(_checked_script(script(dict(settings))) if callable(script) else script)
            lm.kwargs.update(kwargs)
            return lm
        return dspy.LM(model=model, **kwargs)

    def _made_module(self, state: Any, fresh: dspy.Module | None = None) -> dspy.Module:
        module = fresh if fresh is not None else self._fresh()
        if state is not None:
            load_program_state(module, state)
        return module

    def _fresh(self) -> dspy.Module:
        made = self.factory()
        if isinstance(made, type):
            made = made()
        if not isinstance(made, dspy.Module):
            raise TypeError(f"the factory {self.target!r} made a {type(made).__name__}, not a dspy.Module")
        return made


def load_program_state(module: dspy.Module, state: Any) -> None:
    """Load ``state`` (a saved program) into ``module``, checked first: raises ``Refused``
    naming the key path of what does not fit, and then leaves ``module`` as it was (every
    predictor is checked before any is loaded). Only what otpy carries reaches DSPy's
    ``load_state``, in a state built here: a predictor's ``demos`` and its signature's texts."""
    if not isinstance(state, Mapping):
        raise Refused(f"not a program state (an object, a module's dump_state()): it is {_kind(state)}")
    predictors = dict(module.named_parameters())
    unknown = [name for name in state if name not in predictors]
    if unknown:
        raise Refused(f"{_path(unknown[0])}: the module has no predictor {unknown[0]!r} (it has "
                      f"{', '.join(map(repr, predictors)) or 'none'})")
    built = {name: _allowed_state(name, predictors[name], entry) for name, entry in state.items()}
    for name, entry in built.items():
        if entry is None:
            continue  # carries nothing: the fresh predictor stays
        try:
            predictors[name].load_state(entry)
        except Exception as exc:
            raise Refused(f"{_path(name)}: {type(exc).__name__}: {exc}") from exc


def _allowed_state(name: str, predictor: Any, entry: Any) -> dict | None:
    """The state to load into ``predictor``, built of what ``entry`` may carry; None when it
    carries nothing. Raises ``Refused`` naming the first key path that does not fit."""
    if not isinstance(entry, Mapping):
        raise Refused(f"{_path(name)}: a predictor's state must be an object, not {_kind(entry)}")
    fresh = predictor.dump_state()
    if not isinstance(predictor, dspy.Predict):  # a Retrieve, ...: nothing of it is loaded
        if dict(entry) == fresh:
            return None  # as its fresh self dumps it: a module's dump_state() round-trips
        raise Refused(f"{_path(name)}: the parameter is a {type(predictor).__name__}; otpy loads demos and "
                      "signature texts into a dspy.Predict only (leave it out, or as it dumps fresh)")
    loaded = [key for key in entry if key in LOADED_KEYS]
    for key, value in entry.items():
        if key in LOADED_KEYS:
            continue
        if key in INERT_KEYS and value == fresh.get(key, INERT_KEYS[key]):
            continue  # dump_state()'s bookkeeping, as a fresh predictor has it: carries nothing
        if key in INERT_KEYS:
            raise Refused(f"{_path(name, key)}: otpy does not load it (the LM is the agent's, from the "
                          f"{LM_PREFIX}* variables; otpy loads only demos and signature texts): "
                          f"leave it out or as a fresh predictor dumps it ({fresh.get(key, INERT_KEYS[key])!r})")
        raise Refused(f"{_path(name, key)}: not part of a saved program (a predictor's state may hold "
                      f"{', '.join(sorted(LOADED_KEYS))})")
    if not loaded:
        return None
    fields = list(predictor.signature.fields)
    built = {**fresh, "lm": None}  # the LM is the agent's
    if "demos" in entry:
        built["demos"] = _allowed_demos(name, fields, entry["demos"])
    if "signature" in entry:
        built["signature"] = _allowed_signature(name, fields, fresh["signature"], entry["signature"])
    return built


def _allowed_demos(name: str, fields: list[str], demos: Any) -> list[dict]:
    if not isinstance(demos, list):
        raise Refused(f"{_path(name, 'demos')}: must be an array, not {_kind(demos)}")
    made = []
    for index, demo in enumerate(demos):
        if not isinstance(demo, Mapping):
            raise Refused(f"{_path(name, 'demos', index)}: a demo must be an object, not {_kind(demo)}")
        for key, value in demo.items():
            if key == AUGMENTED:
                if not isinstance(value, bool):
                    raise Refused(f"{_path(name, 'demos', index, key)}: must be true or false, not {_kind(value)}")
            elif key not in fields:
                raise Refused(f"{_path(name, 'demos', index, key)}: not a field of the predictor's "
                              f"signature ({', '.join(fields)})")
        made.append(copy.deepcopy(dict(demo)))
    return made


def _allowed_signature(name: str, fields: list[str], fresh: dict, saved: Any) -> dict:
    if not isinstance(saved, Mapping):
        raise Refused(f"{_path(name, 'signature')}: must be an object, not {_kind(saved)}")
    for key in saved:
        if key not in ("instructions", "fields"):
            raise Refused(f"{_path(name, 'signature', key)}: not part of a saved signature "
                          "(it may hold instructions, fields)")
    instructions = saved.get("instructions", fresh["instructions"])
    if not isinstance(instructions, str):
        raise Refused(f"{_path(name, 'signature', 'instructions')}: must be a string, not {_kind(instructions)}")
    texts = saved.get("fields", fresh["fields"])
    if not isinstance(texts, list) or len(texts) != len(fields):
        count = f"{len(texts)}" if isinstance(texts, list) else _kind(texts)
        raise Refused(f"{_path(name, 'signature', 'fields')}: must be a list of {len(fields)} (one per "
                      f"field: {', '.join(fields)}), not {count}")
    for index, (field, item) in enumerate(zip(fields, texts)):
        if not isinstance(item, Mapping) or set(item) != {"prefix", "description"} \
                or not all(isinstance(text, str) for text in item.values()):
            raise Refused(f"{_path(name, 'signature', 'fields', index)}: the texts of {field!r} must be an "
                          "object of two strings, prefix and description, and nothing else")
    return {"instructions": instructions, "fields": [dict(item) for item in texts]}


def _path(*keys: Any) -> str:
    """``program_state["respond"]["demos"][0]``: where in the document."""
    return STATE_KEY + "".join(f"[{key}]" if isinstance(key, int) else f"[{_quoted(key)}]" for key in keys)


def _quoted(key: Any) -> str:
    return json.dumps(key) if isinstance(key, str) else repr(key)


def outputs_of(prediction: Any, target: str = "the module") -> dict[str, Any]:
    """A ``Prediction``'s fields (or a mapping's items) as plain data (``agent.plain_data``)."""
    if callable(to_dict := getattr(prediction, "toDict", None)):
        fields = to_dict()
    elif isinstance(prediction, Mapping):
        fields = prediction
    else:
        raise TypeError(f"{target} returned a {type(prediction).__name__}, not a dspy.Prediction")
    return plain_outputs(fields)


def _checked_script(script: Any) -> list | dict:
    """The dummy LM's answers: a list of answer objects or a mapping ``{text: answer}``."""
    if script is None:
        return {}
    if isinstance(script, list) and all(isinstance(answer, Mapping) for answer in script):
        return [dict(answer) for answer in script]
    if isinstance(script, Mapping) and all(isinstance(text, str) and isinstance(answer, Mapping)
                                           for text, answer in script.items()):
        return {text: dict(answer) for text, answer in script.items()}
    raise TypeError("the dummy LM's script must be a list of answers ({field: text}) or a mapping "
                    f"{{text: answer}}, not {_kind(script)}")


def _how_to_fix(why: str) -> str:
    """What to run so that the child starts again, for a value ``setup`` refused."""
    child = os.environ.get("OTPY_CHILD_ID")
    node = f" --node {os.environ['OTPY_NODE']}" if os.environ.get("OTPY_NODE") else ""
    fixes = []
    if f"{STATE_KEY} is refused" in why:
        fixes.append(f"otpy vars set{node} SCOPE {STATE_KEY}={{}} (the factory's fresh module)")
    if "LM settings" in why:
        fixes.append(f"otpy vars set{node} SCOPE {LM_PREFIX}KW=VALUE (a value dspy.LM accepts)")
    where = f"{child!r}, a supervisor of it, or global" if child else "the child, a supervisor of it, or global"
    return f"set a value the child can run: {' and '.join(fixes)}; SCOPE: where it is declared ({where})"


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, Refused) else f"{type(exc).__name__}: {exc}"


JSON_KINDS = ((bool, "a boolean"), (str, "a string"), (int, "a number"), (float, "a number"),
              (list, "an array"), (tuple, "an array"), (Mapping, "an object"))


def _kind(value: Any) -> str:
    """What ``value`` is, in JSON's words (the document's)."""
    if value is None:
        return "null"
    return next((name for kind, name in JSON_KINDS if isinstance(value, kind)), f"a {type(value).__name__}")
