"""P-DATA received without pynetdicom's per-message objects, and C-STORE requests staged as they arrive.

Measured on ``pacs storescp`` receiving small objects, pynetdicom's receive path was the largest cost
left: each P-DATA-TF PDU copied four times and built into a PDU object, a primitive and a state
machine event; each C-STORE-RQ command set decoded with pydicom, its staged file's File Meta written
with pydicom, every fragment flushed, and the request primitive built from the decoded dataset.

In the data transfer state (Sta6) the DUL hands a P-DATA-TF PDU's body to :func:`split_pdvs` and
the PDVs to :meth:`StagingDIMSE.receive_pdvs`. A one-fragment command that is a plain C-STORE-RQ
(PS3.7 9.3.1.1) opens the staged file, whose dataset fragments are then written from the receive
buffer itself, and a one-fragment C-STORE-RSP without error elements (a sender's answer, decoded
with pydicom it cost a sender as much as the rest of its work per small object) goes straight to
the queue the sender waits on, as does a C-FIND-RSP without error elements, its identifier kept as
received (a C-FIND SCU's answer per match: pynetdicom's decoding was most of ``pacs find``'s CPU per
match). Every other message (and a C-STORE with anything unusual in its
command set) is handed to pynetdicom as the P-DATA primitive it would have built, so it takes
pynetdicom's own path.
The staged file is what pynetdicom's chunked receive makes, byte for byte (tests/test_receive.py).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import struct
import tempfile
import types
from io import BytesIO

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import RE_VALID_UID, UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, evt
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.utils import set_uid

from pacs_cli.archive.header import SCAN_BYTES, StagedHead
from pacs_cli.dimse.encoding import element, text_value, ui_value
from pacs_cli.dimse.responses import FastResponseDIMSE

LOGGER = logging.getLogger("pynetdicom.dimse")

COMMAND, LAST = 0x01, 0x02  # PS3.8 E.2 message control header bits
C_STORE_RQ_FIELD = 0x0001
NO_DATASET = 0x0101
_PDV_HEADER = struct.Struct(">LB")
_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")

# PS3.7 Tables 9.3-1 and 9.3-2: the elements of a C-STORE-RQ and of a plain C-STORE-RSP (no error
# elements), by element number, with how each value is read.
_UID, _AE, _NUMBER = "UI", "AE", "US"
_ELEMENTS = {0x0002: ("AffectedSOPClassUID", _UID), 0x0100: ("CommandField", _NUMBER),
             0x0110: ("MessageID", _NUMBER), 0x0120: ("MessageIDBeingRespondedTo", _NUMBER),
             0x0700: ("Priority", _NUMBER), 0x0800: ("CommandDataSetType", _NUMBER),
             0x0900: ("Status", _NUMBER), 0x1000: ("AffectedSOPInstanceUID", _UID),
             0x1030: ("MoveOriginatorApplicationEntityTitle", _AE), 0x1031: ("MoveOriginatorMessageID", _NUMBER)}
_REQUEST = {"fields": frozenset({"AffectedSOPClassUID", "CommandField", "MessageID", "Priority",
                                  "CommandDataSetType", "AffectedSOPInstanceUID",
                                  "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"}),
            "required": frozenset({"AffectedSOPClassUID", "AffectedSOPInstanceUID", "MessageID", "Priority",
                                   "CommandDataSetType"})}
_RESPONSE = {"fields": frozenset({"AffectedSOPClassUID", "CommandField", "MessageIDBeingRespondedTo",
                                  "CommandDataSetType", "Status", "AffectedSOPInstanceUID"}),
             "required": frozenset({"MessageIDBeingRespondedTo", "CommandDataSetType", "Status"})}
_UNKNOWN = (None, None)
C_STORE_RSP_FIELD, C_FIND_RSP_FIELD = 0x8001, 0x8020
MAX_TEMPLATES = 16  # C-FIND-RSP primitives remembered per association
# The responses taken here, by Command Field: their primitive, and whether an identifier may follow.
# A C-FIND-RSP (PS3.7 9.3.2.2) has the fields of a C-STORE-RSP but the SOP Instance UID.
_RESPONSES = {C_STORE_RSP_FIELD: (C_STORE, False), C_FIND_RSP_FIELD: (C_FIND, True)}


class MalformedPDU(ValueError):
    """A P-DATA-TF PDU whose PDV items do not add up (PS3.8 9.3.5.1)."""


def split_pdvs(body: memoryview) -> list[tuple[int, memoryview]]:
    """The (presentation context ID, message control header + fragment) of each PDV item.

    Slices of ``body``: nothing is copied. An item must hold at least its control header
    (PS3.8 E.2) and end inside the PDU; pynetdicom rejects the same items (as Evt19).
    """
    pdvs, offset, end = [], 0, len(body)
    while offset < end:
        if end - offset < 6:
            raise MalformedPDU("PDV item header cut short")
        length, context_id = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise MalformedPDU(f"PDV item of {length} bytes in {end - offset} left")
        pdvs.append((context_id, body[offset + 5:offset + 4 + length]))
        offset += 4 + length
    return pdvs


def command_fields(command: memoryview | bytes) -> dict | None:
    """The C-STORE elements of a command set by keyword, or None if it holds anything else.

    Command sets are Implicit VR Little Endian group 0000 (PS3.7 6.3.1). An element outside
    Tables 9.3-1 and 9.3-2, a value of an unexpected length or non-ASCII text leaves the message to
    pynetdicom, which knows how to complain about it.
    """
    fields, offset, end = {}, 0, len(command)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _ELEMENT.unpack_from(command, offset)
        start, offset = offset + 8, offset + 8 + length
        if group != 0 or offset > end:
            return None
        if element == 0x0000:
            continue  # Command Group Length: the PDV's end bounds the command set already
        keyword, kind = _ELEMENTS.get(element, _UNKNOWN)
        if kind is _NUMBER and length == 2:
            fields[keyword] = _US.unpack_from(command, start)[0]
        elif kind is _UID or kind is _AE:
            text = _ascii(command[start:offset])
            if text is None:
                return None
            fields[keyword] = text
        else:
            return None
    return fields


def parse_store_command(command: memoryview | bytes) -> dict | None:
    """The fields of a plain C-STORE-RQ with a dataset (PS3.7 9.3.1.1), or None for anything else."""
    return store_request(command_fields(command))


def store_request(fields: dict | None) -> dict | None:
    """``fields`` if they are those of a plain C-STORE-RQ with a dataset, else None."""
    if (fields is None or fields.get("CommandField") != C_STORE_RQ_FIELD
            or fields.get("CommandDataSetType") == NO_DATASET):
        return None
    return fields if _conforms(fields, _REQUEST) else None


def parse_response(command: memoryview | bytes) -> dict | None:
    """The fields of a C-STORE-RSP (PS3.7 9.3.1.2) or C-FIND-RSP (9.3.2.2) without error elements, or
    None for anything else. Only a C-FIND-RSP may announce a dataset (its identifier)."""
    return plain_response(command_fields(command))


def plain_response(fields: dict | None) -> dict | None:
    """``fields`` if they are those of a response :func:`parse_response` takes, else None."""
    if fields is None or fields.get("CommandField") not in _RESPONSES:
        return None
    primitive_class, identifier = _RESPONSES[fields["CommandField"]]
    if fields.get("CommandDataSetType") != NO_DATASET and not identifier:
        return None
    if primitive_class is C_FIND and "AffectedSOPInstanceUID" in fields:
        return None
    return fields if _conforms(fields, _RESPONSE) else None


def _conforms(fields: dict, message: dict) -> bool:
    return fields.keys() <= message["fields"] and message["required"] <= fields.keys()


def _ascii(value: memoryview | bytes) -> str | None:
    try:
        return str(value, "ascii").strip("\x00 ")  # UI pads with NUL, AE with spaces (PS3.5 6.2)
    except UnicodeDecodeError:
        return None


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta group (PS3.10 7.1) as pynetdicom's chunked receive writes them."""
    before, after = _meta_around(sop_class_uid, transfer_syntax)
    elements = before + element(0x00020003, "UI", ui_value(sop_instance_uid), implicit=False) + after
    return _META_PREFIX + struct.pack("<L", len(elements)) + elements


