"""The agent's call socket (a ZeroMQ ROUTER at ``agent_endpoint(node, child_id)``): made
ahead of time in a spare (``WarmSocket``), or when the worker binds (``bound_router``).

A spare does not know its child id yet, so it binds its ROUTER at a name of its own,
``agents/.spare-<pid>.sock``; once it has its request, ``bound_router`` renames that socket
file to the child's path. A rename replaces a stale file atomically: a caller connecting
meanwhile finds either the old socket or the new one, never no file (libzmq's own bind
unlinks first, then binds). Without a spare, the ROUTER is made and bound there and then.
Either way the socket file is chmod 0600 right after its bind, whatever the umask.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq

from ..wire.connections import prepare
from ..wire.codec import MAX_CALL_BYTES
from ..host.runtime_dir import agent_endpoint, agent_socket_path, agents_dir, make_agents_dir

SOCKET_MODE = 0o600  # whatever the umask: only this user may call an agent (its folder is 0700 too)


def spare_socket_path(node: str, pid: int) -> Path:
    return agents_dir(node) / f".spare-{pid}.sock"


class WarmSocket:
    """A spare's ZeroMQ context and its ROUTER, listening at the spare's own path (the zygote
    made the node's ``agents`` folder once, before any spare): the child it becomes takes
    both (``bound_router``); a spare that exits unused ``forget``s the socket file."""

    def __init__(self, node: str) -> None:
        self.context = zmq.Context(io_threads=1)
        self.router = _new_router(self.context)
        self.path = spare_socket_path(node, os.getpid())
        self.router.bind(f"ipc://{self.path}")
        os.chmod(self.path, SOCKET_MODE)  # the rename keeps it: the child's socket is private from the start

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def new_context() -> zmq.Context:
    """A child's one ZeroMQ context (one I/O thread), when it has no spare's."""
    return zmq.Context(io_threads=1)


def bound_router(context: zmq.Context, node: str, child_id: str, warm: WarmSocket | None = None) -> zmq.Socket:
    """A ROUTER serving ``agent_endpoint(node, child_id)``: the spare's (``warm``, whose
    context is ``context``), renamed into place, or a new one of ``context`` bound there."""
    if warm is not None:
        os.rename(warm.path, agent_socket_path(node, child_id))
        return warm.router
    make_agents_dir(node)
    router = _new_router(context)
    router.bind(agent_endpoint(node, child_id))  # libzmq unlinks the file a dead incarnation left
    os.chmod(agent_socket_path(node, child_id), SOCKET_MODE)
    return router


def rebind(router: zmq.Socket, node: str, child_id: str) -> None:
    """Bind ``router`` at the child's address again (after its connection cap unbound it)."""
    router.bind(agent_endpoint(node, child_id))
    os.chmod(agent_socket_path(node, child_id), SOCKET_MODE)


def _new_router(context: zmq.Context) -> zmq.Socket:
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.setsockopt(zmq.MAXMSGSIZE, MAX_CALL_BYTES)  # a bigger frame is dropped, its sender disconnected
    prepare(router)  # before the bind: a peer that never completes its handshake is dropped
    return router
