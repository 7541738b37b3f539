"""Modality Performed Procedure Step (PS3.4 F.7): the N-CREATE/N-SET SCP handlers and the SCU calls.

SCP: :func:`handlers` answers N-CREATE and N-SET from the worklist database. The rules are in
:mod:`pacs_cli.worklist.mpps` (which status for which mistake); the state is in SQLite, because
pynetdicom runs each association's handlers in its own thread. A handler never raises: it answers
with a named status, ErrorComment naming the attribute at fault (N-SET responses also carry its tag
in Attribute Identifier List; pynetdicom's N-CREATE response has no such field), and for a step
that is already final Error ID 0xA710 (F.7.2.2.3).

SCU: :func:`create` and :func:`update` send one N-CREATE or N-SET; :func:`create_dataset`,
:func:`final_dataset` and :func:`performed_series` build what they send.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacs_cli.dimse import status as statuses
from pacs_cli.dimse.ae import associate
from pacs_cli.errors import AssociationAborted, NetworkTimeout, OperationFailed, UsageError
from pacs_cli.options import Connection
from pacs_cli.worklist import mpps as rules
from pacs_cli.worklist.db import WorklistDB

log = logging.getLogger("pacs_cli.mpps")

SUCCESS = 0x0000
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

# PS3.16 CID 9300 Procedure Discontinuation Reasons (DCM codes).
DISCONTINUATION_REASONS = {
    "110500": "Doctor canceled procedure",
    "110501": "Equipment failure",
    "110502": "Incorrect procedure ordered",
    "110503": "Patient allergic to media/contrast",
    "110504": "Patient died",
    "110505": "Patient refused to continue procedure",
    "110506": "Patient taken for treatment or surgery",
    "110507": "Patient did not arrive",
    "110508": "Patient pregnant",
    "110509": "Change of procedure for correct charging",
    "110510": "Duplicate order",
    "110511": "Nursing unit cancel",
    "110512": "Incorrect side ordered",
    "110513": "Discontinued for unspecified reason",
    "110514": "Incorrect worklist entry selected",
    "110515": "Patient condition prevented continuing",
    "110516": "Equipment change",
}


def mpps_contexts():
    return [build_context(ModalityPerformedProcedureStep, TRANSFER_SYNTAXES)]


# --- the SCP ------------------------------------------------------------------------------------

def _refusal_dataset(refusal: rules.Refusal, with_attribute: bool) -> Dataset:
    ds = Dataset()
    ds.Status = refusal.status
    ds.ErrorComment = refusal.comment[:64]  # LO
    if refusal.error_id is not None:
        ds.ErrorID = refusal.error_id
    if with_attribute and refusal.tag is not None:
        ds.AttributeIdentifierList = [refusal.tag]
    return ds


def handle_create(event, store: WorklistDB, events=None, audit=None, stats=None):
    """EVT_N_CREATE: store a new step IN PROGRESS (F.7.2.1); never raises."""
    calling = event.assoc.requestor.ae_title
    uid = str(event.request.AffectedSOPInstanceUID or "")
    ds, generated = None, not uid
    try:
        if generated:
            uid = generate_uid()  # P3.7 10.1.5.1.4: the SCP assigns one and returns it
        ds = event.attribute_list
        if store.mpps(uid) is not None:
            raise rules.Refusal(rules.DUPLICATE_SOP_INSTANCE, f"MPPS {uid} already exists")
        pps_status = rules.check_create(ds)
        ds.SOPClassUID = ModalityPerformedProcedureStep
        ds.SOPInstanceUID = uid
        if not store.create_mpps(uid, ds, pps_status, calling):
            raise rules.Refusal(rules.DUPLICATE_SOP_INSTANCE, f"MPPS {uid} already exists")
    except rules.Refusal as exc:
        _record("create", event, uid, exc.status, exc.comment, ds, events, audit, stats)
        return _refusal_dataset(exc, with_attribute=False), None
    except Exception as exc:  # noqa: BLE001 - a handler answers, it never raises
        log.debug("N-CREATE failure", exc_info=exc)
        comment = f"cannot store the step: {type(exc).__name__}"
        _record("create", event, uid, rules.PROCESSING_FAILURE, comment, ds, events, audit, stats)
        return _refusal_dataset(rules.Refusal(rules.PROCESSING_FAILURE, comment), False), None
    _record("create", event, uid, SUCCESS, rules.IN_PROGRESS, ds, events, audit, stats)
    reply = Dataset()
    if generated:
        reply.AffectedSOPInstanceUID = uid
    return SUCCESS, reply


def handle_set(event, store: WorklistDB, events=None, audit=None, stats=None):
    """EVT_N_SET: update a step still IN PROGRESS (F.7.2.2); never raises."""
    uid = str(event.request.RequestedSOPInstanceUID or "")
    updated = None
    try:
        found = store.mpps(uid)
        if found is None:
            raise rules.Refusal(rules.NO_SUCH_OBJECT_INSTANCE, f"no MPPS {uid}")
        stored_status, stored = found
        modification = event.modification_list
        updated = rules.check_set(stored, modification)
        if not store.update_mpps(uid, updated, rules.status_of(updated), stored_status):
            # Another association's N-SET made it final between our read and our write.
            raise rules.Refusal(rules.PROCESSING_FAILURE, rules.NO_LONGER_UPDATED_COMMENT,
                                error_id=rules.MAY_NO_LONGER_BE_UPDATED)
    except rules.Refusal as exc:
        _record("set", event, uid, exc.status, exc.comment, updated, events, audit, stats)
        return _refusal_dataset(exc, with_attribute=True), None
    except Exception as exc:  # noqa: BLE001
        log.debug("N-SET failure", exc_info=exc)
        comment = f"cannot update the step: {type(exc).__name__}"
        _record("set", event, uid, rules.PROCESSING_FAILURE, comment, updated, events, audit, stats)
        return _refusal_dataset(rules.Refusal(rules.PROCESSING_FAILURE, comment), True), None
    _record("set", event, uid, SUCCESS, rules.status_of(updated), updated, events, audit, stats)
    return SUCCESS, modification


def _record(action: str, event, uid: str, code: int, detail: str, ds: Dataset | None, events, audit,
            stats=None) -> None:
    if stats is not None:  # mwl-scp's --exit-after counts MPPS messages answered
        stats.add(stored=1, failed=int(code != SUCCESS))
    calling = event.assoc.requestor.ae_title
    address = event.assoc.requestor.address_info.address
    words = statuses.describe(code, "mpps")
    if code == SUCCESS:
        log.info("MPPS N-%s %s from %s: %s", action.upper(), uid, calling, detail)
    else:
        log.warning("MPPS N-%s %s from %s refused: %s (%s)", action.upper(), uid, calling, words, detail)
    pps_status = rules.status_of(ds) if ds is not None else ""
    if events is not None:
        events.write(f"mpps-{action}", calling_aet=calling, sop_instance_uid=uid, status=f"0x{code:04X}",
                     pps_status=pps_status if code == SUCCESS else "", comment="" if code == SUCCESS else detail)
    if audit is not None:
        try:
            patient_id = str(ds.get("PatientID", "")) if ds is not None else ""
            studies = tuple(str(item.get("StudyInstanceUID", "")) for item in
                            (ds.get("ScheduledStepAttributesSequence", []) if ds is not None else []))
        except Exception:  # noqa: BLE001 - an undecodable attribute list is audited without them
            patient_id, studies = "", ()
        # the step's new state, or what was refused and why: what a reviewer of the trail asks first
        description = pps_status if code == SUCCESS else f"0x{code:04X} {words}: {detail}"
        audit.procedure(calling, address, patient_id, studies, uid, created=action == "create",
                        outcome=0 if code == SUCCESS else 4, description=description)


def handlers(store: WorklistDB, events=None, audit=None, stats=None):
    return [
        (evt.EVT_N_CREATE, handle_create, [store, events, audit, stats]),
        (evt.EVT_N_SET, handle_set, [store, events, audit, stats]),
    ]


# --- the SCU ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """What an N-CREATE says about the procedure, from options or from a worklist item."""

    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_instance_uid: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    scheduled_step_id: str = ""
    scheduled_step_description: str = ""
    modality: str = ""
    station_aet: str = ""
    station_name: str = ""
    pps_id: str = ""
    pps_description: str = ""
    start: datetime.datetime | None = None


def step_from_worklist(item: Dataset, **overrides) -> Step:
    """A Step from one MWL C-FIND response (its first Scheduled Procedure Step); options win."""
    sps = (item.get("ScheduledProcedureStepSequence") or [Dataset()])[0]
    values = {
        "patient_id": item.get("PatientID", ""), "patient_name": str(item.get("PatientName", "") or ""),
        "patient_birth_date": item.get("PatientBirthDate", ""), "patient_sex": item.get("PatientSex", ""),
        "accession_number": item.get("AccessionNumber", ""), "study_instance_uid": item.get("StudyInstanceUID", ""),
        "requested_procedure_id": item.get("RequestedProcedureID", ""),
        "requested_procedure_description": item.get("RequestedProcedureDescription", ""),
        "scheduled_step_id": sps.get("ScheduledProcedureStepID", ""),
        "scheduled_step_description": sps.get("ScheduledProcedureStepDescription", ""),
        "modality": sps.get("Modality", ""), "station_aet": sps.get("ScheduledStationAETitle", ""),
        "station_name": sps.get("ScheduledStationName", ""),
    }
    values = {name: str(value or "") for name, value in values.items()}
    values.update({name: value for name, value in overrides.items() if value})
    return Step(**values)


def create_dataset(step: Step) -> Dataset:
    """The N-CREATE attribute list: every type 1 and type 2 attribute of Table F.7.2-1, IN PROGRESS."""
    if not step.modality:
        raise UsageError("an MPPS needs a modality", "give --modality (or --from-worklist)")
    if not step.station_aet:
        raise UsageError("an MPPS needs the performed station's AE title", "give --station-aet")
    start = step.start or datetime.datetime.now()
    ds = Dataset()
    if any(not str(v).isascii() for v in vars(step).values() if isinstance(v, str)):
        ds.SpecificCharacterSet = "ISO_IR 192"
    scheduled = Dataset()
    scheduled.StudyInstanceUID = step.study_instance_uid or generate_uid()
    scheduled.ReferencedStudySequence = Sequence()
    scheduled.AccessionNumber = step.accession_number
    scheduled.RequestedProcedureID = step.requested_procedure_id
    scheduled.RequestedProcedureDescription = step.requested_procedure_description
    scheduled.ScheduledProcedureStepID = step.scheduled_step_id
    scheduled.ScheduledProcedureStepDescription = step.scheduled_step_description
    scheduled.ScheduledProtocolCodeSequence = Sequence()
    ds.ScheduledStepAttributesSequence = Sequence([scheduled])
    ds.PatientName = step.patient_name
    ds.PatientID = step.patient_id
    ds.PatientBirthDate = step.patient_birth_date
    ds.PatientSex = step.patient_sex
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = step.pps_id or start.strftime("PPS%Y%m%d%H%M%S")[:16]
    ds.PerformedStationAETitle = step.station_aet
    ds.PerformedStationName = step.station_name
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = start.strftime("%Y%m%d")
    ds.PerformedProcedureStepStartTime = start.strftime("%H%M%S")
    ds.PerformedProcedureStepStatus = rules.IN_PROGRESS
    ds.PerformedProcedureStepDescription = step.pps_description or step.scheduled_step_description
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = step.modality
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    return ds


def final_dataset(pps_status: str, series: Iterable[Dataset], reason: str | None = None,
                  end: datetime.datetime | None = None) -> Dataset:
    """The N-SET modification list that ends a step: status, end date and time, series, reason."""
    pps_status = pps_status.upper()
    if pps_status not in rules.FINAL:
        raise UsageError(f"--status {pps_status} is not COMPLETED or DISCONTINUED")
    if reason and pps_status != rules.DISCONTINUED:
        raise UsageError("--reason goes with --status DISCONTINUED")
    end = end or datetime.datetime.now()
    ds = Dataset()
    ds.PerformedProcedureStepStatus = pps_status
    ds.PerformedProcedureStepEndDate = end.strftime("%Y%m%d")
    ds.PerformedProcedureStepEndTime = end.strftime("%H%M%S")
    ds.PerformedSeriesSequence = Sequence(series)
    if reason:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = reason, "DCM"
        code.CodeMeaning = DISCONTINUATION_REASONS[reason]
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([code])
    return ds


@dataclass
class _Series:
    item: Dataset
    images: list = field(default_factory=list)
    others: list = field(default_factory=list)


def performed_series(directory: Path | None = None, series_uids: Iterable[str] = (),
                     retrieve_aet: str = "") -> list[Dataset]:
    """Performed Series Sequence items: from the headers of the files under ``directory`` (pixel data is
    never read), and one empty item per explicit Series Instance UID."""
    found: dict[str, _Series] = {}
    if directory is not None:
        for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, TypeError, EOFError):
                log.info("--series-from: %s is not a DICOM file; skipped", path)
                continue
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            if not uid or "SOPInstanceUID" not in ds:
                continue
            entry = found.get(uid)
            if entry is None:
                entry = found[uid] = _Series(_series_item(uid, ds, retrieve_aet))
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.get("SOPClassUID", "")
            ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            (entry.images if "Rows" in ds else entry.others).append(ref)
        if not found:
            raise UsageError(f"--series-from {directory}: no DICOM files with a Series Instance UID there")
    for uid in series_uids:
        found.setdefault(uid, _Series(_series_item(uid, Dataset(), retrieve_aet)))
    items = []
    for entry in found.values():
        entry.item.ReferencedImageSequence = Sequence(entry.images)
        if entry.others:
            entry.item.ReferencedNonImageCompositeSOPInstanceSequence = Sequence(entry.others)
        items.append(entry.item)
    return items


def _series_item(uid: str, ds: Dataset, retrieve_aet: str) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = uid
    item.SeriesDescription = ds.get("SeriesDescription", "")
    item.ProtocolName = ds.get("ProtocolName", "") or ds.get("SeriesDescription", "") or "UNKNOWN"
    item.PerformingPhysicianName = ds.get("PerformingPhysicianName", "")
    item.OperatorsName = ds.get("OperatorsName", "")
    item.RetrieveAETitle = retrieve_aet
    return item


@dataclass
class Result:
    status: int
    comment: str = ""
    error_id: int | None = None
    uid: str = ""


def create(connection: Connection, ds: Dataset, uid: str | None = None) -> Result:
    """Send an N-CREATE; the result's ``uid`` is the new SOP Instance UID (ours unless the SCP chose)."""
    uid = uid or generate_uid()
    with associate(connection, mpps_contexts()) as assoc:
        rsp, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        result = _result(rsp, assoc, connection, "N-CREATE")
    result.uid = str(rsp.get("AffectedSOPInstanceUID", "") or uid)
    return result


