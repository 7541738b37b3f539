"""DIMSE status codes in words (PS3.7 Annex C and the service classes of PS3.4).

pynetdicom's status tables are imported when a status is first put into words: ``pacs find --db``
imports this module and needs no network, and importing any part of pynetdicom imports all of it.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = (0xFF00, 0xFF01)

# Per service, pynetdicom's table of the statuses PS3.4 defines for it; PS3.7's general ones otherwise.
TABLES = {
    "echo": "VERIFICATION_SERVICE_CLASS_STATUS",
    "store": "STORAGE_SERVICE_CLASS_STATUS",
    "find": "QR_FIND_SERVICE_CLASS_STATUS",
    "move": "QR_MOVE_SERVICE_CLASS_STATUS",
    "get": "QR_GET_SERVICE_CLASS_STATUS",
    "worklist": "MODALITY_WORKLIST_SERVICE_CLASS_STATUS",
    "mpps": "PROCEDURE_STEP_STATUS",
}


def category(code: int) -> str:
    """'Success', 'Warning', 'Failure', 'Cancel', 'Pending' or 'Unknown'."""
    from pynetdicom.status import code_to_category

    return code_to_category(code)


def describe(code: int, service: str = "echo") -> str:
    """``0xA700 Failure: Refused: Out of Resources`` - what a user would look up in PS3.4."""
    from pynetdicom import status as tables

    table = getattr(tables, TABLES.get(service, "GENERAL_STATUS"))
    kind, meaning = table.get(code, (category(code), ""))
    if code == SUCCESS:
        return "0x0000 Success"
    text = f"0x{code:04X} {kind}"
    return f"{text}: {meaning}" if meaning else text


def is_success(code: int) -> bool:
    return code == SUCCESS


def status_dataset(code: int, comment: str | None = None) -> Dataset:
    """A response status, with an ErrorComment (0000,0902) when there is something to say."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO: at most 64 characters
    return ds
