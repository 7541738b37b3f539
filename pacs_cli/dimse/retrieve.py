"""Query/Retrieve MOVE and GET (PS3.4 C.4.2, C.4.3) from the archive.

SCP: :func:`handlers` answers Patient Root and Study Root C-MOVE and C-GET requests at the PATIENT,
STUDY, SERIES and IMAGE levels. The identifier is checked as a C-FIND's is (:func:`find.check_request`)
and must hold the unique key of its level (C.4.2.1.4.1: a retrieve names what it wants; an empty key
would send the whole archive). Every instance at or below the matches is then sent, each file read
only when its turn comes, and its bytes sent as stored when the peer accepted their transfer syntax
(:mod:`~pacs_cli.dimse.substore`):

* C-MOVE over a new association to the Move Destination, looked up by AE title among the config
  file's ``[peers.NAME]`` entries, proposing one presentation context per SOP class and transfer
  syntax of the instances as the index recorded them (at most 128, PS3.8 9.3.2.2);
* C-GET over the requesting association, with the storage contexts the requester proposed in the
  SCP role (PS3.4 C.4.3.1.1).

pynetdicom sends the pending responses with the Remaining/Completed/Failed/Warning counts, and the
final response from the sub-operation results. Each retrieve is audited (``--audit-log``): Begin
Transferring DICOM Instances when its sub-operations start, and DICOM Instances Transferred (action R)
when it ends, naming the requestor, the destination, the patients and studies, and the counts. The
statuses:

==========  ===================================================================================
0xFF00      Pending: one per sub-operation
0x0000      Success: every sub-operation succeeded (or nothing matched)
0xB000      Warning: some sub-operations failed or gave warnings; FailedSOPInstanceUIDList
            names the failed ones (C.4.2.1.5; a file gone from disk fails its sub-operation)
0xA702      Refused: Out of Resources, unable to perform sub-operations: all of them failed
0xFE00      Cancel: C-CANCEL received between sub-operations; the counts say how far it got
0xA801      Refused: Move Destination unknown (not a configured peer, or cannot be associated
            with); ErrorComment says what to configure
0xA900      Identifier Does Not Match SOP Class: no or a wrong level, a key below the level, or
            no unique key of the level
0xC000      Unable to Process: a key value that cannot be matched, an identifier that cannot be
            decoded, or the index failed
==========  ===================================================================================
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, UID
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs_cli import audit as auditing
from pacs_cli.archive.schema import IMAGE, LEVELS, SERIES, STUDY, UNIQUE_KEYS
from pacs_cli.config import PeerEntry as Destination  # a C-MOVE destination is a configured peer
from pacs_cli.dimse import status as statuses
from pacs_cli.dimse.find import Model, Refused, TRANSFER_SYNTAXES, check_request
from pacs_cli.dimse.substore import StoredInstance
from pacs_cli.options import DEFAULT_MAX_PDU

log = logging.getLogger("pacs_cli.retrieve")

SUCCESS, CANCEL, PENDING = 0x0000, 0xFE00, 0xFF00
WARNING, ALL_FAILED = 0xB000, 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1-255 (PS3.8 9.3.2.2)

MOVE_MODELS = {
    "patient": Model("patient", PatientRootQueryRetrieveInformationModelMove, LEVELS, "Patient Root"),
    "study": Model("study", StudyRootQueryRetrieveInformationModelMove, (STUDY, SERIES, IMAGE), "Study Root"),
}
GET_MODELS = {
    "patient": Model("patient", PatientRootQueryRetrieveInformationModelGet, LEVELS, "Patient Root"),
    "study": Model("study", StudyRootQueryRetrieveInformationModelGet, (STUDY, SERIES, IMAGE), "Study Root"),
}
BY_UID = {model.uid: model for model in (*MOVE_MODELS.values(), *GET_MODELS.values())}


def retrieve_contexts():
    """The MOVE and GET contexts storescp offers: Patient Root and Study Root, uncompressed only."""
    return [build_context(model.uid, TRANSFER_SYNTAXES) for model in BY_UID.values()]


@dataclass(frozen=True)
class RetrieveOptions:
    destinations: Mapping[str, Destination]  # by AE title
    max_pdu: int = DEFAULT_MAX_PDU  # for the C-MOVE sub-association


# --- the SCP ------------------------------------------------------------------------------------

def handle_move(event, archive, options: RetrieveOptions, events=None, audit=None):
    """EVT_C_MOVE: yield the destination, the number of sub-operations, then one instance each."""
    calling = event.assoc.requestor.ae_title
    title = str(event.move_destination or "").strip()
    outcome = {"operation": "move", "level": "", "instances": 0, "status": None, "destination": title}
    requestor = auditing.peer(calling, event.assoc.requestor.address_info.address, requestor=True, role=None)
    receiver = auditing.peer(title or "-", "", requestor=False, role=auditing.DESTINATION)
    counts = _Counts(event.assoc)
    try:
        request = _request(event)
        outcome["level"] = request.level
        destination = options.destinations.get(title)
        if destination is None:
            log.warning("C-MOVE from %s to unknown destination %r: add a [peers.NAME] entry with "
                        'ae_title = "%s", host and port to the config file', calling, title, title)
            raise Refused(MOVE_DESTINATION_UNKNOWN, f'configure [peers.NAME] ae_title="{title}", host, port')
        receiver["NetworkAccessPointID"] = destination.host
        rows = _instances(archive, request)
        outcome["instances"] = len(rows)
        address = _address(destination)
        comment = f"cannot associate with {title} at {destination.host}:{destination.port}"
        with _Rewrite(event.assoc, {MOVE_DESTINATION_UNKNOWN: comment}):
            yield address, destination.port, _association_kwargs(destination, rows, options)
            yield len(rows)
            _audit_begin(audit, requestor, receiver, request, rows)
            yield from _sub_operations(event, archive, rows, outcome)
    except Refused as exc:
        # pynetdicom answers (None, None) with a bare 0xA801, before any sub-operation: put ours there
        outcome["status"] = exc.status
        outcome["comment"] = exc.comment
        _answer_instead(event.assoc, exc.status, exc.comment)
        yield None, None
    finally:
        counts.stop()
        _record(outcome, calling, events, counts)
        _audit_end(audit, requestor, receiver, outcome, counts)


def handle_get(event, archive, events=None, audit=None):
    """EVT_C_GET: yield the number of sub-operations, then one instance each, sent over this association."""
    calling = event.assoc.requestor.ae_title
    outcome = {"operation": "get", "level": "", "instances": 0, "status": None, "destination": calling}
    requestor = auditing.peer(calling, event.assoc.requestor.address_info.address, requestor=True,
                              role=auditing.DESTINATION)
    counts = _Counts(event.assoc)
    try:
        request = _request(event)
        outcome["level"] = request.level
        rows = _instances(archive, request)
        outcome["instances"] = len(rows)
        yield len(rows)
        _audit_begin(audit, requestor, requestor, request, rows)
        yield from _sub_operations(event, archive, rows, outcome)
    except Refused as exc:
        # pynetdicom answers 0 sub-operations with a bare success, before any C-STORE: put ours there
        outcome["status"] = exc.status
        outcome["comment"] = exc.comment
        _answer_instead(event.assoc, exc.status, exc.comment)
        yield 0
    finally:
        counts.stop()
        _record(outcome, calling, events, counts)
        _audit_end(audit, requestor, requestor, outcome, counts)


class _SendWatch:
    """Runs ``before(primitive)`` ahead of every message this association sends, while started.

    The handler runs in the association's own thread, so one wrapper over this association's
    ``dimse.send_msg`` (an instance attribute over the class's method) touches nothing else. It calls
    the started watches in the order they started, and goes when the last one stops, in whatever
    order they stop (a once-only rewrite stops itself from inside a send).
    """

    def __init__(self, assoc, before):
        self.dimse = assoc.dimse
        self._before = before

    def start(self) -> None:
        watches = self.dimse.__dict__.get("_send_watches")
        if watches is None:
            watches = self.dimse._send_watches = []
            send = self.dimse.send_msg

            def send_msg(primitive, context_id):
                for before in list(watches):
                    before(primitive)
                send(primitive, context_id)

            self.dimse.send_msg = send_msg
        watches.append(self._before)

    def stop(self) -> None:
        watches = self.dimse.__dict__.get("_send_watches", [])
        if self._before in watches:
            watches.remove(self._before)
        if not watches:
            self.dimse.__dict__.pop("send_msg", None)
            self.dimse.__dict__.pop("_send_watches", None)


class _Counts:
    """The sub-operation counts pynetdicom reports in the C-MOVE/C-GET responses it sends on ``assoc``.

    The handler yields datasets and never learns how their C-STOREs went; pynetdicom puts the running
    Completed/Failed/Warning counts in every response (PS3.4 C.4.2.3.1, C.4.3.3.1), so the last one
    sent holds them. Read from the response primitives while the retrieve runs, for the audit record
    (an EVT_DIMSE_SENT handler would cost every response its encoding through pydicom).
    """

    RESPONSES = (C_MOVE, C_GET)
    KEYWORDS = {"completed": "NumberOfCompletedSuboperations", "failed": "NumberOfFailedSuboperations",
                "warning": "NumberOfWarningSuboperations"}

    def __init__(self, assoc):
        self.completed = self.failed = self.warning = 0
        self.final: int | None = None  # a final status pynetdicom sent before the handler ended
        self._watch = _SendWatch(assoc, self._sent)
        self._watch.start()

    def _sent(self, primitive) -> None:
        if type(primitive) not in self.RESPONSES or primitive.MessageIDBeingRespondedTo is None:
            return
        if primitive.Status not in (None, PENDING, 0xFF01):
            self.final = int(primitive.Status)
        for name, keyword in self.KEYWORDS.items():
            value = getattr(primitive, keyword)
            if value is not None:
                setattr(self, name, int(value))

    def stop(self) -> None:
        self._watch.stop()

    def final_status(self, outcome: dict) -> int | None:
        """The status the retrieve ended with: ours when we refused or cancelled, one pynetdicom already
        sent (0xA801 when the destination cannot be associated with), else pynetdicom's rule (0x0000 all
        succeeded, 0xB000 some failed or warned, 0xA702 all failed); None when it broke off."""
        if outcome["status"] is not None:
            return outcome["status"]
        if self.final is not None:
            return self.final
        if not outcome.get("done"):
            return None
        if self.failed and self.failed >= outcome["instances"]:
            return ALL_FAILED
        return WARNING if self.failed or self.warning else SUCCESS


def _request(event):
    """The checked identifier; raises Refused (never anything else) with the status to answer."""
    model = BY_UID.get(str(event.request.AffectedSOPClassUID))
    try:
        identifier = event.identifier
    except Exception as exc:  # noqa: BLE001 - an identifier pydicom cannot decode
        raise Refused(UNABLE_TO_PROCESS, f"cannot decode the identifier: {type(exc).__name__}") from None
    if model is None:
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, "not a Patient or Study Root MOVE/GET")
    request = check_request(identifier, model)
    unique = UNIQUE_KEYS[request.level]
    values = [k.text.strip() for k in request.keys if k.keyword == unique.keyword]
    if not values or values[0] in ("", "*"):
        # C.4.2.1.4.1: the unique key of the level holds one value or a list; never universal
        raise Refused(IDENTIFIER_DOES_NOT_MATCH, f"a {request.level} retrieve needs {unique.keyword}")
    return request


def _instances(archive, request):
    try:
        return archive.index.instances(request.query)
    except sqlite3.Error as exc:
        log.warning("the index failed: %s: %s", type(exc).__name__, exc)
        raise Refused(UNABLE_TO_PROCESS, f"the index failed: {type(exc).__name__}") from None


def _sub_operations(event, archive, rows, outcome: dict):
    """One (0xFF00, instance) per row, its file left unread: the association sends it from disk
    (:mod:`~pacs_cli.dimse.substore`). C-CANCEL checked before each.

    A file gone from disk or unreadable fails its sub-operation when the association reads it: the
    exception in ``send_c_store`` is one failed sub-operation to pynetdicom, which lists its UID in
    FailedSOPInstanceUIDList (PS3.4 C.4.2.1.5) and carries on.
    """
    outcome["sent"] = []
    for number, row in enumerate(rows):
        if event.is_cancelled:  # reading it consumes the C-CANCEL: act on it now (pynetdicom.md §1.2)
            log.info("C-%s cancelled after %d of %d sub-operations", outcome["operation"].upper(), number,
                     len(rows))
            outcome["status"] = CANCEL
            yield CANCEL, None
            return
        outcome["sent"].append((row.patient_id, row.study_instance_uid, row.sop_class_uid, row.sop_instance_uid))
        yield PENDING, StoredInstance(archive.path_for(row.path), row.transfer_syntax_uid,
                                      SOPClassUID=row.sop_class_uid, SOPInstanceUID=row.sop_instance_uid,
                                      PatientID=row.patient_id, StudyInstanceUID=row.study_instance_uid)
    outcome["done"] = True  # pynetdicom's final status counts the results: 0x0000, 0xB000 or 0xA702


def _audit_begin(audit, requestor: dict, receiver: dict, request, rows) -> None:
    """Begin Transferring DICOM Instances, naming the patient and studies of the identifier: the files
    themselves are read only as their sub-operations come."""
    if audit is None or not rows:
        return
    named = {k.keyword: [v for v in k.text.split("\\") if v] for k in request.keys
             if k.keyword in ("PatientID", "StudyInstanceUID")}
    patient_id = (named.get("PatientID") or [""])[0]
    audit.transfer_begins(requestor, receiver,
                          [(patient_id, study_uid, "", "") for study_uid in named.get("StudyInstanceUID") or [""]])


def _audit_end(audit, requestor: dict, receiver: dict, outcome: dict, counts: _Counts) -> None:
    """DICOM Instances Transferred (R): what was sent, to whom, with the counts and the final status."""
    if audit is None:
        return
    code = counts.final_status(outcome)
    ended = "association ended early" if code is None else statuses.describe(code, outcome["operation"])
    comment = f" ({outcome['comment']})" if outcome.get("comment") else ""
    description = (f"C-{outcome['operation'].upper()} to {outcome['destination'] or '-'}: {counts.completed} "
                   f"completed, {counts.failed} failed, {counts.warning} warning; {ended}{comment}")
    result = (auditing.SUCCESS if code == SUCCESS
              else auditing.MINOR_FAILURE if code in (WARNING, CANCEL) else auditing.SERIOUS_FAILURE)
    audit.retrieved(requestor, receiver, outcome.get("sent", []), result, description)


def _address(destination: Destination) -> str:
    from pacs_cli.dimse.ae import resolve
    from pacs_cli.errors import PacsError

    try:
        return resolve(destination.host, destination.port)
    except PacsError:
        raise Refused(MOVE_DESTINATION_UNKNOWN, f"cannot resolve {destination.host}") from None


def move_contexts(rows) -> list:
    """Presentation contexts for the instances' (SOP class, transfer syntax) pairs, at most 128.

    One context per pair, so each file goes as it is stored; an uncompressed one also offers Implicit
    VR Little Endian, which every SCP accepts (PS3.5 10.1). With more than 128 pairs, one context per
    SOP class with all its syntaxes; instances beyond 128 SOP classes fail their sub-operation.
    """
    pairs = list(dict.fromkeys((row.sop_class_uid, row.transfer_syntax_uid or ImplicitVRLittleEndian) for row in rows))
    if len(pairs) <= MAX_CONTEXTS:
        return [build_context(sop_class, _with_fallback(syntax)) for sop_class, syntax in pairs]
    by_class: dict[str, list[str]] = {}
    for sop_class, syntax in pairs:
        by_class.setdefault(sop_class, [])
        by_class[sop_class] += [ts for ts in _with_fallback(syntax) if ts not in by_class[sop_class]]
    if len(by_class) > MAX_CONTEXTS:
        log.warning("C-MOVE of %d SOP classes: only the first %d can be sent in one association",
                    len(by_class), MAX_CONTEXTS)
    return [build_context(sop_class, syntaxes) for sop_class, syntaxes in list(by_class.items())[:MAX_CONTEXTS]]


def _with_fallback(syntax: str) -> list[str]:
    uid = UID(syntax)
    if uid.is_transfer_syntax and not uid.is_compressed and uid != ImplicitVRLittleEndian:
        return [syntax, ImplicitVRLittleEndian]
    return [syntax]


def _association_kwargs(destination: Destination, rows, options: RetrieveOptions) -> dict:
    kwargs = {"contexts": move_contexts(rows) or [build_context(ImplicitVRLittleEndian)],
              "max_pdu": options.max_pdu}
    if destination.tls:
        from pathlib import Path

        from pacs_cli.dimse import tls as tls_contexts
        from pacs_cli.options import TLS

        tls = TLS(*(Path(p) if p else None for p in (destination.tls_cert, destination.tls_key, destination.tls_ca)))
        kwargs["tls_args"] = (tls_contexts.client_context(tls), None)
    return kwargs


class _Rewrite:
    """Set Status and/or ErrorComment in responses pynetdicom builds itself, on this association only.

    pynetdicom sends some responses without asking the handler: a bare 0xA801 after ``(None, None)``
    or when the destination cannot be associated with, a bare success after 0 sub-operations.
    """

    def __init__(self, assoc, comments: dict[int, str], status: int | None = None, once: bool = False):
        self.comments = comments
        self.status = status
        self.once = once
        self._watch = _SendWatch(assoc, self._rewrite)

    def __enter__(self):
        self._watch.start()
        return self

    def __exit__(self, *exc):
        self._watch.stop()

    def _rewrite(self, primitive) -> None:
        if self.once:
            self.__exit__()
        if self.status is not None:
            primitive.Status = self.status
        comment = self.comments.get(getattr(primitive, "Status", None))
        if comment:
            primitive.ErrorComment = comment[:64]  # LO: at most 64 characters


def _answer_instead(assoc, code: int, comment: str) -> None:
    """The next response pynetdicom sends carries ``code`` and ``comment`` instead of its own."""
    _Rewrite(assoc, {code: comment}, status=code, once=True).__enter__()


def _record(outcome: dict, calling: str, events, counts: _Counts) -> None:
    code = outcome["status"]
    operation = outcome["operation"]
    if code is not None:
        words = statuses.describe(code, operation)
    else:
        words = "all sub-operations made" if outcome.get("done") else "ended early"
    log.info("C-%s %s from %s to %s: %d instance(s), %s", operation.upper(), outcome["level"], calling,
             outcome["destination"], outcome["instances"], words)
    if events is not None:
        events.write("retrieve", operation=operation, calling_aet=calling, destination=outcome["destination"],
                     level=outcome["level"], instances=outcome["instances"], completed=counts.completed,
                     failed=counts.failed, warning=counts.warning, status="" if code is None else f"0x{code:04X}")


def handlers(archive, options: RetrieveOptions, events=None, audit=None):
    return [
        (evt.EVT_C_MOVE, handle_move, [archive, options, events, audit]),
        (evt.EVT_C_GET, handle_get, [archive, events, audit]),
    ]


# --- the SCU ------------------------------------------------------------------------------------
#
# :func:`move` and :func:`get` send one C-MOVE or C-GET and fill a :class:`RetrieveOutcome` from the
# pending and final responses; :func:`check_retrieve` turns it into an exit status. C-GET receives the
# instances over its own association (SCP role negotiation, PS3.7 D.3.3.4) and :class:`Receiver` writes
# each one as it came over the wire, file meta added, never decoded.

# Storage SOP classes a C-GET proposes when it was not told which ones the peer holds: the image
# classes also get contexts for the common compressed transfer syntaxes, as room allows (each
# context is accepted with one transfer syntax, and a file goes only in its own one).
def _uids(*names: str) -> tuple[str, ...]:
    from pynetdicom import sop_class

    return tuple(str(getattr(sop_class, name)) for name in names)


IMAGE_CLASSES = _uids(
    "CTImageStorage", "MRImageStorage", "ComputedRadiographyImageStorage",
    "DigitalXRayImageStorageForPresentation", "DigitalMammographyXRayImageStorageForPresentation",
    "UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "SecondaryCaptureImageStorage",
    "EnhancedCTImageStorage", "EnhancedMRImageStorage", "XRayAngiographicImageStorage",
    "XRayRadiofluoroscopicImageStorage", "NuclearMedicineImageStorage", "PositronEmissionTomographyImageStorage",
    "DigitalXRayImageStorageForProcessing", "DigitalMammographyXRayImageStorageForProcessing",
    "BreastTomosynthesisImageStorage", "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleWordSecondaryCaptureImageStorage", "MultiFrameTrueColorSecondaryCaptureImageStorage",
    "EnhancedPETImageStorage", "RTImageStorage", "RTDoseStorage", "VLPhotographicImageStorage",
    "VLEndoscopicImageStorage", "VLMicroscopicImageStorage", "VLWholeSlideMicroscopyImageStorage",
    "OphthalmicPhotography8BitImageStorage", "DigitalIntraOralXRayImageStorageForPresentation",
    "XRay3DAngiographicImageStorage", "EnhancedXAImageStorage",
)
OTHER_CLASSES = _uids(
    "RTStructureSetStorage", "RTPlanStorage", "BasicTextSRStorage", "EnhancedSRStorage",
    "ComprehensiveSRStorage", "XRayRadiationDoseSRStorage", "KeyObjectSelectionDocumentStorage",
    "GrayscaleSoftcopyPresentationStateStorage", "EncapsulatedPDFStorage", "SegmentationStorage",
    "RawDataStorage", "SpatialRegistrationStorage",
)
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # Explicit, Implicit VR Little Endian
COMPRESSED = [  # most common first
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
]


def get_contexts(sop_classes=None, room: int = MAX_CONTEXTS - 1) -> list:
    """Storage contexts for a C-GET, at most ``room``: every class uncompressed first, then compressed ones.

    ``sop_classes``: the classes the peer holds (from a C-FIND), all of which get compressed contexts;
    else the common classes above, the image ones getting compressed contexts. Beyond ``room``, the
    classes or syntaxes at the end of the lists are left out.
    """
    classes = list(dict.fromkeys(sop_classes)) if sop_classes else [*IMAGE_CLASSES, *OTHER_CLASSES]
    compressible = classes if sop_classes else list(IMAGE_CLASSES)
    if len(classes) > room:
        log.warning("%d SOP classes: only the first %d can be proposed in one association", len(classes), room)
    contexts = [build_context(uid, UNCOMPRESSED) for uid in classes[:room]]
    for syntax in COMPRESSED:
        for uid in compressible:
            if len(contexts) >= room:
                return contexts
            contexts.append(build_context(uid, [syntax]))
    return contexts


@dataclass
class RetrieveOutcome:
    """How a C-MOVE or C-GET went: the sub-operation counts (from the last response holding them),
    the final status and comment, the failed instances, and the files a C-GET wrote."""

    operation: str  # "move" or "get"
    where: str = ""
    status: int | None = None
    comment: str = ""
    remaining: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: tuple[str, ...] = ()
    local_address: str = ""  # our side of the association: what a peer must configure for C-MOVE

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.warning

    @property
    def total(self) -> int | None:
        return None if self.remaining is None else self.done + self.remaining

    def summary(self) -> str:
        words = "no final response" if self.status is None else statuses.describe(self.status, self.operation)
        comment = f" ({self.comment})" if self.comment else ""
        return (f"C-{self.operation.upper()} {self.where}: {self.completed} completed, {self.failed} failed, "
                f"{self.warning} warning; {words}{comment}")


def _take_counts(rsp_status: Dataset, outcome: RetrieveOutcome) -> None:
    for attribute, keyword in (("remaining", "NumberOfRemainingSuboperations"),
                               ("completed", "NumberOfCompletedSuboperations"),
                               ("failed", "NumberOfFailedSuboperations"),
                               ("warning", "NumberOfWarningSuboperations")):
        value = rsp_status.get(keyword)
        if value is not None and value != "":
            setattr(outcome, attribute, int(value))


def _responses(assoc, responses, connection, outcome: RetrieveOutcome, on_pending=None) -> None:
    """Read every response into ``outcome``; ``on_pending(outcome)`` after each pending one."""
    for rsp_status, rsp in responses:
        if "Status" not in rsp_status:
            _raise_lost(assoc, connection, outcome.operation)
        code = rsp_status.Status
        _take_counts(rsp_status, outcome)
        if statuses.category(code) == "Pending":
            if on_pending is not None:
                on_pending(outcome)
            continue
        outcome.status = code
        outcome.comment = str(rsp_status.get("ErrorComment", "") or "")
        if rsp is not None and "FailedSOPInstanceUIDList" in rsp:
            value = rsp.FailedSOPInstanceUIDList
            outcome.failed_uids = tuple(str(v) for v in ([value] if isinstance(value, str) else value) if v)
        if outcome.remaining is None:
            outcome.remaining = 0


def _raise_lost(assoc, connection, operation: str):
    from pacs_cli.errors import AssociationAborted, NetworkTimeout

    if assoc.is_aborted:
        raise AssociationAborted(f"{connection.peer} aborted the association during C-{operation.upper()}")
    raise NetworkTimeout(f"no C-{operation.upper()} response from {connection.peer} within "
                         f"{connection.timeouts.dimse:g} s", "raise -td")


def move(connection, identifier: Dataset, model: Model, destination: str, outcome: RetrieveOutcome,
         on_pending=None) -> RetrieveOutcome:
    """Send one C-MOVE of ``identifier`` to ``destination`` (an AE title the peer knows).

    Raises NetworkError subclasses (exit 3) when the association cannot be made or breaks.
    """
    from pacs_cli.dimse.ae import associate

    outcome.where = f"from {connection.peer} to {destination}"
    with associate(connection, [build_context(model.uid, TRANSFER_SYNTAXES)]) as assoc:
        outcome.local_address = assoc.requestor.address_info.address
        _responses(assoc, assoc.send_c_move(identifier, destination, model.uid), connection, outcome, on_pending)
    return outcome


class Receiver:
    """EVT_C_STORE for a C-GET: each instance written as received to ``directory/<SOP Instance UID>.dcm``.

    The name is :func:`pacs_cli.archive.layout.safe_component` of the UID, so a hostile UID cannot
    leave the directory; the file appears whole (written beside it, then renamed).
    """

    def __init__(self, directory, on_stored=None):
        from pathlib import Path

        self.directory = Path(directory)
        self.on_stored = on_stored
        self.written = 0
        self.bytes = 0
        self.failed = 0

    def handle(self, event):
        import os

        from pacs_cli.archive.layout import safe_component

        uid = str(event.request.AffectedSOPInstanceUID or "")
        path = self.directory / f"{safe_component(uid)}.dcm"
        partial = path.with_name(path.name + ".partial")
        try:
            data = event.encoded_dataset(include_meta=True)
            partial.write_bytes(data)
            os.replace(partial, path)
        except Exception as exc:  # noqa: BLE001 - a handler answers, it never raises
            self.failed += 1
            log.warning("cannot write %s: %s: %s", path, type(exc).__name__, exc)
            partial.unlink(missing_ok=True)
            return 0xA700  # Refused: Out of Resources
        self.written += 1
        self.bytes += len(data)
        log.info("received %s -> %s", uid, path)
        if self.on_stored is not None:
            self.on_stored(len(data))
        return SUCCESS


def sop_classes_held(connection, identifier: Dataset, model: Model) -> list[str]:
    """The SOP classes of the studies ``identifier`` names, by a STUDY-level C-FIND for SOPClassesInStudy.

    Empty when the peer does not return them (the key is optional for an SCP).
    """
    from pacs_cli.dimse import find as finding

    query = Dataset()
    query.QueryRetrieveLevel = STUDY
    for keyword in ("PatientID", "StudyInstanceUID"):
        if keyword in identifier:
            setattr(query, keyword, identifier[keyword].value)
    if "StudyInstanceUID" not in query:
        query.StudyInstanceUID = ""
    query.SOPClassesInStudy = ""
    classes: list[str] = []
    find_outcome = finding.Outcome()
    for ds in finding.find(connection, query, finding.MODELS[model.name], find_outcome):
        value = ds.get("SOPClassesInStudy")
        if value:
            classes += [str(v) for v in (value if not isinstance(value, str) else [value]) if str(v)]
    return list(dict.fromkeys(classes))


def get(connection, identifier: Dataset, model: Model, receiver: Receiver, outcome: RetrieveOutcome,
        sop_classes=None, on_pending=None) -> RetrieveOutcome:
    """Send one C-GET of ``identifier``; ``receiver`` writes the instances as they arrive.

    Proposes the GET model and :func:`get_contexts` in the SCP role. Raises NetworkError subclasses
    (exit 3) when the association cannot be made or breaks.
    """
    from pynetdicom.presentation import build_role

    from pacs_cli.dimse.ae import associate

    outcome.where = f"from {connection.peer}"
    receiver.directory.mkdir(parents=True, exist_ok=True)
    storage = get_contexts(sop_classes)
    roles = [build_role(uid, scp_role=True) for uid in dict.fromkeys(cx.abstract_syntax for cx in storage)]
    contexts = [build_context(model.uid, TRANSFER_SYNTAXES), *storage]
    with associate(connection, contexts, [(evt.EVT_C_STORE, receiver.handle)], ext_neg=roles) as assoc:
        outcome.local_address = assoc.requestor.address_info.address
        _responses(assoc, assoc.send_c_get(identifier, model.uid), connection, outcome, on_pending)
    return outcome


def check_retrieve(outcome: RetrieveOutcome, hint_for_unknown: str | None = None) -> None:
    """Raise OperationFailed (exit 1) when a sub-operation failed or the final status is not success/warning."""
    from pacs_cli.errors import OperationFailed

    code = outcome.status
    if code == MOVE_DESTINATION_UNKNOWN:
        raise OperationFailed(f"C-MOVE {outcome.where} refused: {statuses.describe(code, 'move')}"
                              + (f" ({outcome.comment})" if outcome.comment else ""), hint_for_unknown)
    failed_status = code is None or statuses.category(code) not in ("Success", "Warning")
    if outcome.failed or failed_status:
        what = "no final response" if code is None else statuses.describe(code, outcome.operation)
        uids = f"; failed: {', '.join(outcome.failed_uids[:5])}" if outcome.failed_uids else ""
        more = " ..." if len(outcome.failed_uids) > 5 else ""
        raise OperationFailed(f"C-{outcome.operation.upper()} {outcome.where}: {outcome.failed} sub-operation(s) "
                              f"failed, final status {what}" + (f" ({outcome.comment})" if outcome.comment else "")
                              + uids + more, _retrieve_hint(code))


def _retrieve_hint(code: int | None) -> str | None:
    if code == IDENTIFIER_DOES_NOT_MATCH:
        return ("check --model and --level, and give the unique key of the level "
                "(StudyInstanceUID=..., SeriesInstanceUID=...)")
    if code is not None and 0xA700 <= code <= 0xA7FF:
        return "the peer could not make the sub-operations: see its log"
    return None
