"""The archive's errors. Each is a :class:`~pacs_cli.errors.PacsError` (exit 1) with a one-line message.

``store_file`` raises only the three :class:`StoreError` subclasses, and whenever it raises, the
staged file is gone and nothing was left behind: no file under its final name, no index row.
The storage SCP turns them into C-STORE statuses (PS3.4 B.2.3); see the suggestions on each class.
"""

from __future__ import annotations

from pacs_cli.errors import PacsError


class ArchiveError(PacsError):
    """Something the archive could not do."""


class ArchiveUnavailable(ArchiveError):
    """The archive directory or its index cannot be created or opened."""


class NotFound(ArchiveError):
    """No patient, study, series or instance has this UID in the index."""


class StoreError(ArchiveError):
    """``store_file`` refused or failed; ``reason`` is a short phrase fit for an ErrorComment."""

    def __init__(self, reason: str, sop_instance_uid: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.sop_instance_uid = sop_instance_uid


class DuplicateRejected(StoreError):
    """The instance is already stored and the policy is ``reject``; the first copy is kept.

    Suggested status: 0x0111 Duplicate SOP Instance (PS3.7 Annex C general status).
    """

    def __init__(self, reason: str, sop_instance_uid: str = "", existing=None):
        super().__init__(reason, sop_instance_uid)
        self.existing = existing


class InvalidInstance(StoreError):
    """The dataset cannot be archived as it is: unreadable header, missing or mismatched UIDs.

    Suggested status: 0xA900 when the dataset's SOP Class/Instance UID differs from the command's
    (``mismatch`` is True), else 0xC000-0xCFFF "cannot understand" (pynetdicom's apps use 0xC210).
    """

    def __init__(self, reason: str, sop_instance_uid: str = "", mismatch: bool = False):
        super().__init__(reason, sop_instance_uid)
        self.mismatch = mismatch


class OutOfResources(StoreError):
    """Writing, renaming, fsyncing or indexing failed (ENOSPC, EACCES, EIO, a locked or full index).

    Suggested status: 0xA700 Refused: Out of Resources (PS3.4 B.2.3); the sender may retry later.
    """
