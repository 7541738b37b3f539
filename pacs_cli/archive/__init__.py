"""The archive: where received instances go (``layout``), and the SQLite index of them (``index``).

Used by ``pacs storescp`` (:meth:`Archive.store_file`), ``pacs index`` and, later, the Q/R SCP.
Never imports click or rich: it raises :mod:`pacs_cli.archive.errors`, and callers present them.

    archive = Archive.open(Path("archive"), on_duplicate="reject")
    tempfile.tempdir = str(archive.staging_dir)   # pynetdicom's chunked receive lands there
    outcome = archive.store_file(staged, calling_aet, sop_class_uid, sop_instance_uid)
"""

from pacs_cli.archive import errors
from pacs_cli.archive.errors import (
    ArchiveError, ArchiveUnavailable, DuplicateRejected, InvalidInstance, NotFound, OutOfResources, StoreError,
)
from pacs_cli.archive.layout import FLAT, HIERARCHICAL, parse_template, safe_component
from pacs_cli.archive.store import (
    Archive, DuplicatePolicy, Problem, Removal, Repair, StoreOutcome, VerifyReport,
)

__all__ = [
    "Archive", "DuplicatePolicy", "StoreOutcome", "Removal", "Repair", "Problem", "VerifyReport",
    "errors", "ArchiveError", "ArchiveUnavailable", "DuplicateRejected", "InvalidInstance", "NotFound",
    "OutOfResources", "StoreError", "FLAT", "HIERARCHICAL", "parse_template", "safe_component",
]
