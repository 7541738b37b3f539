"""Log levels in DCMTK's manner: warnings by default, ``-v`` info, ``-vv`` debug, ``-q`` errors only.

Lines go to stderr as ``W: message``, like DCMTK's tools. pynetdicom's own logger stays silent
below ``-vv``: its errors repeat what our one-line message already says.
"""

import logging
import sys
import threading

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
    threading.excepthook = _thread_exception_logger(verbose >= 2)


def _thread_exception_logger(with_traceback: bool):
    """pynetdicom's threads die on malformed input with a traceback on stderr; make it one line."""

    def hook(args):
        if args.exc_type is SystemExit:
            return
        logging.getLogger("pacs_cli").error(
            "%s in thread %s: %s", args.exc_type.__name__, getattr(args.thread, "name", "?"), args.exc_value,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback) if with_traceback else None)

    return hook
