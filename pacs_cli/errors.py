"""Errors whose message is meant for the user, each carrying its exit code.

The library raises these; only :mod:`pacs_cli.cli` turns them into a message and an exit code.
Exit codes are part of the interface (README, man pages):

* 0 success
* 1 the operation ran but something failed (a non-success DIMSE status, a file not sent)
* 2 usage error (bad option, bad DICOM syntax in an argument, unreadable config)
* 3 could not connect, association rejected or aborted, or timed out
* 130 interrupted (Ctrl-C)
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NETWORK = 3
EXIT_INTERRUPTED = 130


class PacsError(Exception):
    """An expected failure, told to the user in one line."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class OperationFailed(PacsError):
    """The operation ran to the end but part of it failed."""


class UsageError(PacsError):
    """Bad input from the command line, the environment or the config file."""

    exit_code = EXIT_USAGE


class NetworkError(PacsError):
    """Could not connect, associate, or keep the association."""

    exit_code = EXIT_NETWORK


class ConnectionFailed(NetworkError):
    """The TCP connection (or TLS handshake) to the peer failed."""


class AssociationRejected(NetworkError):
    """The peer answered A-ASSOCIATE-RJ; ``transient`` when PS3.8 result 2 says asking again may work."""

    def __init__(self, message: str, hint: str | None = None, transient: bool = False):
        super().__init__(message, hint)
        self.transient = transient


class AssociationAborted(NetworkError):
    """The peer or the network ended the association with an A-ABORT."""


class NoAcceptableContexts(AssociationAborted):
    """The peer accepted the association but none of the proposed presentation contexts."""


class NetworkTimeout(NetworkError):
    """The peer did not answer within a timeout."""
