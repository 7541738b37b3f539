"""Query/Retrieve MOVE and GET (PS3.4 C.4.2, C.4.3) from the archive.

SCP: :func:`handlers` answers Patient Root and Study Root C-MOVE and C-GET requests at the PATIENT,
STUDY, SERIES and IMAGE levels. The identifier is checked as a C-FIND's is (:func:`find.check_request`)
and must hold the unique key of its level (C.4.2.1.4.1: a retrieve names what it wants; an empty key
would send the whole archive). Every instance at or below the matches is then sent, each file read
only when its turn comes:

* C-MOVE over a new association to the Move Destination, looked up by AE title among the config
  file's ``[peers.NAME]`` entries, proposing one presentation context per SOP class and transfer
  syntax of the instances as the index recorded them (at most 128, PS3.8 9.3.2.2);
* C-GET over the requesting association, with the storage contexts the requester proposed in the
  SCP role (PS3.4 C.4.3.1.1).

pynetdicom sends the pending responses with the Remaining/Completed/Failed/Warning counts, and the
final response from the sub-operation results. The statuses:

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

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, UID
from pynetdicom import evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs_cli.archive.schema import IMAGE, LEVELS, SERIES, STUDY, UNIQUE_KEYS
from pacs_cli.dimse import status as statuses
from pacs_cli.dimse.find import Model, Refused, TRANSFER_SYNTAXES, check_request

log = logging.getLogger("pacs_cli.retrieve")

SUCCESS, CANCEL, PENDING = 0x0000, 0xFE00, 0xFF00
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
class Destination:
    """Where a C-MOVE sends: a configured peer (:class:`pacs_cli.config.PeerEntry` fits)."""

    ae_title: str
    host: str
    port: int
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True)
class RetrieveOptions:
    destinations: Mapping[str, Destination]  # by AE title
    max_pdu: int = 262144  # for the C-MOVE sub-association


# --- the SCP ------------------------------------------------------------------------------------

def handle_move(event, archive, options: RetrieveOptions, events=None):
    """EVT_C_MOVE: yield the destination, the number of sub-operations, then one dataset each."""
    calling = event.assoc.requestor.ae_title
    title = str(event.move_destination or "").strip()
    outcome = {"operation": "move", "level": "", "instances": 0, "status": None, "destination": title}
    try:
        request = _request(event)
        outcome["level"] = request.level
        destination = options.destinations.get(title)
        if destination is None:
            log.warning("C-MOVE from %s to unknown destination %r: add a [peers.NAME] entry with "
                        'ae_title = "%s", host and port to the config file', calling, title, title)
            raise Refused(MOVE_DESTINATION_UNKNOWN, f'configure [peers.NAME] ae_title="{title}", host, port')
        rows = _instances(archive, request)
        outcome["instances"] = len(rows)
        address = _address(destination)
        comment = f"cannot associate with {title} at {destination.host}:{destination.port}"
        with _Rewrite(event.assoc, {MOVE_DESTINATION_UNKNOWN: comment}):
            yield address, destination.port, _association_kwargs(destination, rows, options)
            yield len(rows)
            yield from _sub_operations(event, archive, rows, outcome)
    except Refused as exc:
        # pynetdicom answers (None, None) with a bare 0xA801, before any sub-operation: put ours there
        outcome["status"] = exc.status
        _answer_instead(event.assoc, exc.status, exc.comment)
        yield None, None
    finally:
        _record(outcome, calling, events)


def handle_get(event, archive, events=None):
    """EVT_C_GET: yield the number of sub-operations, then one dataset each, sent over this association."""
    calling = event.assoc.requestor.ae_title
    outcome = {"operation": "get", "level": "", "instances": 0, "status": None, "destination": calling}
    try:
        request = _request(event)
        outcome["level"] = request.level
        rows = _instances(archive, request)
        outcome["instances"] = len(rows)
        yield len(rows)
        yield from _sub_operations(event, archive, rows, outcome)
    except Refused as exc:
        # pynetdicom answers 0 sub-operations with a bare success, before any C-STORE: put ours there
        outcome["status"] = exc.status
        _answer_instead(event.assoc, exc.status, exc.comment)
        yield 0
    finally:
        _record(outcome, calling, events)


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
    """One (0xFF00, dataset) per instance, read from disk only now; C-CANCEL checked before each."""
    for number, (uid, _sop_class, _syntax, path) in enumerate(rows):
        if event.is_cancelled:  # reading it consumes the C-CANCEL: act on it now (pynetdicom.md §1.2)
            log.info("C-%s cancelled after %d of %d sub-operations", outcome["operation"].upper(), number,
                     len(rows))
            outcome["status"] = CANCEL
            yield CANCEL, None
            return
        yield PENDING, _read(archive, uid, path)
    outcome["done"] = True  # pynetdicom's final status counts the results: 0x0000, 0xB000 or 0xA702


def _read(archive, uid: str, path: str) -> Dataset:
    """The stored file, or a stand-in pynetdicom cannot send, so the sub-operation fails with ``uid``.

    pynetdicom ends the whole retrieve on a yielded failure status; a dataset without SOP Class UID
    makes its ``send_c_store`` raise instead, which it counts as one failed sub-operation and lists
    in FailedSOPInstanceUIDList (PS3.4 C.4.2.1.5), and the retrieve carries on.
    """
    try:
        return dcmread(archive.path_for(path))
    except Exception as exc:  # noqa: BLE001 - gone, unreadable or not DICOM: that instance fails
        log.warning("cannot send %s: %s: %s", uid, type(exc).__name__, exc)
        stand_in = Dataset()
        stand_in.SOPInstanceUID = uid
        return stand_in


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
    pairs = list(dict.fromkeys((sop_class, syntax or ImplicitVRLittleEndian) for _, sop_class, syntax, _ in rows))
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
    or when the destination cannot be associated with, a bare success after 0 sub-operations. The
    handler runs in the association's own thread, so wrapping this association's ``dimse.send_msg``
    (an instance attribute over the class's method) while the handler is active touches nothing else.
    """

    def __init__(self, assoc, comments: dict[int, str], status: int | None = None, once: bool = False):
        self.dimse = assoc.dimse
        self.comments = comments
        self.status = status
        self.once = once

    def __enter__(self):
        send = type(self.dimse).send_msg.__get__(self.dimse)

        def send_msg(primitive, context_id):
            if self.once:
                self.__exit__()
            if self.status is not None:
                primitive.Status = self.status
            comment = self.comments.get(getattr(primitive, "Status", None))
            if comment:
                primitive.ErrorComment = comment[:64]  # LO: at most 64 characters
            send(primitive, context_id)

        self.dimse.send_msg = send_msg
        return self

    def __exit__(self, *exc):
        self.dimse.__dict__.pop("send_msg", None)


def _answer_instead(assoc, code: int, comment: str) -> None:
    """The next response pynetdicom sends carries ``code`` and ``comment`` instead of its own."""
    _Rewrite(assoc, {code: comment}, status=code, once=True).__enter__()


def _record(outcome: dict, calling: str, events) -> None:
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
                     level=outcome["level"], instances=outcome["instances"],
                     status="" if code is None else f"0x{code:04X}")


def handlers(archive, options: RetrieveOptions, events=None):
    return [
        (evt.EVT_C_MOVE, handle_move, [archive, options, events]),
        (evt.EVT_C_GET, handle_get, [archive, events]),
    ]
