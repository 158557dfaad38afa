"""A program child's side of the variable registry: its configuration at start, and its changes.

At start (``Worker``, before ``setup``), a child of a node that has a registry (the node says so:
``OTPY_REGISTRY=1`` in its environment) asks it to ``resolve`` the child's configuration along its scope chain
(``OTPY_CHILD_ID``, then ``OTPY_SUPERVISORS``), with the one registry client
(``otpy.variables.client``) over a DEALER of its own (``RegistryDealer``). After READY a
``ConfigWatcher`` thread subscribes to the registry's changes.

Why ``resolve`` fails fast: the child's supervisor waits for its READY, and the registry's
own restart waits behind it in that supervisor's inbox. A child that waited out a timeout for
a registry that died would stall the registry's return by that long. So while it waits it asks
the kernel, every ``LIVENESS_CHECK_S``, whether anything listens on the registry's socket
(``registry_listening``: an AF_UNIX connect refused is definitive); nobody does, it gives up
at once with ``RegistryDown`` (the child reports FAILED, its restart is retried after the
registry's own, from the back of the supervisor's inbox).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any, Callable

import zmq

from ..wire.call_messages import encode_call, error_of, read_reply
from ..wire.errors import CallTimeout
from .config_refused import ConfigRefused
from .program import Program
from ..variables.client import RegistryClient
from ..variables.placement import REGISTRY_ENV, REGISTRY_ID, events_endpoint
from ..wire.protocol import VARIABLE_CHANGED, CallFailed, Reply
from ..host.runtime_dir import agent_endpoint, agent_socket_path
from ..wire.codec import describe

SYNC_TIMEOUT = 30.0  # seconds a ConfigSync waits for on_config to return
BOUND_ENV = "OTPY_BOUND"  # the node's bound variables, SCOPE.NAME, comma-separated (``bound_names``)

RESOLVE_TIMEOUT = 5.0  # per attempt, two attempts, while the registry is listening
LIVENESS_CHECK_S = 0.02


class RegistryDown(RuntimeError):
    """Nothing listens on the registry's socket: it is not running (it died, or restarts)."""


def has_registry() -> str | None:
    """This node's name, when it has a registry and this child is not it; else None.

    The node says it (``AsyncNode``'s ``tree_env``), never a file: a socket file a previous run
    left must not make a node without ``[variables]`` wait for a registry it does not have.
    """
    node = os.environ.get("OTPY_NODE")
    if not node or os.environ.get("OTPY_CHILD_ID") == REGISTRY_ID or os.environ.get(REGISTRY_ENV) != "1":
        return None
    return node


def registry_listening(node: str) -> bool:
    """False only when the kernel says nobody is bound to the registry's socket file (refused,
    or no file); anything else (a full backlog: EAGAIN) counts as listening."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.setblocking(False)
        try:
            probe.connect(str(agent_socket_path(node, REGISTRY_ID)))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True
    return True


def chain() -> list[str]:
    return [s for s in os.environ.get("OTPY_SUPERVISORS", "").split(",") if s]


def resolve(node: str, child_id: str, context: zmq.Context | None = None) -> dict[str, Any]:
    """The child's configuration from the registry; ``RegistryRefused`` (a RuntimeError) naming
    the problems, ``RegistryDown`` as soon as the registry is seen not running."""
    client = RegistryClient(RegistryDealer(node, context or zmq.Context.instance()), RESOLVE_TIMEOUT)
    return client.resolve(child_id, chain())


class RegistryDealer:
    """The worker's caller for ``RegistryClient``: one DEALER of its own per attempt, not a
    ``Caller``: a child starting must not pay for importing the caller's machinery (asyncio:
    ~50 ms), and a resolve needs none of it. Two attempts of ``timeout`` each, as long as the
    registry listens."""

    def __init__(self, node: str, context: zmq.Context) -> None:
        self.node, self.context = node, context

    def call(self, agent: str, inputs: dict[str, Any], timeout: float) -> dict[str, Any]:
        for attempt in (1, 2):
            if not registry_listening(self.node):
                raise RegistryDown("the registry is not running")
            dealer = self.context.socket(zmq.DEALER)
            dealer.linger = 0
            try:
                dealer.connect(agent_endpoint(self.node, agent))
                dealer.send(encode_call(attempt, inputs))
                outputs = _await_reply(dealer, self.node, attempt, timeout)
            finally:
                dealer.close(linger=0)
            if outputs is not None:
                return outputs
        raise CallTimeout(f"no reply from the registry within {timeout} s (twice)", agent=agent)


def _await_reply(dealer: zmq.Socket, node: str, call_id: int, timeout: float) -> dict[str, Any] | None:
    """The registry's outputs for ``call_id``; None when the attempt timed out; ``RegistryDown``
    as soon as nothing listens on its socket any more; a CallError for a failed call."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if dealer.poll(int(min(left, LIVENESS_CHECK_S) * 1000) + 1):
            match read_reply(dealer.recv()):
                case Reply(call_id=found, outputs=outputs) if found == call_id:
                    return outputs
                case CallFailed(call_id=found) as failed if found == call_id:
                    raise error_of(failed, REGISTRY_ID)
        elif not registry_listening(node):
            raise RegistryDown("the registry is not running")
    return None