_META_PREFIX = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00"  # up to the group length's value


@functools.lru_cache(maxsize=64)
def _meta_around(sop_class_uid: str, transfer_syntax: str) -> tuple[bytes, bytes]:
    """The File Meta elements before and after the SOP Instance UID's: an association's objects repeat
    a few classes and syntaxes, and encoding them was a twentieth of a small object's receiving."""
    before = (b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01"  # File Meta Information Version
              + element(0x00020002, "UI", ui_value(sop_class_uid), implicit=False))
    after = b"".join((
        element(0x00020010, "UI", ui_value(transfer_syntax), implicit=False),
        element(0x00020012, "UI", ui_value(PYNETDICOM_IMPLEMENTATION_UID), implicit=False),
        element(0x00020013, "SH", text_value(PYNETDICOM_IMPLEMENTATION_VERSION), implicit=False),
    ))
    return before, after


def _staged_file(suffix: str = ".dcm"):
    """A new file in the staging directory (``tempfile.tempdir``: the archive points it there).

    Named by process and a counter, where a random name cost a system call per object; a name left
    by an earlier run is skipped. The buffer takes the File Meta and a small object's dataset in one
    write (the default 8 KiB wrote the File Meta alone first)."""
    folder = tempfile.gettempdir()
    while True:
        path = os.path.join(folder, f"{_staged_names.prefix}{next(_staged_names.counter)}{suffix}")
        try:
            return open(path, "xb", buffering=STAGING_BUFFER)  # noqa: SIM115 - the message owns it until the handler's done
        except FileExistsError:
            continue


