"""The errors of a node's start, apart from the node so that its services (the control socket)
can raise them without importing the node."""


class NodeStartError(RuntimeError):
    """The tree could not start: the message names the child and the reason. Nothing is left running."""


class NodeAlreadyRunning(NodeStartError):
    """A node of this name already runs in this runtime folder; it was not touched."""
