"""``ModuleAgent``: an otpy program that serves a ``dspy.Module``, its LM settings and its saved
state (instructions, demonstrations) taken from the child's variables.

**The module** comes from a factory named ``"pkg.mod:make_program"``: the class attribute
``module`` of a ``ModuleAgent`` subclass, or the child's ``args.module`` (which wins). The
factory is a function returning a ``dspy.Module`` (or a ``dspy.Module`` subclass), or the
subclass itself; it is called with no arguments, at setup and again for each new
``program_state``.

**A call** is ``module(**inputs)`` under ``dspy.context(lm=<the agent's LM>)``; its outputs are
the ``Prediction``'s fields (``toDict()``), made JSON-able (``str()`` of what is not plain
data). What ``forward`` raises reaches the caller as a ``RemoteError`` naming its type (an
``AdapterParseError`` when the LM's answer did not parse), as for any program.

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
predictor name, its ``demos``, ``signature`` (``instructions``, ``fields``), ...). ``{}`` or
absent: the factory's fresh module. A predictor left out of the document keeps its fresh
state; a key of a predictor missing from the document fills from the fresh one; a
predictor's saved ``lm`` is ignored (the LM is the agent's).

**on_config** (otpy runs it on a call thread, in turn with the calls): a change of the
``lm_*`` settings builds a new LM, a change of ``program_state`` a fresh module from the
factory with ``load_state``; both are made aside and put in place in one assignment, so a
call runs either the old pair or the new one, never half of it, and the process stays (same
pid). A value the agent cannot apply (a ``program_state`` that does not fit the module, LM
settings ``dspy.LM`` refuses) is refused: the agent keeps running what it ran and writes why
on its stderr (``otpy logs CHILD``), naming the predictor and the field; it is not raised,
since otpy restarts a program whose ``on_config`` raises, with the value it could not apply.
``refused`` holds the last refusal (None after a change applied). At setup such a value fails
the start (``setup`` raises, naming it).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import dspy
from dspy.utils.dummies import DummyLM

from ..agent.program import Program, import_target

LM_ENV = "OTPY_DSPY_LM"  # overrides the model when set (a real LM for real runs)
DUMMY = "dummy"  # lm_model's default: DummyLM with the scripted answers
LM_PREFIX = "lm_"
STATE_KEY = "program_state"
DEMO_EXTRA_KEYS = frozenset({"augmented"})  # what DSPy's bootstrapped demos carry besides fields
MAX_DEPTH = 100  # of an output made JSON-able; deeper is str()


class _StateRefused(ValueError):
    """A ``program_state`` that does not fit the module; the message names predictor and field."""


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
        settings = self._lm_settings(config)
        state = config.get(STATE_KEY) or None
        self._lock = threading.Lock()  # one on_config at a time (calls never wait for it)
        try:
            module = self._made_module(state)
        except _StateRefused as exc:
            raise _StateRefused(f"{STATE_KEY} is refused: {exc}") from None
        self.the_script = self._find_script(args, module)
        if not callable(self.the_script):
            self.the_script = _checked_script(self.the_script)
        self.running = Running(module, self._made_lm(settings), settings, state)

    def forward(self, **inputs: Any) -> dict[str, Any]:
        running = self.running  # one read: the old pair or the new one, never half
        with dspy.context(lm=running.lm):
            prediction = running.module(**inputs)
        return outputs_of(prediction, self.target)

    def on_config(self, config: Mapping[str, Any]) -> None:
        with self._lock:
            now = self.running
            settings, state = self._lm_settings(config), config.get(STATE_KEY) or None
            lm, module, refusals = now.lm, now.module, []
            if settings != now.lm_settings:
                try:
                    lm = self._made_lm(settings)
                except Exception as exc:
                    names = ", ".join(LM_PREFIX + name for name in sorted(settings))  # not values: a key may be secret
                    refusals.append(f"the LM settings ({names}) are refused: {type(exc).__name__}: {exc}")
                    settings = now.lm_settings
            if state != now.state:
                try:
                    module = self._made_module(state)
                except Exception as exc:
                    refusals.append(f"{STATE_KEY} is refused: {_why(exc)}")
                    state = now.state
            self.running = Running(module, lm, settings, state)
            self.refused = "; ".join(refusals) or None
        if refusals:
            print(f"otpy.dspy: {self.refused}; the agent keeps running what it ran", file=sys.stderr, flush=True)

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

    def _made_module(self, state: Any) -> dspy.Module:
        module = self._fresh()
        if state:
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
    """``module.load_state(state)`` after checking that ``state`` fits ``module``; raises
    ``_StateRefused`` naming the predictor and the field that do not. Leaves ``module``
    as it was when it raises (each predictor is checked before any is loaded)."""
    if not isinstance(state, Mapping):
        raise _StateRefused(f"it must be a JSON object (a module's dump_state()), not {_kind(state)}")
    predictors = dict(module.named_parameters())
    unknown = [name for name in state if name not in predictors]
    if unknown:
        raise _StateRefused(f"it names predictor(s) {', '.join(map(repr, unknown))} the module does not "
                                f"have (it has {', '.join(map(repr, predictors)) or 'none'})")
    merged = {}
    for name, entry in state.items():
        predictor = predictors[name]
        _check_predictor_state(name, predictor, entry)
        fresh = predictor.dump_state()
        merged[name] = {**fresh, **entry, "lm": None}  # the LM is the agent's
        if "signature" in entry:
            merged[name]["signature"] = {**fresh["signature"], **entry["signature"]}
    for name, entry in merged.items():
        try:
            predictors[name].load_state(entry)
        except Exception as exc:
            raise _StateRefused(f"predictor {name!r}: {type(exc).__name__}: {exc}") from exc


def _check_predictor_state(name: str, predictor: Any, entry: Any) -> None:
    if not isinstance(entry, Mapping):
        raise _StateRefused(f"predictor {name!r}: its state must be an object, not {_kind(entry)}")
    signature = predictor.signature
    fields = list(signature.fields)
    if "demos" in entry:
        demos = entry["demos"]
        if not isinstance(demos, list):
            raise _StateRefused(f"predictor {name!r}: 'demos' must be a list, not {_kind(demos)}")
        for index, demo in enumerate(demos):
            if not isinstance(demo, Mapping):
                raise _StateRefused(f"predictor {name!r}: demos[{index}] must be an object, not {_kind(demo)}")
            for key in demo:
                if key not in signature.fields and key not in DEMO_EXTRA_KEYS:
                    raise _StateRefused(f"predictor {name!r}: demos[{index}] has the field {key!r}, which its "
                                            f"signature does not have ({', '.join(fields)})")
    if "signature" in entry:
        saved = entry["signature"]
        if not isinstance(saved, Mapping):
            raise _StateRefused(f"predictor {name!r}: 'signature' must be an object, not {_kind(saved)}")
        if "instructions" in saved and not isinstance(saved["instructions"], str):
            raise _StateRefused(f"predictor {name!r}: signature.instructions must be a string, "
                                    f"not {_kind(saved['instructions'])}")
        if "fields" not in saved:
            return
        saved_fields = saved["fields"]
        if not isinstance(saved_fields, list) or len(saved_fields) != len(fields):
            count = f"{len(saved_fields)}" if isinstance(saved_fields, list) else _kind(saved_fields)
            raise _StateRefused(f"predictor {name!r}: signature.fields must be a list of {len(fields)} "
                                    f"(one per field: {', '.join(fields)}), not {count}")
        for field, item in zip(fields, saved_fields):
            if not isinstance(item, Mapping) or not all(isinstance(item.get(k), str) for k in ("prefix", "description")):
                raise _StateRefused(f"predictor {name!r}: signature.fields' entry of {field!r} must be "
                                        "an object with the strings 'prefix' and 'description'")


def outputs_of(prediction: Any, target: str = "the module") -> dict[str, Any]:
    """A ``Prediction``'s fields (or a mapping's items) as a JSON-able dict."""
    if callable(to_dict := getattr(prediction, "toDict", None)):
        fields = to_dict()
    elif isinstance(prediction, Mapping):
        fields = prediction
    else:
        raise TypeError(f"{target} returned a {type(prediction).__name__}, not a dspy.Prediction")
    return {str(key): jsonable(value) for key, value in fields.items()}


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON data: plain values as they are, lists and mappings item by item, a
    pydantic model dumped, anything else ``str()``."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth >= MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item, depth + 1) for item in value]
    if callable(dump := getattr(value, "model_dump", None)):
        try:
            return jsonable(dump(mode="json"), depth + 1)
        except Exception:
            pass
    return str(value)


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


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, _StateRefused) else f"{type(exc).__name__}: {exc}"


def _kind(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"