STAGING_BUFFER = 64 * 1024
_staged_names = types.SimpleNamespace()


def _name_staged_files_anew() -> None:
    """This process's staged-file names: its pid, taken once (a worker forked from the parent renames)."""
    _staged_names.prefix, _staged_names.counter = f"tmp{os.getpid()}-", itertools.count()


_name_staged_files_anew()
os.register_at_fork(after_in_child=_name_staged_files_anew)


def primitive_from_fields(fields: dict, context_id: int, primitive_class=C_STORE):
    """A C-STORE or C-FIND primitive from parsed command fields, each set through pynetdicom's
    validating setter as its ``message_to_primitive`` does (fields it has no parameter for are left out),
    but the SOP Class UID: checked once per value (:func:`_checked_sop_class`)."""
    primitive = primitive_class()
    for keyword, value in fields.items():
        if keyword == "AffectedSOPClassUID":
            primitive._affected_sop_class_uid = _checked_sop_class(value)
        elif keyword == "AffectedSOPInstanceUID" and _conformant_uid(value):
            primitive._affected_sop_instance_uid = UID(value, pydicom_config.IGNORE)
        elif hasattr(primitive, keyword):
            setattr(primitive, keyword, value)
    primitive._context_id = context_id
    return primitive


def _conformant_uid(uid: str) -> bool:
    """Whether the setter would take ``uid`` silently, whatever its conformance setting: each C-STORE
    has a new instance UID, and the setter's two UID constructions and three checks of it were a
    fiftieth of a small object's receiving. Anything else goes through the setter, for its warning
    or its refusal."""
    return 0 < len(uid) <= 64 and _VALID_UID(uid) is not None


_VALID_UID = re.compile(RE_VALID_UID).match  # pydicom's UID.is_valid, compiled once


@functools.lru_cache(maxsize=256)
def _checked_sop_class(uid: str) -> UID:
    """pynetdicom's check of an Affected SOP Class UID, remembered: an association's messages repeat a
    few classes, and the check (a regular expression, a UID object) was a fifth of a C-FIND
    requester's work per response."""
    return set_uid(uid, "Affected SOP Class UID")


