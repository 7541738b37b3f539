"""The Modality Performed Procedure Step state machine (PS3.4 F.7.2), without network or database.

::

    N-CREATE (status IN PROGRESS) --> IN PROGRESS --N-SET--> IN PROGRESS (progress update)
                                                  --N-SET--> COMPLETED     (final)
                                                  --N-SET--> DISCONTINUED  (final)

The checks raise :class:`Refusal`, which carries the DIMSE status the SCP answers with:

======  ======================================  =========================================================
0x0106  Invalid Attribute Value                 N-CREATE with a status other than IN PROGRESS
                                                (F.7.2.1.3); N-SET to an unknown status
0x0110  Processing Failure, Error ID 0xA710     N-SET of a step already COMPLETED or DISCONTINUED
                                                (F.7.2.2.3, Table F.7.2-2)
0x0111  Duplicate SOP Instance                  N-CREATE of a SOP Instance UID already created
0x0112  No Such Object Instance                 N-SET of a SOP Instance UID never created
0x0120  Missing Attribute                       an attribute of type 1 in Table F.7.2-1 is absent
0x0121  Missing Attribute Value                 ... present but empty
======  ======================================  =========================================================

Type 1 on N-CREATE (Table F.7.2-1): Scheduled Step Attributes Sequence (each item with Study Instance
UID), Performed Procedure Step ID, Performed Station AE Title, PPS Start Date and Time, PPS Status and
Modality. Becoming final (COMPLETED or DISCONTINUED, "final state" column): PPS End Date and Time;
COMPLETED also a Performed Series Sequence with at least one item. Type 2 attributes are not demanded:
too many modalities leave them out for an SCP to refuse them.
"""

from __future__ import annotations

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
FINAL = frozenset({COMPLETED, DISCONTINUED})
STATES = frozenset({IN_PROGRESS}) | FINAL

INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
MAY_NO_LONGER_BE_UPDATED = 0xA710  # Error ID, PS3.4 Table F.7.2-2
NO_LONGER_UPDATED_COMMENT = "Performed Procedure Step Object may no longer be updated"

CREATE_REQUIRED = ("ScheduledStepAttributesSequence", "PerformedProcedureStepID", "PerformedStationAETitle",
                   "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
                   "PerformedProcedureStepStatus", "Modality")
FINAL_REQUIRED = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")


class Refusal(Exception):
    """An MPPS request the SCP must refuse: the status, a comment naming the attribute, its tag."""

    def __init__(self, status: int, comment: str, tag: int | None = None, error_id: int | None = None):
        super().__init__(comment)
        self.status, self.comment, self.tag, self.error_id = status, comment, tag, error_id


def _name(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


def _require(ds: Dataset, keyword: str, context: str = "") -> None:
    tag = tag_for_keyword(keyword)
    where = f" {context}" if context else ""
    if keyword not in ds:
        raise Refusal(MISSING_ATTRIBUTE, f"missing {_name(keyword)}{where}", tag)
    value = ds[keyword].value
    if value is None or (not isinstance(value, (int, float)) and len(value) == 0):  # '', [], empty Sequence
        raise Refusal(MISSING_ATTRIBUTE_VALUE, f"empty {_name(keyword)}{where}", tag)


def status_of(ds: Dataset) -> str:
    return str(ds.get("PerformedProcedureStepStatus", "") or "").strip().upper()


def check_create(ds: Dataset) -> str:
    """Check an N-CREATE attribute list (F.7.2.1); the status it creates (always IN PROGRESS)."""
    for keyword in CREATE_REQUIRED:
        _require(ds, keyword)
    for number, item in enumerate(ds.ScheduledStepAttributesSequence, 1):
        _require(item, "StudyInstanceUID", f"in Scheduled Step Attributes item {number}")
    status = status_of(ds)
    if status != IN_PROGRESS:
        # F.7.2.1.3: the SCP shall refuse an N-CREATE whose status is not IN PROGRESS.
        raise Refusal(INVALID_ATTRIBUTE_VALUE,
                      f"{_name('PerformedProcedureStepStatus')} must be IN PROGRESS on N-CREATE, not {status!r}",
                      tag_for_keyword("PerformedProcedureStepStatus"))
    return status


def check_set(stored: Dataset, modification: Dataset) -> Dataset:
    """Check an N-SET against the stored step (F.7.2.2); return the step as it is after the N-SET.

    N-SET replaces each attribute it carries, sequences whole (PS3.4 F.7.2.2.2: the SCU sends the
    complete sequence).
    """
    current = status_of(stored)
    if current in FINAL:
        raise Refusal(PROCESSING_FAILURE, NO_LONGER_UPDATED_COMMENT, error_id=MAY_NO_LONGER_BE_UPDATED)
    updated = Dataset()
    updated.update(stored)
    for elem in modification:
        updated[elem.tag] = elem
    new = status_of(updated)
    if new not in STATES:
        raise Refusal(INVALID_ATTRIBUTE_VALUE,
                      f"{_name('PerformedProcedureStepStatus')} {new!r} is not IN PROGRESS, COMPLETED or DISCONTINUED",
                      tag_for_keyword("PerformedProcedureStepStatus"))
    if new in FINAL:
        for keyword in FINAL_REQUIRED:
            _require(updated, keyword, f"to become {new}")
        if new == COMPLETED:
            _require(updated, "PerformedSeriesSequence", f"to become {new}")
    return updated


def describe_tag(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