def update(connection: Connection, uid: str, ds: Dataset) -> Result:
    with associate(connection, mpps_contexts()) as assoc:
        rsp, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        result = _result(rsp, assoc, connection, "N-SET")
    result.uid = uid
    return result


def _result(rsp: Dataset, assoc, connection: Connection, what: str) -> Result:
    if "Status" not in rsp:
        if assoc.is_aborted:
            raise AssociationAborted(f"{connection.peer} aborted the association during {what}")
        raise NetworkTimeout(f"no {what} response from {connection.peer} within {connection.timeouts.dimse:g} s",
                             "raise -td")
    error_id = rsp.get("ErrorID")
    return Result(int(rsp.Status), str(rsp.get("ErrorComment", "") or ""),
                  int(error_id) if error_id is not None else None)


def check(result: Result, what: str, connection: Connection) -> None:
    """Raise OperationFailed (exit 1) unless the status is success or a warning."""
    if result.status == SUCCESS:
        return
    words = statuses.describe(result.status, "mpps")
    if result.error_id is not None:
        words += f", Error ID 0x{result.error_id:04X}"
    if result.comment:
        words += f" ({result.comment})"
    if statuses.category(result.status) == "Warning":
        log.warning("%s of %s on %s: %s", what, result.uid, connection.peer, words)
        return
    raise OperationFailed(f"{what} of MPPS {result.uid} refused by {connection.peer}: {words}")