class StagedStore:
    """A C-STORE-RQ whose dataset is being received, into a staged file or, as pynetdicom keeps it
    when its chunked receive is off (``pacs getscu``'s receiver), into memory.

    It stands where pynetdicom keeps the message being received (``dimse.message``), with the
    staged file where pynetdicom's chunked receive keeps its own, so abort clean-up finds it.
    """

    def __init__(self, fields: dict, context_id: int, transfer_syntax: str, chunked: bool) -> None:
        self.fields = fields
        self.context_id = context_id
        self.data_set = BytesIO()
        self._data_set_file = self._data_set_path = None
        self.head, self.size = bytearray(), 0
        if chunked:
            self._data_set_file = _staged_file()
            self._data_set_path = self._data_set_file.name  # a str: event.dataset_path for our handler only
            meta = file_meta(fields["AffectedSOPClassUID"], fields["AffectedSOPInstanceUID"], transfer_syntax)
            self._data_set_file.write(meta)
            self.head += meta
            self.size = len(meta)

    def write(self, fragment: memoryview) -> None:
        """Into the staged file (its first SCAN_BYTES kept: the archive scans its header from them,
        rather than opening and reading the file it was just written to) or into memory."""
        if self._data_set_file is None:
            self.data_set.write(fragment)
            return
        self._data_set_file.write(fragment)
        self.size += len(fragment)
        if len(self.head) < SCAN_BYTES:
            self.head += fragment[:SCAN_BYTES - len(self.head)]

    def message_to_primitive(self) -> C_STORE:
        """The request primitive, through pynetdicom's validating setters, as its decoder would."""
        primitive = primitive_from_fields(self.fields, self.context_id)
        primitive.DataSet = self.data_set
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        primitive._pacs_head = StagedHead(bytes(self.head), self.size) if self._data_set_file else None
        primitive._pacs_staged = True
        return primitive


class BufferedResponse:
    """A C-FIND-RSP whose identifier is being received, kept in memory as pynetdicom keeps it.

    ``template`` is the response's primitive without the identifier, built once for every response
    with the same command bytes (:meth:`StagingDIMSE._response_template`): a C-FIND SCU receives the
    same pending command once per match.
    """

    _data_set_file = None  # nothing staged on disk, unlike a StagedStore

    def __init__(self, template: C_FIND) -> None:
        self.template = template
        self.context_id = template._context_id
        self.data_set = BytesIO()

    def write(self, fragment: memoryview) -> None:
        self.data_set.write(fragment)

    def message_to_primitive(self) -> C_FIND:
        primitive = C_FIND.__new__(C_FIND)
        primitive.__dict__.update(self.template.__dict__)
        primitive.Identifier = BytesIO(self.data_set.getvalue())
        return primitive


_BUFFERED = (StagedStore, BufferedResponse)  # messages whose dataset is taken here, fragment by fragment


