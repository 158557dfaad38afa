"""Errors of agent calls. Every one is a ``CallError``; each says who raises it and what to do.

>>> issubclass(CallTimeout, CallError) and issubclass(RemoteError, CallError)
True
"""

from __future__ import annotations


class CallError(Exception):
    """Base of every error a call to an agent can raise (``Caller.call``, ``acall``, ``submit``)."""

    retryable = False  # ``retries=`` re-sends only errors where this is True

    def __init__(self, message: str, *, agent: str = "") -> None:
        super().__init__(message)
        self.agent = agent


class NoSuchAgent(CallError):
    """Raised by the caller at once: the node has no agent socket for this id.

    No program child with this id has bound its socket in this node's runtime folder (a
    typo, a ``command`` child, or the node is not running). Check the id against
    ``node.which_children``. A *restarting* agent is not "no such agent": its socket stays.
    """


class CallTimeout(CallError):
    """Raised by the caller: no reply within the call's ``timeout``.

    The agent is slow, busy with earlier calls, or restarting and not back in time. The
    call may still run on the agent; its late reply is dropped. Raise the timeout, add
    concurrency to the agent, or retry if the call is idempotent.
    """

    retryable = True


class AgentCrashed(CallError):
    """Raised by the caller: the connection to the agent broke while the call was in flight.

    The agent process died (crash, SIGKILL, or shutdown) before replying; the call may or
    may not have run. Its supervisor restarts it; retry if the call is idempotent.
    """

    retryable = True


class Overloaded(CallError):
    """Raised by the caller when the agent answers that its queue is full (``max_queue``), or
    by the caller itself, at once: ~1000 calls already wait for the agent while it is down (or
    not reading), or no socket can be opened for the call (out of file descriptors: EMFILE).

    Nothing ran (nothing was sent). Back off and retry, raise the agent's ``max_queue`` or
    ``concurrency``, run more agents, or raise the caller's ``ulimit -n``.
    """

    retryable = True


class RemoteError(CallError):
    """Raised by the caller: the agent's ``forward`` raised. The agent keeps serving.

    ``error_type``, ``message`` and ``remote_traceback`` are the remote exception's. Fix the
    program or its inputs; a retry usually fails the same way.
    """

    def __init__(self, message: str, *, agent: str = "", error_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(f"{error_type}: {message}" if error_type else message, agent=agent)
        self.error_type = error_type
        self.remote_message = message
        self.remote_traceback = remote_traceback


class Unencodable(CallError):
    """Raised by the caller: inputs (caller side, at once) or outputs (agent side) cannot be
    encoded as msgpack. The message names the field. Send and return plain data: str, int,
    float, bool, None, bytes, lists, dicts, msgspec Structs, dataclasses, datetimes.
    """


class BadRequest(CallError):
    """Raised by the caller when the agent could not decode the call message.

    A caller and an agent of different otpy versions; upgrade them together.
    """


class NodeUnreachable(CallError):
    """Raised by the caller of ``AGENT@NODE``: the link to the other node broke while the call
    was in flight (the node stopped, its host went away, the network failed), or the node
    refused this client's key. The call may have run there: it is never sent again by itself
    (``retries=`` does not resend it either). Check the node (``otpy status --endpoint``), the
    network and the keys; retry by hand if the call is idempotent.
    """
