"""One exception type for every problem a user can fix: the CLI prints its message as one line."""


class EtarecError(Exception):
    """A user-facing error: the message names the problem and the fix, on one line."""