class StagingDIMSE(FastResponseDIMSE):
    """pynetdicom's DIMSE provider, taking PDVs straight from the DUL's receive buffer."""

    _templates: dict[tuple[int, bytes], C_FIND]  # response primitives by context ID and command bytes

    def receive_pdvs(self, pdvs: list[tuple[int, memoryview]]) -> bool:
        """Take one P-DATA-TF PDU's PDVs; False when the message is malformed (the DUL aborts)."""
        for context_id, pdv in pdvs:
            message = self.message
            if isinstance(message, _BUFFERED):
                if pdv[0] & COMMAND:
                    return False  # a new command before the dataset's last fragment (PS3.7 6.3.1)
                message.write(pdv[1:])
                if pdv[0] & LAST and not self._queue_buffered(message):
                    return False
            elif message is None and pdv[0] & (COMMAND | LAST) == COMMAND | LAST and self._take_command(context_id, pdv):
                continue
            else:
                self.serve_ready()  # answered before whatever pynetdicom makes of this
                primitive = P_DATA()
                primitive.presentation_data_value_list.append((context_id, bytes(pdv)))
                self.receive_primitive(primitive)
        return True

    def receive_primitive(self, primitive: P_DATA) -> None:
        """pynetdicom's DT-2 path (a PDU read while an event was queued) mid-way through a staged store."""
        if not isinstance(self.message, _BUFFERED):
            super().receive_primitive(primitive)
        elif not self.receive_pdvs([(cid, memoryview(data)) for cid, data in primitive.presentation_data_value_list]):
            self.dul.event_queue.put("Evt19")

    def _take_command(self, context_id: int, pdv: memoryview) -> bool:
        """A one-fragment command: a C-STORE-RQ starts staging, a C-FIND-RSP with an identifier starts
        buffering, a response without one is queued at once; False leaves the message to pynetdicom."""
        context = self.assoc._accepted_cx.get(context_id)
        if context is None or self.assoc.get_handlers(evt.EVT_DIMSE_RECV):
            return False
        command = bytes(pdv[1:])
        template = self._templates.get((context_id, command))
        if template is not None:
            self.message = BufferedResponse(template)
            return True
        fields = command_fields(command)
        if store_request(fields) is None:
            self.serve_ready()  # another kind of message: the stores before it are answered first
        else:
            self.message = StagedStore(fields, context_id, context.transfer_syntax[0],
                                       _config.STORE_RECV_CHUNKED_DATASET)
            return True
        if plain_response(fields) is None:
            return False
        if fields["CommandDataSetType"] != NO_DATASET:
            template = self._response_template(context_id, command, fields)
            if template is None:
                return False
            self.message = BufferedResponse(template)
            return True
        return self._queue_response(fields, context_id)

    def _response_template(self, context_id: int, command: bytes, fields: dict) -> C_FIND | None:
        """The primitive of a C-FIND-RSP with this command, built through pynetdicom's setters once and
        remembered (a few per association: a query's pending command differs only by its message ID);
        None when the setters refuse it."""
        try:
            template = primitive_from_fields(fields, context_id, C_FIND)
        except Exception:  # noqa: BLE001 - pynetdicom decodes it and reports the fault its own way
            return None
        if len(self._templates) >= MAX_TEMPLATES:
            self._templates.clear()
        self._templates[context_id, command] = template
        return template

    def _queue_response(self, fields: dict, context_id: int) -> bool:
        """A response without a dataset, its primitive built through pynetdicom's setters; False when
        they refuse."""
        try:
            primitive = primitive_from_fields(fields, context_id, _RESPONSES[fields["CommandField"]][0])
        except Exception:  # noqa: BLE001 - pynetdicom decodes it and reports the fault its own way
            return False
        self.msg_queue.put((context_id, primitive))
        return True

    def _queue_buffered(self, message: StagedStore | BufferedResponse) -> bool:
        """The dataset is complete: hand the message to the association, as pynetdicom does."""
        self.message = None
        staged = message._data_set_file
        if staged:
            staged.flush()
        try:
            primitive = message.message_to_primitive()
        except Exception as exc:  # noqa: BLE001 - pynetdicom's setters raise ValueError, TypeError, ...
            LOGGER.error("Received an invalid DIMSE message: %s", exc)
            discard_staged(staged)
            return False
        if not (isinstance(message, StagedStore) and self._serve_in_place(primitive)):
            self.msg_queue.put((message.context_id, primitive))
        return True

    def _serve_in_place(self, primitive: C_STORE) -> bool:
        """Answer a staged C-STORE in this (the DUL's) thread when the association's thread is idle.

        Handing each request to the association's thread and its response back cost two thread
        wake-ups per object, a fifth of a small object's CPU and most of its latency. The request is
        served here only when nothing is queued before it, the reactor is not paused (an SCU method,
        such as ``pacs getscu``'s C-GET, takes its own messages) and its turn lock is free: holding
        that lock, no other message of this association can be served meanwhile, so order is kept.
        And only once the association's thread serves messages: pynetdicom's acceptor marks the
        association established only after the A-ASSOCIATE-AC went out, and a peer quick to send
        had its request stored here and never answered (``serve_staged`` answers only on an
        established association; the fuzz battery caught it), or logged before the association.

        Several such requests (the peer keeps them outstanding, PS3.7 D.3.3.3) are stored together, in
        one index transaction (:func:`serve_batch`): a request waits in ``_ready`` while more bytes
        from the peer are here to read, and :meth:`serve_ready` serves them before this thread does
        anything else: waits for the network (a read that would block, or finds the connection
        closed), hands a PDU to pynetdicom, or takes another message. So no wait for the peer holds
        them, and a peer that sends ahead, large objects too, has them stored together.
        """
        assoc = self.assoc
        if not self._may_serve_here():
            self._queue_ready()
            return False
        try:
            if self.msg_queue.queue:  # put there before the turn was ours
                self._queue_ready()
                return False
            if _batch_form(assoc, primitive) is None:
                self._serve_ready_now()
                return serve_staged(assoc, primitive, primitive._context_id)
            self._ready.append(primitive)
            if len(self._ready) < self._batch_limit() and self.dul.socket.more_to_read():
                return True
            self._serve_ready_now()
            return True
        finally:
            assoc._turn.release()

    def _batch_limit(self) -> int:
        """How many requests may wait to be stored together: MAX_BATCH, or as many as the peer may have
        outstanding by our answer to its window proposal ((1, 1) without one). A peer allowed one
        (DCMTK's storescu, most modalities) sends nothing more before the answer: looking for more
        was a system call per object for nothing."""
        if self._limit is None:
            assoc = self.assoc
            invoked = assoc.acceptor.asynchronous_operations[0] if assoc.is_acceptor else 0
            self._limit = min(MAX_BATCH, invoked) if invoked else MAX_BATCH
        return self._limit

    def _may_serve_here(self) -> bool:
        """Whether the association's thread serves messages, is not paused, has nothing queued, and its
        turn is now this thread's (the caller releases it)."""
        assoc = self.assoc
        return (assoc._reacting and not self.msg_queue.queue and assoc._reactor_checkpoint.is_set()
                and assoc._turn.acquire(blocking=False))

    def serve_ready(self) -> None:
        """Serve the requests waiting in ``_ready``, here if the turn is free, else in the association's
        thread, in order either way."""
        if not self._ready:
            return
        if not self._may_serve_here():
            self._queue_ready()
            return
        try:
            if self.msg_queue.queue:
                self._queue_ready()
            else:
                self._serve_ready_now()
        finally:
            self.assoc._turn.release()

    def _serve_ready_now(self) -> None:
        ready, self._ready = self._ready, []
        if ready:
            serve_batch(self.assoc, ready)

    def _queue_ready(self) -> None:
        ready, self._ready = self._ready, []
        for primitive in ready:
            self.msg_queue.put((primitive._context_id, primitive))

    def unserved(self) -> list[C_STORE]:
        """The requests still waiting in ``_ready``, taken (the association ended before they were served)."""
        ready, self._ready = self._ready, []
        return ready