# --- configuration changes ----------------------------------------------------------------


class ConfigWatcher(threading.Thread):
    """Subscribes to the registry's changes and acts on those that change this child's config.

    An event of a scope in the child's chain makes it resolve again (the registry knows which
    scope a variable belongs to); a different configuration goes to ``on_config`` through the
    call queue (``agent.new_config``), or, for a program without ``on_config``, ends the worker
    for a restart (``restart()``). Each time the SUB (re)connects (at first, after a registry
    restart) it resolves again too, so a change published before the subscription was up is
    not missed for long.

    ``sync()`` is the same, asked by the node after a write (``ConfigSync``): it resolves at
    once and returns only when the program runs the result (``on_config`` returned), so the
    write returns when the knobs arrived, not merely when they were published.
    """

    def __init__(self, program: Program, agent, config: dict[str, Any], node: str,
                 restart: Callable[[], None]) -> None:
        super().__init__(daemon=True, name="otpy-config")
        self.program, self.agent, self.config = program, agent, config
        self.node, self.restart = node, restart
        self.child = os.environ.get("OTPY_CHILD_ID", "")
        self.scopes = {self.child, *chain(), "global"}
        self.on_config = callable(getattr(program, "on_config", None))
        self._lock = threading.Lock()  # one refresh at a time: the events' and the node's syncs
        self._delivered = threading.Condition()
        self.delivered = config  # what the program runs: setup's, then each on_config's that returned
        self.refused: tuple[dict[str, Any], str] | None = None  # the last values on_config refused, and why
        self.restarting = False
        self._wanted = config  # the values the last refresh resolved (a sync waits for them)
        # Set once subscribed and resolved again after that: from then on no change is missed
        # (a hot standby says STANDBY only then: ``agent.standby_wait``).
        self.following = threading.Event()

    @property
    def lock(self) -> threading.Lock:
        """Held while a refresh resolves and hands over a configuration (a standby's promotion
        waits for it: ``agent.standby_wait``)."""
        return self._lock

    def run(self) -> None:
        sub = self.agent.context.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.RECONNECT_IVL, 10)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED)
        sub.connect(events_endpoint())
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            stale = False
            if monitor in ready:
                while _has_message(monitor):
                    monitor.recv_multipart()
                    stale = True
            if sub in ready:
                while _has_message(sub):
                    stale |= self._concerns_us(sub.recv())
            if stale:
                state = self._refresh()
                if monitor in ready and state != "unavailable":
                    self.following.set()
                if state == "restarting":
                    return

    def _concerns_us(self, payload: bytes) -> bool:
        try:
            return VARIABLE_CHANGED.decode(payload).scope in self.scopes
        except Exception:  # an event that cannot be read concerns nobody
            return False

    def sync(self, timeout: float = SYNC_TIMEOUT) -> str:
        """Resolve again now; return once the program runs what the registry holds:
        ``unchanged``, ``applied`` (``on_config`` returned), ``restarting`` (no ``on_config``:
        the worker ends to be restarted with it), ``refused: WHY`` (``on_config`` raised
        ``ConfigRefused``: the program runs its old values) or ``unavailable`` (the registry did
        not answer, or ``on_config`` did not return within ``timeout``)."""
        state = self._refresh()
        if state in ("restarting", "unavailable"):
            return state
        wanted = self._wanted
        with self._delivered:
            if not self._delivered.wait_for(lambda: self.delivered == wanted or self._refused(wanted), timeout):
                return "unavailable"
            if self.delivered != wanted:
                return f"refused: {self.refused[1]}"
        return state

    def check(self, overlay: dict[str, dict[str, Any]]) -> str:
        """Would the program run the configuration it would have with ``overlay`` written (asked by
        the node before it stores a write: ``ConfigCheck``)? ``ok`` (the same configuration as it
        runs, or ``check_config`` returned), ``unchecked`` (the program has no ``check_config``:
        the node does not ask this process again), ``refused: WHY`` (``check_config`` raised
        ``ConfigRefused``, or anything else: a check that fails does not let the write through)
        or ``unavailable`` (the registry did not answer). Nothing changes, here or in the registry."""
        from ..wire.registry_protocol import RegistryRefusal, Resolve

        check_config = getattr(self.program, "check_config", None)
        if not callable(check_config) or getattr(check_config, "__func__", None) is Program.check_config:
            return "unchecked"  # the default accepts everything: no need to resolve
        try:
            client = RegistryClient(RegistryDealer(self.node, self.agent.context), RESOLVE_TIMEOUT)
            reply = client.ask(Resolve(child=self.child, chain=chain(), overlay=overlay))
            if isinstance(reply, RegistryRefusal):
                raise RuntimeError("; ".join(reply.problems) or reply.kind)
            config = reply.config
        except Exception as exc:
            print(f"otpy: could not resolve the values to check: {describe(exc)}", file=sys.stderr, flush=True)
            return "unavailable"
        if config == self.config:
            return "ok"
        try:
            check_config(config)
        except ConfigRefused as exc:
            return f"refused: {str(exc) or type(exc).__name__}"
        except Exception as exc:
            return f"refused: check_config raised {describe(exc)}"
        return "ok"

    def _refused(self, config: dict[str, Any]) -> bool:
        return self.refused is not None and self.refused[0] == config

    def _refresh(self) -> str:
        """Resolve again and act on a difference: ``unchanged``, ``applied`` (handed to
        ``on_config``), ``restarting`` or ``unavailable``."""
        with self._lock:
            if self.restarting:
                return "restarting"
            try:
                config = resolve(self.node, self.child, self.agent.context)
            except Exception as exc:  # the registry is restarting: its reconnection brings us back here
                print(f"otpy: could not resolve the new configuration: {describe(exc)}", file=sys.stderr, flush=True)
                return "unavailable"
            self._wanted = config
            if config == self.config:
                return "unchanged"
            changed = {key for key in config.keys() | self.config.keys() if config.get(key) != self.config.get(key)}
            self.config = config
            if self.on_config:
                self.agent.new_config(config, self._ran)
                return "applied"
            if changed <= bound_names():
                self._ran(config)  # what a bound variable decides, the node carried out before it was stored
                return "unchanged"
            self.restarting = True
            self.restart()
            return "restarting"

    def _ran(self, config: dict[str, Any], refused: str | None = None) -> None:
        """The program runs ``config`` now (``on_config`` returned), or, ``refused``, it refused
        it (``ConfigRefused``) and runs what it ran: the next resolve offers it again."""
        with self._delivered:
            if refused is None:
                self.delivered = config
            else:
                self.refused = (config, refused)
                if self.config == config:
                    self.config = self.delivered
            self._delivered.notify_all()


def bound_names() -> set[str]:
    """The names of the variables the node binds spec fields to (``OTPY_BOUND``: ``SCOPE.NAME``
    list). A change of one of them alone never restarts a program without ``on_config``: the
    node reconciled the tree with it (a bound child already runs its new program) before the
    registry stored and published it."""
    return {item.rpartition(".")[2] for item in os.environ.get(BOUND_ENV, "").split(",") if item}


def _has_message(sock: zmq.Socket) -> bool:
    return bool(sock.poll(0, zmq.POLLIN))
