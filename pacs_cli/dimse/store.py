"""Storage service SCP (PS3.4 Annex B): receive → validate → duplicate check → write → index → answer.

The dataset arrives through pynetdicom's chunked receive as a Part 10 file in the archive's
staging directory; the archive moves it into place, so the bytes on disk are the bytes that came
over the wire and large objects never sit in memory. Handlers never raise: they log and answer
with a named status.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.presentation import AllStoragePresentationContexts, build_context

from pacs_cli.archive import Archive, DuplicateRejected, InvalidInstance, OutOfResources, StoreRequest
from pacs_cli.audit import SERIOUS_FAILURE, AuditLog
from pacs_cli.dimse.receive import release_staged
from pacs_cli.dimse.server import Stats
from pacs_cli.dimse.status import status_dataset
from pacs_cli.hooks import CommandRunner, EventLog

log = logging.getLogger("pacs_cli.scp")

# PS3.4 B.2.3 and PS3.7 C.4: the statuses we answer with.
SUCCESS = 0x0000
DUPLICATE = 0x0111  # Duplicate SOP Instance: --on-duplicate reject keeps the first copy
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000

TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]


def storage_contexts():
    """Every storage SOP class pynetdicom knows, with the transfer syntaxes above."""
    return [build_context(cx.abstract_syntax, TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]


@dataclass(frozen=True)
class Faults:
    """Fault injection for testing the peers people integrate with."""

    status: int | None = None  # answer every C-STORE with this status, store nothing
    delay: float = 0.0  # seconds before each response
    abort_after: int | None = None  # abort each association after this many objects


NO_FAULTS = Faults()


def handle_store(event, archive: Archive, stats: Stats, events: EventLog, runner: CommandRunner,
                 faults: Faults, audit: AuditLog):
    """EVT_C_STORE: hand the staged file to the archive and answer with what happened."""
    assoc, request = event.assoc, event.request
    calling = assoc.requestor.ae_title
    sop_class, sop_uid = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
    count = getattr(assoc, "pacs_received", 0) + 1
    assoc.pacs_received = count
    if faults.abort_after is not None and count > faults.abort_after:
        log.warning("fault injection: aborting the association from %s after %d objects", calling, faults.abort_after)
        archive.discard(event.dataset_path)  # gone before the peer learns of the abort
        assoc.abort()
        return status_dataset(OUT_OF_RESOURCES)
    if faults.delay:
        time.sleep(faults.delay)
    if faults.status is not None:
        stats.add(failed=int(faults.status != SUCCESS))
        return status_dataset(faults.status, "fault injection (--fault-status)")
    head = getattr(request, "_pacs_head", None)  # the staged file's first bytes (dimse/receive.py)
    result = _store(archive, event.dataset_path, calling, sop_class, sop_uid, head)
    release_staged(request)  # the archive moved or removed it
    return _after_store(event, result, stats, events, runner, audit)


def handle_stores(batch: list, archive: Archive, stats: Stats, events: EventLog, runner: CommandRunner,
                  faults: Faults, audit: AuditLog) -> list:
    """:func:`handle_store` for several EVT_C_STORE events of one association at once: their files
    stored in one index transaction (:meth:`Archive.store_files`), then each one's events, hooks and
    status, in order, all after the COMMIT. Only without fault injection (:func:`_batch_form`)."""
    requests = []
    for event in batch:
        request = event.request
        requests.append(StoreRequest(event.dataset_path, event.assoc.requestor.ae_title,
                                     str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                                     getattr(request, "_pacs_head", None)))
    outcomes = archive.store_files(requests)
    for event in batch:
        release_staged(event.request)  # the archive moved or removed each
    return [_after_store(event, _result(outcome), stats, events, runner, audit)
            for event, outcome in zip(batch, outcomes)]


def _batch_form(args):
    """:func:`handle_stores` for :func:`handle_store` bound with ``args``, or None: injected faults
    act on each object as it comes."""
    return handle_stores if args is not None and args[4] == NO_FAULTS else None


handle_store.batch_form = _batch_form  # how dimse.receive finds that this handler stores several at once


def _after_store(event, result, stats: Stats, events: EventLog, runner: CommandRunner, audit: AuditLog):
    """What follows a store: counts, log, event line, audit record, hook; the status to answer with."""
    code, comment, outcome = result
    assoc, request = event.assoc, event.request
    calling = assoc.requestor.ae_title
    sop_class, sop_uid = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
    fields = dict(calling_aet=calling, sop_class_uid=sop_class, sop_instance_uid=sop_uid, status=f"0x{code:04X}")
    address = assoc.requestor.address_info.address
    if outcome is None:
        stats.add(failed=1)
        log.warning("C-STORE %s from %s failed: 0x%04X %s", sop_uid, calling, code, comment)
        events.write("store-failed", **fields, error=comment)
        audit.stored(calling, address, "", "", sop_class, sop_uid, outcome=SERIOUS_FAILURE,
                     description=f"0x{code:04X} {comment}")
        return status_dataset(code, comment)
    audit.stored(calling, address, outcome.patient_id, outcome.study_uid, sop_class, sop_uid,
                 description=outcome.kind)
    stats.add(stored=int(outcome.kind != "ignored"), bytes=outcome.size)
    log.info("%s %s from %s -> %s", outcome.kind, sop_uid, calling, outcome.path)
    events.write("stored", **fields, outcome=outcome.kind, path=str(outcome.path),
                 study_uid=outcome.study_uid, size=outcome.size)
    runner.submit(path=str(outcome.path), calling_aet=calling, study_uid=outcome.study_uid,
                  series_uid=outcome.series_uid, sop_instance_uid=sop_uid, sop_class_uid=sop_class)
    return SUCCESS


def _store(archive: Archive, staged: str, calling: str, sop_class: str, sop_uid: str, head):
    """(status, comment, outcome): the archive's typed errors mapped onto PS3.4 statuses."""
    try:
        return _result(archive.store_file(staged, calling, sop_class, sop_uid, head))
    except Exception as exc:  # noqa: BLE001 - a handler answers, it never raises
        return _result(exc)