MAX_BATCH = 16  # staged C-STOREs stored in one index transaction at most (pacs storescp grants a window of 16)


def release_staged(request: C_STORE) -> None:
    """For a handler that has disposed of a request's staged file (moved it into place or removed it):
    close the file and forget it, so that the receiver does not remove it after the handler.

    Removing a name already gone was a failed system call and an exception per object, a
    twentieth of a small object's receiving.
    """
    handle, request._dataset_file = request._dataset_file, None
    if handle is not None:
        handle.close()


def discard_staged(handle) -> None:
    """Close and remove a chunked-receive file that no handler took.

    pynetdicom removes it after a storage handler ran; when it refuses the request itself (an
    unknown SOP class, a context never negotiated) or its DUL thread dies mid-message, the file
    stays in the staging directory until the next start-up sweep.
    """
    if handle is None:
        return
    handle.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(handle.name)


HANDLER_FAILED = 0xC211  # pynetdicom's answer when a C-STORE handler raises


def serve_staged(assoc, req: C_STORE, context_id: int) -> bool:
    """Run the C-STORE handler for a staged request and answer it; False leaves it to pynetdicom.

    What pynetdicom's ``_serve_request`` and ``StorageServiceClass.SCP`` do for a C-STORE (PS3.4
    B.2.3), without the response primitive built through validating setters and the status checked
    against a dataset of its own, which measured as much as the archive's work per small object:
    the handler bound to EVT_C_STORE runs with a non-blocking ``abort``, an exception answers
    0xC211, and a plain status is answered as bytes (``FastResponseDIMSE.send_store_response``).
    Anything else is pynetdicom's (:func:`_servable`).
    """
    found = _servable(assoc, req, context_id)
    if found is None:
        return False
    context, (handler, args) = found
    event = evt.Event(assoc, evt.EVT_C_STORE, {"request": req, "context": context.as_tuple})
    _handle_and_answer(assoc, [(req, context_id)], lambda: [handler(event, *(args or ()))])  # args: None if unbound
    return True


