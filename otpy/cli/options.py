"""The options, argument types and name checks that several ``otpy`` commands share, and the
shell completion of node names and child ids (click's ``shell_complete``).

``node_options`` is how every command that talks to a node's control socket names it: ``--node
NAME`` (a node on this host), or ``--endpoint tcp://HOST:PORT --keys DIR`` (a node's CURVE TCP
endpoint); the command gets one ``node_name`` argument, a name, None or an ``exits.Remote``."""

from __future__ import annotations

import functools
import math
import re
import signal

import click
from click.shell_completion import CompletionItem

from .exits import remote_or_exit

from ..specs.model import name_problem
from ..specs.values import INT64, MAX_SECONDS

COMPLETION_TIMEOUT = 0.5  # seconds a completion waits for a node: a shell must not hang on a Tab


def node_name_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A node name passes the name rule before any path is built from it."""
    return checked_name(value, "node name")


def checked_name(value: str | None, what: str) -> str | None:
    """``value`` if it passes the name rule (``specs.model.name_problem``); else an input error (exit 2)."""
    if value is not None and (problem := name_problem(value, what)):
        raise click.BadParameter(problem)
    return value


def complete_node_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The names of this user's live nodes (their locks are held); nothing when none, silently."""
    try:
        from ..host.runtime_dir import running_nodes
        from ..wire.client import node_alive
        return [CompletionItem(name) for name in running_nodes() if name.startswith(incomplete) and node_alive(name)]
    except Exception:  # a completion never prints a traceback into the shell
        return []


def complete_child_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The ids in the tree of the node ``--node`` names (or the only one running), from its status;
    nothing, silently, when no node answers within ``COMPLETION_TIMEOUT``."""
    try:
        from ..wire.client import Client, pick_node
        endpoint, keys = ctx.params.get("endpoint"), ctx.params.get("keys")
        client = (Client(endpoint, timeout=COMPLETION_TIMEOUT, endpoint=endpoint, keys=keys) if endpoint and keys
                  else Client(pick_node(ctx.params.get("node_name")), timeout=COMPLETION_TIMEOUT))
        with client:
            tree = client.status().tree
    except Exception:
        return []
    ids, stack = [], list(tree.children or ())
    while stack:
        entry = stack.pop(0)
        ids.append(entry.id)
        stack.extend(entry.children or ())
    return [CompletionItem(i) for i in ids if i.startswith(incomplete)]


class _Ranged:
    """A click range whose refusal names the field as the rest of otpy does: ``retries: got -3;
    expected an integer >= 0`` (click's usage error, exit 2). nan and inf are refused too."""

    expected = "a number"
    bound_note = ""  # what the upper bound is, in words: " (ten years)"

    def convert(self, value, param, ctx):
        try:
            converted = super().convert(value, param, ctx)
        except click.BadParameter:
            converted = None
        if converted is None or not math.isfinite(converted):  # nan passes every comparison; inf is no duration
            field = param.name if param is not None and param.name else "value"
            bounded = self.min is not None or self.max is not None
            within = f" in the range {self._describe_range()}{self.bound_note}" if bounded else " (finite)"
            self.fail(f"{field}: got {value}; expected {self.expected}{within}", param, ctx)
        return converted


class Count(_Ranged, click.IntRange):
    """An integer option with a lower bound: ``Count(0)`` for ``--retries``. Every one is at
    most the largest signed 64-bit integer (``specs.values.INT64``): what goes on the wire is
    msgpack's, and a version is PostgreSQL's BIGINT, so a larger one is refused here, naming
    the option (exit 2), not by the encoder once the command began."""

    expected = "an integer"

    def __init__(self, min: int = 0) -> None:
        super().__init__(min=min)

    def convert(self, value, param, ctx):
        converted = super().convert(value, param, ctx)
        if converted > INT64[1]:
            field = param.name if param is not None and param.name else "value"
            self.fail(f"{field}: got {value}; expected an integer in the range {self._describe_range()} "
                      f"and at most {INT64[1]} (64 bits)", param, ctx)
        return converted


class Number(_Ranged, click.FloatRange):
    """A finite number option with an optional lower bound: ``Number(min=0)`` for a score margin."""

    def __init__(self, min: float | None = None, min_open: bool = False) -> None:
        super().__init__(min=min, min_open=min_open)


class Seconds(_Ranged, click.FloatRange):
    """A duration option: a number of seconds above 0 (``positive``) or at least 0, and at most
    ten years as every duration of a topology (``specs.values.MAX_SECONDS``): what is longer is
    a typo, and would overflow the clocks it reaches (zmq's int32 milliseconds clamp at ~24.8
    days in ``wire.client``). ``expected`` names another unit (``a number of GiB``)."""

    def __init__(self, positive: bool = True, expected: str = "a number of seconds") -> None:
        super().__init__(min=0, min_open=positive, max=MAX_SECONDS)
        self.expected = expected
        self.bound_note = " (ten years)" if expected == "a number of seconds" else ""


class SignalParam(click.ParamType):
    """A signal as ``kill`` takes it: a name (``TERM``, ``SIGTERM``, ``hup``) or a number of this system."""

    name = "SIG"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            number = value
        elif value.strip().isdigit():
            number = int(value)
        else:
            text = value.strip().upper()
            try:
                number = int(signal.Signals[text if text.startswith("SIG") else f"SIG{text}"])
            except KeyError:
                self.fail(f"{value!r} is not a signal: give a name (TERM, HUP, USR1, KILL, ...) or a number", param, ctx)
        if number not in {int(s) for s in signal.valid_signals()}:
            self.fail(f"{value!r} is not a signal number of this system (1-{int(signal.SIGRTMAX)})", param, ctx)
        return number

    def shell_complete(self, ctx, param, incomplete: str) -> list[CompletionItem]:
        names = sorted(s.name.removeprefix("SIG") for s in signal.Signals if not s.name.startswith("SIG_"))
        return [CompletionItem(n) for n in names if n.startswith(incomplete.upper().removeprefix("SIG"))]


_ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})")