def _result(outcome) -> tuple:
    """(status, comment, outcome) of a store's outcome, or of the exception it ended with (logged at
    debug level when the archive did not expect it)."""
    if not isinstance(outcome, Exception):
        return SUCCESS, None, outcome
    if isinstance(outcome, DuplicateRejected):
        return DUPLICATE, str(outcome), None
    if isinstance(outcome, InvalidInstance):
        return CANNOT_UNDERSTAND, str(outcome), None
    if isinstance(outcome, OutOfResources):
        return OUT_OF_RESOURCES, str(outcome), None
    log.debug("unexpected error storing", exc_info=outcome)
    return OUT_OF_RESOURCES, f"unexpected {type(outcome).__name__}", None


def discard_partial(event, archive: Archive, stats: Stats, events: EventLog) -> None:
    """EVT_CONN_CLOSE: remove what an aborted association left in staging.

    That is the C-STORE being received (pynetdicom keeps it in ``dimse.message``) and any
    complete C-STORE still queued for a handler that will never run, or waiting to be stored with
    the next ones (``dimse.unserved``).
    """
    dimse = event.assoc.dimse
    partial = [getattr(dimse.message, "_data_set_file", None)]
    partial += [request._dataset_file for request in getattr(dimse, "unserved", list)()]
    while not dimse.msg_queue.empty():
        _, request = dimse.msg_queue.get_nowait()
        partial.append(getattr(request, "_dataset_file", None))
    for handle in filter(None, partial):
        handle.close()
        archive.discard(handle.name)
        stats.add(failed=1)
        log.warning("association from %s ended mid-transfer: partial object removed",
                    event.assoc.requestor.ae_title)
        events.write("store-aborted", calling_aet=event.assoc.requestor.ae_title)


def handlers(archive: Archive, stats: Stats, events: EventLog, runner: CommandRunner, faults: Faults,
             audit: AuditLog):
    return [
        (evt.EVT_C_STORE, handle_store, [archive, stats, events, runner, faults, audit]),
        (evt.EVT_CONN_CLOSE, discard_partial, [archive, stats, events]),
    ]