def _handle_and_answer(assoc, requests: list[tuple[C_STORE, int]], handle) -> None:
    """Run ``handle`` (the statuses of ``requests``, in order) as pynetdicom runs a handler, then answer.

    The handler runs with a non-blocking ``abort`` (it runs in the thread a blocking abort waits
    on); an exception answers every request 0xC211; the staged files no handler took are removed.
    """
    assoc.dimse.cancel_req = {}
    assoc.abort = assoc._abort_nonblocking
    try:
        statuses = handle()
    except Exception as exc:  # noqa: BLE001 - pynetdicom's rule: a handler's exception is 0xC211
        LOGGER.error("Exception in handler bound to 'evt.EVT_C_STORE'")
        LOGGER.exception(exc)
        statuses = [HANDLER_FAILED] * len(requests)
    finally:
        assoc.abort = assoc._abort_blocking
        for req, _ in requests:
            discard_staged(req._dataset_file)
    if assoc.is_established:
        _answer_all(assoc, requests, statuses)


def _answer_all(assoc, requests: list[tuple[C_STORE, int]], statuses: list) -> None:
    """Answer each request, in order: several plain statuses in one write."""
    codes = [_plain_status(status) for status in statuses]
    if len(requests) > 1 and None not in codes and assoc.dimse.send_store_responses(
            [(context_id, req.AffectedSOPClassUID, req.MessageID, code, req.AffectedSOPInstanceUID)
             for (req, context_id), code in zip(requests, codes)]):
        return
    for (req, context_id), status in zip(requests, statuses):
        _answer(assoc, req, context_id, status)


def _servable(assoc, req: C_STORE, context_id: int):
    """(presentation context, (handler, args)) of a staged request :func:`serve_staged` may serve,
    or None: an error comment, a release under way, an extended negotiation that maps the SOP class
    elsewhere are pynetdicom's."""
    context = assoc._accepted_cx.get(context_id)
    handlers = assoc.get_handlers(evt.EVT_C_STORE)
    if (assoc._sent_release or context is None or not handlers or handlers[0] is None
            or assoc.acceptor.accepted_common_extended
            or uid_to_service_class(req.AffectedSOPClassUID) is not StorageServiceClass):
        return None
    return context, handlers


def _batch_form(assoc, req: C_STORE):
    """The handler's form for several requests at once (a ``batch_form(args)`` it offers), or None."""
    found = _servable(assoc, req, req._context_id)
    if found is None:
        return None
    _, (handler, args) = found
    offer = getattr(handler, "batch_form", None)
    return offer(args) if offer is not None else None


def serve_batch(assoc, requests: list[C_STORE]) -> None:
    """:func:`serve_staged` for requests whose handler stores several at once (:func:`_batch_form`):
    one call for all, then their answers, in order. One request alone is served as ever."""
    if len(requests) == 1:
        serve_staged(assoc, requests[0], requests[0]._context_id)
        return
    handler, args = assoc.get_handlers(evt.EVT_C_STORE)
    several = handler.batch_form(args)
    contexts = assoc._accepted_cx
    events = [evt.Event(assoc, evt.EVT_C_STORE, {"request": req, "context": contexts[req._context_id].as_tuple})
              for req in requests]
    _handle_and_answer(assoc, [(req, req._context_id) for req in requests], lambda: several(events, *args))


def _answer(assoc, req: C_STORE, context_id: int, status) -> None:
    code = _plain_status(status)
    if code is not None and assoc.dimse.send_store_response(context_id, req.AffectedSOPClassUID, req.MessageID,
                                                            code, req.AffectedSOPInstanceUID):
        return
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = req.MessageID
    rsp.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID
    rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
    assoc.dimse.send_msg(StorageServiceClass(assoc).validate_status(status, rsp), context_id)


def _plain_status(status) -> int | None:
    """The status code of a handler's answer with nothing but a known code, else None."""
    if isinstance(status, Dataset):
        if list(status.keys()) != [0x00000900]:
            return None
        status = status.Status
    if isinstance(status, int) and status in StorageServiceClass.statuses:
        return status
    return None


def install(assoc) -> None:
    assoc.dimse.__class__ = StagingDIMSE
    assoc.dimse._templates = {}
    assoc.dimse._ready = []
    assoc.dimse._limit = None