def endpoint_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``tcp://HOST:PORT`` (a name, an IPv4 address or ``[IPv6]``; PORT 1-65535), else a usage
    error (exit 2) naming the option: never another transport, never plaintext."""
    if value is None:
        return None
    match = _ENDPOINT.fullmatch(value)
    if match is None or not 1 <= int(match[3]) <= 65535:
        raise click.BadParameter(f"{value!r}; expected tcp://HOST:PORT, a node's control_tcp (served with CURVE "
                                 "only: there is no plaintext or other transport)")
    return value


NODE_OPTION = click.option("--node", "node_name", metavar="NAME", callback=node_name_option,
                           shell_complete=complete_node_names,
                           help="The node to talk to (may be left out when only one runs).")
SUP_OPTION = click.option("--sup", metavar="SUP", shell_complete=complete_child_ids,
                          help="The supervisor of the child (default: found by id).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as one JSON document on stdout (errors stay on stderr).")


def child_id_argument(required: bool = True, metavar: str = "ID"):
    """The ``ID`` argument of the commands on one child, completed from the node's tree."""
    return click.argument("child_id", metavar=metavar, required=required, shell_complete=complete_child_ids)


ENDPOINT_OPTION = click.option("--endpoint", metavar="tcp://HOST:PORT", callback=endpoint_option,
                               help="Reach the node over its CURVE TCP control endpoint ([node] control_tcp) "
                                    "instead of by name on this host; needs --keys.")
KEYS_OPTION = click.option("--keys", metavar="DIR", envvar="OTPY_KEYS",
                           help="With --endpoint: a folder with the node's server.key and this client's "
                                "*.key_secret (`otpy keys new DIR`); default $OTPY_KEYS.")


def node_options(command):
    """``--node``, ``--endpoint`` and ``--keys`` on ``command``, which receives them as one
    ``node_name``: a local node's name (or None), or an ``exits.Remote`` (``exits.remote_or_exit``
    checks the pair, exit 2). Put it where ``NODE_OPTION`` was."""

    @functools.wraps(command)
    def with_target(*args, node_name=None, endpoint=None, keys=None, **kwargs):
        ctx = click.get_current_context()
        keys_given = ctx.get_parameter_source("keys") == click.core.ParameterSource.COMMANDLINE
        return command(*args, node_name=remote_or_exit(node_name, endpoint, keys, keys_given), **kwargs)

    return NODE_OPTION(ENDPOINT_OPTION(KEYS_OPTION(with_target)))
