"""The worker: what runs inside a program child, from ``setup`` to READY to ``teardown``.

A child forked by the zygote becomes a worker (``bootstrap``), then runs
``Worker(spec, warm).run()``; it never returns. It speaks to the node through the notify pipe
(``notify``: READY, FAILED, EXIT shutdown) and its exit status.

Before READY the worker binds the agent's ROUTER socket (``call_socket``) at
``agent_endpoint(node, child_id)``; its ``CallServer`` serves calls between READY and the end
(``Shutdown``: SIGTERM, or a restart for new values). Then the agent drains, the program's
``teardown`` runs and the process dies by SIGTERM.

Configuration: when the node has a variable registry (``OTPY_REGISTRY=1``) and this child is
not the registry, the worker asks it to ``resolve`` the child's configuration along its scope
chain (``OTPY_CHILD_ID``, then ``OTPY_SUPERVISORS``) and passes it to ``setup``. After READY
a ``ConfigWatcher`` thread subscribes to the registry's changes. When one changes the child's
resolved configuration, a program with ``on_config(config)`` gets it, run by a call thread in
turn with the calls (``CallServer.new_config``); a program without it drains like on SIGTERM,
tears down and exits with status ``EXIT_CONFIG_CHANGED`` (75), so that its supervisor restarts
it with the new values (a ``crashed`` exit: it counts toward restart intensity).

A hot standby (``standby=True``) runs the same start, its socket bound at a spare path, then
waits to be handed the name (``standby_wait``) before it says READY.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from typing import Any, Callable, NoReturn

import zmq

from .call_server import CallServer
from .call_socket import WarmSocket, bound_router, new_context, rebind
from .notify import EXIT_CONFIG_CHANGED, describe_long, die_by, exit_now, exit_shutdown, fail, notify
from .one_call import limits
from .program import NodeCaller, Program, instantiate
from .registry_link import ConfigWatcher, has_registry, resolve
from .shutdown import Shutdown
from .standby_wait import StandbyWait
from ..host.prctl import set_title
from ..specs.model import ChildSpec

__all__ = ["Worker", "exit_shutdown", "fail"]  # exit_shutdown: a program's clean exit (docs/supervision.md)


class Worker:
    """One program child's life, and what lives as long as its process: the node it serves
    (``OTPY_NODE``; none when run by hand), its one ZeroMQ context (a spare's, with its warm
    socket) and the node's caller its program's ``call`` uses. Its ``Shutdown`` is made once
    setup is done (a program may set its own SIGTERM disposition in setup)."""

    def __init__(self, spec: ChildSpec, warm: WarmSocket | None = None, *, standby: bool = False,
                 stale: Callable[[], str] = lambda: "") -> None:
        self.spec = spec
        self.warm = warm
        self.standby = standby  # a hot standby: set up, then wait to be handed the name (see the module)
        self.stale = stale  # why the program's sources changed on disk since the fork ("": they did not)
        self.node = os.environ.get("OTPY_NODE") or None
        self.registry = has_registry()  # this node, if it has a registry and we are not it
        self.node_caller = NodeCaller(self.node) if self.node else None
        self._context: zmq.Context | None = warm.context if warm is not None else None
        self.born_ns = time.time_ns()  # before setup: a standby's sources edited after it may be stale

    def run(self) -> NoReturn:
        """Set the program up, bind its call socket, report READY, serve calls until SIGTERM,
        tear down, die by SIGTERM."""
        try:
            if self.standby:
                self._warm_up()
            program, config = self._start()
            shutdown = Shutdown()
            shutdown.catch_sigterm()
            if self.standby:
                server = self._wait_as_standby(program, config, shutdown)
            else:
                server = self._bind(program, shutdown)
            notify("READY")
            if server is None:
                shutdown.wait()  # not run by a node: nobody can call it
            else:
                server.add_thread()  # after READY, while the first caller is on its way
                if config and not self.standby:
                    watcher = ConfigWatcher(program, server, config, self.registry, shutdown.request_config_restart)
                    server.watcher = watcher
                    watcher.start()
                server.serve()
            _teardown(program)
            if shutdown.for_new_config:
                exit_now(EXIT_CONFIG_CHANGED)
            die_by(signal.SIGTERM)
        except BaseException:
            traceback.print_exc()
            exit_now(1)

    def _warm_up(self) -> None:
        """A standby's title (``ps``: ``otpy: NODE/ID standby``, from before its setup) and its
        call socket, bound at its spare path (a spare's already is)."""
        if self.node is None:
            fail("a hot standby runs under a node (OTPY_NODE is not set)")
        set_title(f"otpy: {self.node}/{self.spec.id} standby", self.spec.id)
        if self.warm is None:
            try:
                self.warm = WarmSocket(self.node)
            except Exception as exc:
                fail(f"cannot bind the standby's call socket: {describe_long(exc)}")
            self._context = self.warm.context

    def _wait_as_standby(self, program: Program, config: dict[str, Any], shutdown: Shutdown) -> CallServer:
        """Set up: wait (``agent.standby_wait``) until handed the child's name; then its server."""
        spec, warm = self.spec, self.warm
        try:
            concurrency, max_queue = limits(program, spec.args)
        except ValueError as exc:
            fail(str(exc))
        node = self.node
        server = CallServer(program, warm.context, warm.router, shutdown, concurrency=concurrency,
                            max_queue=max_queue, max_rss=spec.max_rss,
                            rebind=lambda: rebind(warm.router, node, spec.id))
        wait = StandbyWait(program, server, warm, shutdown, node=node, child_id=spec.id, stale=self.stale,
                           born_ns=self.born_ns)
        if config and self.registry is not None:
            wait.watch(config, self.registry)
        wait.until_promoted()
        return server

    def context(self) -> zmq.Context:
        """The child's one context: the spare's, or made on first use (by the registry's
        resolve before setup, or by the bind), then shared."""
        if self._context is None:
            self._context = new_context()
        return self._context

    def _start(self) -> tuple[Program, dict[str, Any]]:
        """The program, set up with its resolved configuration; on any error report FAILED, exit 1."""
        spec = self.spec
        try:
            program = instantiate(spec.program)
        except BaseException as exc:
            fail(f"cannot instantiate {spec.program!r}: {describe_long(exc)}")
        if self.node_caller is not None:
            self.node_caller.hand_to(program)
        config = self._resolve_config()
        try:
            program.setup(spec.args, config=config)
        except BaseException as exc:
            fail(f"setup raised {describe_long(exc)}")
        return program, config

    def _resolve_config(self) -> dict[str, Any]:
        if self.registry is None:
            return {}
        try:
            return resolve(self.registry, self.spec.id, self.context())
        except BaseException as exc:
            fail(f"cannot resolve the configuration of {self.spec.id!r} from the registry: {describe_long(exc)}")

    def _bind(self, program: Program, shutdown: Shutdown) -> CallServer | None:
        """The agent's call server, its socket bound before READY so that a call right after
        READY works; None when not run by a node."""
        node, spec = self.node, self.spec
        if node is None:
            return None
        try:
            concurrency, max_queue = limits(program, spec.args)
        except ValueError as exc:
            fail(str(exc))
        try:
            router = bound_router(self.context(), node, spec.id, self.warm)
            return CallServer(program, self.context(), router, shutdown, concurrency=concurrency,
                              max_queue=max_queue, max_rss=spec.max_rss,
                              rebind=lambda: rebind(router, node, spec.id))
        except Exception as exc:
            fail(f"cannot bind the call socket: {describe_long(exc)}")


def _teardown(program: Program) -> None:
    try:
        program.teardown()
    except BaseException:
        traceback.print_exc()
        exit_now(1)
