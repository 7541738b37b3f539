"""The archive: where received instances go (``layout``), and the SQLite index of them (``index``).

Used by ``pacs storescp`` (:meth:`Archive.store_file`), ``pacs index`` and, later, the Q/R SCP.
Never imports click or rich: it raises :mod:`pacs_cli.archive.errors`, and callers present them.

    archive = Archive.open(Path("archive"), on_duplicate="reject")
    tempfile.tempdir = str(archive.staging_dir)   # pynetdicom's chunked receive lands there
    outcome = archive.store_file(staged, calling_aet, sop_class_uid, sop_instance_uid)
"""

import importlib

from pacs_cli.archive import errors
from pacs_cli.archive.errors import (
    ArchiveError, ArchiveUnavailable, DuplicateRejected, InvalidInstance, NotFound, OutOfResources, StoreError,
)

# Loaded on first use: importing any submodule runs this file, and `pacs find`, which reads only the
# matching rules and the index, need not load the store, its layout and the header reader.
_LAZY = {
    **dict.fromkeys(["FLAT", "HIERARCHICAL", "parse_template", "safe_component"], "layout"),
    **dict.fromkeys(["Archive", "DuplicatePolicy", "Problem", "Removal", "Repair", "StoreOutcome", "StoreRequest",
                     "VerifyReport"],
                    "store"),
}

__all__ = [
    "Archive", "DuplicatePolicy", "StoreOutcome", "StoreRequest", "Removal", "Repair", "Problem", "VerifyReport",
    "errors", "ArchiveError", "ArchiveUnavailable", "DuplicateRejected", "InvalidInstance", "NotFound",
    "OutOfResources", "StoreError", "FLAT", "HIERARCHICAL", "parse_template", "safe_component",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
