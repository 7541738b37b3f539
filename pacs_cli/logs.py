"""Log levels in DCMTK's manner: warnings by default, ``-v`` info, ``-vv`` debug, ``-q`` errors only.

Lines go to stderr as ``W: message``, like DCMTK's tools. pynetdicom's own logger stays silent
below ``-vv``: its errors repeat what our one-line message already says.
"""

import logging
import sys

PREFIXES = {"DEBUG": "D", "INFO": "I", "WARNING": "W", "ERROR": "E", "CRITICAL": "F"}


class _DcmtkFormatter(logging.Formatter):
    def format(self, record):
        record.prefix = PREFIXES.get(record.levelname, "?")
        return super().format(record)


def level_for(verbose: int, quiet: bool) -> int:
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def configure(verbose: int, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_DcmtkFormatter("%(prefix)s: %(message)s"))
    root = logging.getLogger("pacs_cli")
    root.handlers[:] = [handler]
    root.setLevel(level_for(verbose, quiet))
    root.propagate = False
    library = logging.getLogger("pynetdicom")
    library.handlers[:] = [handler] if verbose >= 2 else [logging.NullHandler()]
    library.setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL + 1)
    library.propagate = False
