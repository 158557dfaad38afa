"""The agent's call socket (a ZeroMQ ROUTER at ``agent_endpoint(node, child_id)``): made
ahead of time in a spare, or when the worker binds.

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

_warm: tuple[zmq.Context, zmq.Socket, Path] | None = None  # a spare's, until bound_router takes it


def spare_socket_path(node: str, pid: int) -> Path:
    return agents_dir(node) / f".spare-{pid}.sock"


def warm_up(node: str) -> None:
    """In a spare: the ZeroMQ context and a ROUTER listening at the spare's own path (the
    zygote made the node's ``agents`` folder once, before any spare)."""
    global _warm
    context, router = _new_router()
    path = spare_socket_path(node, os.getpid())
    router.bind(f"ipc://{path}")
    os.chmod(path, SOCKET_MODE)  # the rename keeps it: the child's socket is private from the start
    _warm = (context, router, path)


def forget_warm() -> None:
    """A spare that exits unused removes its socket file."""
    if _warm is not None:
        _warm[2].unlink(missing_ok=True)


def bound_router(node: str, child_id: str) -> tuple[zmq.Context, zmq.Socket]:
    """A ROUTER serving ``agent_endpoint(node, child_id)``: the spare's, renamed into place,
    or a new one bound there."""
    global _warm
    if _warm is not None:
        context, router, path = _warm
        _warm = None
        os.rename(path, agent_socket_path(node, child_id))
        return context, router
    make_agents_dir(node)
    context, router = _new_router()
    router.bind(agent_endpoint(node, child_id))  # libzmq unlinks the file a dead incarnation left
    os.chmod(agent_socket_path(node, child_id), SOCKET_MODE)
    return context, router


_context: zmq.Context | None = None  # a child's one context when it had no spare's


def context() -> zmq.Context:
    """The child's one ZeroMQ context (one I/O thread): the spare's, or made on first use
    (by the registry's resolve before READY, or by the bind), then shared."""
    global _context
    if _warm is not None:
        return _warm[0]
    if _context is None:
        _context = zmq.Context(io_threads=1)
    return _context


def rebind(router: zmq.Socket, node: str, child_id: str) -> None:
    """Bind ``router`` at the child's address again (after its connection cap unbound it)."""
    router.bind(agent_endpoint(node, child_id))
    os.chmod(agent_socket_path(node, child_id), SOCKET_MODE)


def _new_router() -> tuple[zmq.Context, zmq.Socket]:
    context_ = context()
    router = context_.socket(zmq.ROUTER)
    router.linger = 0
    router.setsockopt(zmq.MAXMSGSIZE, MAX_CALL_BYTES)  # a bigger frame is dropped, its sender disconnected
    prepare(router)  # before the bind: a peer that never completes its handshake is dropped
    return context_, router
