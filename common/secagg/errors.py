"""Exceptions raised by the secure-aggregation protocol."""

NO_KEY_EPOCH = "holds no key epoch"
"""Part of the refusal a node sends when asked for a steady-round masked input without keys
(it restarted); the server then sets up a new key epoch in the next round."""


class SecAggRefusal(Exception):
    """A client refuses a server request that breaks the protocol or the client's policy.

    Parameters
    ----------
    reason : str
        What was wrong with the request, naming the offending values.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SecAggAbort(Exception):
    """The server cannot finish the round without risking a wrong or too small sum.

    Parameters
    ----------
    reason : str
        Why the round stopped (too few survivors, too few shares, a secret that failed its check).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
