"""Modality Worklist FIND (PS3.4 K): the C-FIND SCP handler over the worklist database.

The worklist item is the Scheduled Procedure Step: an item with two steps answers as two matches,
each with that one step in its Scheduled Procedure Step Sequence (PS3.4 K.6.1.2). Matching is the
archive's (:mod:`pacs_cli.archive.matching`, PS3.4 C.2.2.2 as K.2.2.1 asks): single values, wild
cards, date and time ranges, and inside the Scheduled Procedure Step Sequence's first item the
station AE title, modality, start date and time, step ID, status and the rest of
:data:`pacs_cli.worklist.db.STEP_KEYWORDS`. The item files are reread if they changed before each
query. Matches are sent as the cursor is read, C-CANCEL is checked between them.

Responses carry every requested key (K.2.2.1.2): the stored value, or zero length when the item has
none; a sequence key asked for with an item of keys gets that item filled, one asked for empty gets
the whole stored sequence. The status of a step is what MPPS last made it (SCHEDULED, IN PROGRESS,
COMPLETED, DISCONTINUED).

==========  ===================================================================================
0xFF00      Pending: one per matching step
0x0000      Success: all matches sent
0xFE00      Cancel: C-CANCEL received
0xA700      Refused: Out of Resources: the database is busy
0xC000      Unable to Process: a key value that cannot be matched; ErrorComment names it
==========  ===================================================================================
"""

from __future__ import annotations

import logging

from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import ModalityWorklistInformationFind

from pacs_cli.archive import matching
from pacs_cli.dimse import status as statuses
from pacs_cli.dimse.find import (CANCEL, PENDING, SUCCESS, TRANSFER_SYNTAXES, UNABLE_TO_PROCESS, UTF8,
                                 failure_response, wait_for_the_network)
from pacs_cli.dimse.status import status_dataset
from pacs_cli.dimse.identifiers import key_texts
from pacs_cli.vrs import NUMBER_VRS
from pacs_cli.worklist.db import Match, WorklistDB

log = logging.getLogger("pacs_cli.worklist")

SPS_SEQUENCE = 0x00400100
SPECIFIC_CHARACTER_SET = 0x00080005


def worklist_contexts():
    return [build_context(ModalityWorklistInformationFind, TRANSFER_SYNTAXES)]


def request_keys(identifier: Dataset) -> tuple[dict[str, str], dict[str, str]]:
    """(item keys, step keys): keyword -> value of the identifier and of its first SPS item."""
    item_keys = {k.keyword: k.text for k in key_texts(identifier) if k.keyword and k.vr != "SQ"}
    step_keys = {}
    sps = identifier.get(SPS_SEQUENCE)
    if sps is not None and sps.value:
        step_keys = {k.keyword: k.text for k in key_texts(sps.value[0]) if k.keyword and k.vr != "SQ"}
    return item_keys, step_keys


def response(identifier: Dataset, match: Match) -> Dataset:
    """The requested keys filled from one (item, step)."""
    stored = Dataset()
    stored.update(match.item)
    stored.ScheduledProcedureStepSequence = Sequence([match.step])
    ds = Dataset()
    _fill(ds, identifier, stored)
    if _has_non_ascii(ds):
        ds.SpecificCharacterSet = UTF8
    elif "SpecificCharacterSet" in identifier:
        ds.SpecificCharacterSet = identifier.SpecificCharacterSet
    return ds


def _fill(out: Dataset, request: Dataset, stored: Dataset) -> None:
    for tag in request.keys():
        if tag.group < 0x0008 or tag == SPECIFIC_CHARACTER_SET or tag.element == 0:
            continue
        asked = request.get_item(tag)
        have = stored.get(tag)
        if asked.VR == "SQ" or (have is not None and have.VR == "SQ"):
            items = request[tag].value if asked.VR == "SQ" else []
            if have is None or not have.value:
                out.add(DataElement(tag, "SQ", Sequence()))
            elif items and len(items[0]):  # an item of keys: return those keys of each stored item
                filled = []
                for stored_item in have.value:
                    item = Dataset()
                    _fill(item, items[0], stored_item)
                    filled.append(item)
                out.add(DataElement(tag, "SQ", Sequence(filled)))
            else:  # zero length or one empty item: the whole sequence (K.2.2.1.2 note 4)
                out.add(DataElement(tag, "SQ", Sequence(list(have.value))))
        elif have is not None:
            out.add(have)
        else:
            vr = asked.VR if asked.VR != "UN" else "LO"
            out.add(DataElement(tag, vr, None if vr in NUMBER_VRS else "", validation_mode=pydicom_config.IGNORE))


def _has_non_ascii(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if any(_has_non_ascii(item) for item in elem.value):
                return True
        elif isinstance(elem.value, str) and not elem.value.isascii():
            return True
        elif elem.VR == "PN" and not str(elem.value).isascii():
            return True
    return False


def handle_find(event, store: WorklistDB, events=None, audit=None):
    """EVT_C_FIND for the worklist: stream one pending response per matching step; never raises."""
    calling = event.assoc.requestor.ae_title
    outcome = {"status": None, "matches": 0}
    try:
        report = store.sync()
        for error in report.errors:
            log.warning("worklist: %s", error)
        identifier = event.identifier
        item_keys, step_keys = request_keys(identifier)
        for match in store.find(item_keys, step_keys):
            wait_for_the_network(event.assoc)
            if event.is_cancelled:
                outcome["status"] = CANCEL
                yield CANCEL, None
                return
            outcome["matches"] += 1
            yield PENDING, response(identifier, match)
        outcome["status"] = SUCCESS
        yield SUCCESS, None
    except matching.BadKeyValue as exc:
        outcome["status"] = UNABLE_TO_PROCESS
        log.warning("worklist C-FIND from %s refused: %s", calling, exc)
        yield status_dataset(UNABLE_TO_PROCESS, str(exc)), None
    except Exception as exc:  # noqa: BLE001 - a handler answers, it never raises
        yield failure_response(exc, outcome, f"worklist C-FIND from {calling}", "the worklist"), None
    finally:
        code = outcome["status"]
        words = "association ended" if code is None else statuses.describe(code, "worklist")
        log.info("worklist C-FIND from %s: %d match(es), %s", calling, outcome["matches"], words)
        if events is not None:
            events.write("query", calling_aet=calling, model="worklist", level="", matches=outcome["matches"],
                         status="" if code is None else f"0x{code:04X}")
        if audit is not None:
            audit.query(calling, event.assoc.requestor.address_info.address, ModalityWorklistInformationFind,
                        {}, outcome=0 if code in (SUCCESS, CANCEL) else 4,
                        description="" if code is None else words)


def handlers(store: WorklistDB, events=None, audit=None):
    return [(evt.EVT_C_FIND, handle_find, [store, events, audit])]
