"""The responses an SCP sends per object, encoded straight to bytes: C-STORE and pending C-FIND responses.

pynetdicom builds a pydicom dataset for every response, encodes it once to learn the command group
length and once more to send it: measured, a quarter of ``pacs storescp``'s CPU per small object, and
four fifths of a C-FIND SCP's per match (with the status checks and the identifier's encoding).
A plain C-STORE-RSP (PS3.7 9.3.1.2: the two UIDs, the message ID, a status, no optional elements) is
a fixed run of Implicit VR Little Endian elements; :class:`FastResponseDIMSE` writes those bytes and
hands them to pynetdicom's P-DATA primitive and DUL as pynetdicom would. A pending C-FIND-RSP
(9.3.2.2) is the same command for every match of a query (:class:`PendingResponses`); its identifier
comes encoded from :func:`pacs_cli.dimse.find.encoded_response`. A C-GET or C-MOVE response without an
identifier (the pending one after each sub-operation) is likewise a fixed run of elements. A sender's
C-STORE-RQ from a file goes out through :mod:`~pacs_cli.dimse.requests` the same way. Anything else (a response with an Error
Comment, other requests, DIMSE logging at -vv) takes pynetdicom's own path. The bytes are checked
against pynetdicom's encoder in tests/test_responses.py and tests/test_requests.py.
"""

from __future__ import annotations

import time

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE

from pacs_cli.dimse import requests
from pacs_cli.dimse.encoding import command_set, command_ui, command_us

C_STORE_RSP, C_FIND_RSP = 0x8001, 0x8020
RETRIEVE_RSP_FIELDS = {C_GET: 0x8010, C_MOVE: 0x8021}
# PS3.7 Tables 9.3-5 and 9.3-6: the sub-operation counts of a C-GET-RSP and C-MOVE-RSP, in tag order.
SUB_OPERATION_COUNTS = ((0x1020, "NumberOfRemainingSuboperations"), (0x1021, "NumberOfCompletedSuboperations"),
                        (0x1022, "NumberOfFailedSuboperations"), (0x1023, "NumberOfWarningSuboperations"))
NO_DATASET = 0x0101
LAST_COMMAND_FRAGMENT = b"\x03"  # PS3.8 E.2: command, last fragment
LAST_DATA_FRAGMENT = b"\x02"  # dataset, last fragment
OPTIONAL_KEYWORDS = ("ErrorComment", "ErrorID", "OffendingElement")


def c_store_rsp_command(sop_class_uid, message_id: int, status: int, sop_instance_uid) -> bytes:
    """The command set of a plain C-STORE-RSP, Implicit VR Little Endian (PS3.7 E.1-1, 9.3.1.2)."""
    return command_set(
        command_ui(0x0002, sop_class_uid),
        command_us(0x0100, C_STORE_RSP),
        command_us(0x0120, message_id),
        command_us(0x0800, NO_DATASET),
        command_us(0x0900, status),
        command_ui(0x1000, sop_instance_uid),
    )


def c_find_rsp_command(sop_class_uid, message_id: int, status: int, identifier: bool) -> bytes:
    """The command set of a C-FIND-RSP without error elements (PS3.7 9.3.2.2), ``identifier`` when one
    follows (a pending response)."""
    return command_set(
        command_ui(0x0002, sop_class_uid),
        command_us(0x0100, C_FIND_RSP),
        command_us(0x0120, message_id),
        command_us(0x0800, requests.DATASET_PRESENT if identifier else NO_DATASET),
        command_us(0x0900, status),
    )


def c_retrieve_rsp_command(primitive: C_GET | C_MOVE) -> bytes:
    """The command set of a C-GET-RSP or C-MOVE-RSP without an identifier or error elements (PS3.7
    9.3.3.2, 9.3.4.2): a pending response after each sub-operation, or a final one without failures."""
    counts = [command_us(number, getattr(primitive, keyword)) for number, keyword in SUB_OPERATION_COUNTS
              if getattr(primitive, keyword) is not None]
    return command_set(
        command_ui(0x0002, primitive.AffectedSOPClassUID),
        command_us(0x0100, RETRIEVE_RSP_FIELDS[type(primitive)]),
        command_us(0x0120, primitive.MessageIDBeingRespondedTo),
        command_us(0x0800, NO_DATASET),
        command_us(0x0900, primitive.Status),
        *counts,
    )


def is_plain_retrieve_response(primitive) -> bool:
    return (type(primitive) in RETRIEVE_RSP_FIELDS and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status is not None and primitive.AffectedSOPClassUID is not None
            and primitive.Identifier is None
            and all(getattr(primitive, keyword, None) is None for keyword in OPTIONAL_KEYWORDS))


class PendingResponses:
    """The pending responses (0xFF00) of one C-FIND, each sent as its command's bytes and an encoded
    identifier; built once per request, since only the identifier changes from one to the next.

    pynetdicom checks, copies and encodes each through a primitive, a command dataset and the status
    tables: measured at four fifths of a C-FIND SCP's CPU per match. ``implicit`` is None for a transfer
    syntax other than Little Endian uncompressed: the caller then encodes nothing and takes that path.
    :meth:`send` returns False (nothing sent) when the response must take it anyway: no identifier
    bytes, an association without :class:`FastResponseDIMSE`, or -vv logging.

    Responses to rows that come in quick succession (less than :data:`HOLD_GAP` apart) are held and
    written together, up to :data:`HOLD_PDUS` in one system call, which the peer then reads in one
    too; after a slower row, and by :meth:`flush` (before any other response and at the end of the
    matches), whatever is held goes out at once.

    A peer slower than this SCP would otherwise have the kernel's send buffer fill with thousands of
    responses (written 16 at a time they take less room than one by one), all of them to be read
    before the answer to a C-CANCEL: so no more is written while more than :data:`MAX_UNSENT` bytes
    wait in it, unless the C-CANCEL has come (the caller then stops). Waiting, it looks every
    millisecond: only a peer that cannot keep up waits at all.
    """

    PENDING = 0xFF00
    HOLD_PDUS = 16
    HOLD_GAP = 0.001  # seconds between two rows below which the second's response may wait for more
    MAX_UNSENT = 64 * 1024  # bytes in the socket's send queue past which no more responses are written
    _IMPLICIT = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}

    def __init__(self, event):
        context = event.context
        self.implicit = self._IMPLICIT.get(context.transfer_syntax)
        dimse = event.assoc.dimse
        self._dul = dimse.dul
        self._fast = isinstance(dimse, FastResponseDIMSE) and not event.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        self._limit = dimse.maximum_pdu_size
        self._context_id = context.context_id
        self._command = c_find_rsp_command(event.request.AffectedSOPClassUID, event.request.MessageID,
                                           self.PENDING, identifier=True)
        self._held: list[list[tuple[int, bytes]]] = []
        self._last_row = time.monotonic()
        self._assoc, self._message_id = event.assoc, event.request.MessageID

    def send(self, identifier: bytes | None) -> bool:
        if identifier is None or not self._fast:
            self.flush()
            return False
        self._held += message_pdus(self._context_id, self._command, identifier, self._limit)
        now = time.monotonic()
        if now - self._last_row >= self.HOLD_GAP or len(self._held) >= self.HOLD_PDUS:
            self.flush()
        self._last_row = now
        return True

    def flush(self) -> None:
        """Send the responses held, in one write when this thread may write (else queued, in order)."""
        if not self._held:
            return
        held, self._held = self._held, []
        self._wait_for_the_peer()
        requests.send_pdus(self._dul, held)

    def _wait_for_the_peer(self) -> None:
        assoc = self._assoc
        while (self._dul.socket.unsent > self.MAX_UNSENT and assoc.is_established
               and self._message_id not in assoc.dimse.cancel_req):
            time.sleep(0.001)


def is_plain_store_response(primitive) -> bool:
    return (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status is not None and primitive.AffectedSOPClassUID is not None
            and primitive.AffectedSOPInstanceUID is not None
            and all(getattr(primitive, keyword, None) is None for keyword in OPTIONAL_KEYWORDS))


class FastResponseDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending plain C-STORE, C-GET and C-MOVE responses as bytes."""

    def send_msg(self, primitive, context_id: int) -> None:
        if requests.is_file_request(primitive) and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            requests.send_file_request(self, primitive, context_id)  # a sender's C-STORE-RQ from a file
            return
        if is_plain_store_response(primitive):
            sent = self.send_store_response(context_id, primitive.AffectedSOPClassUID,
                                            primitive.MessageIDBeingRespondedTo, primitive.Status,
                                            primitive.AffectedSOPInstanceUID)
        else:
            sent = is_plain_retrieve_response(primitive) and self.send_command(
                context_id, c_retrieve_rsp_command(primitive))
        if not sent:
            super().send_msg(primitive, context_id)

    def send_store_response(self, context_id: int, sop_class_uid, message_id: int, status: int,
                            sop_instance_uid) -> bool:
        """Send a plain C-STORE-RSP as bytes; False (nothing sent) when pynetdicom must send it:
        DIMSE logging at -vv needs its message object, and a command must fit one PDU."""
        return self.send_command(context_id, c_store_rsp_command(sop_class_uid, message_id, status,
                                                                 sop_instance_uid))

    def send_store_responses(self, answers: list[tuple]) -> bool:
        """:meth:`send_store_response` for several (context ID, SOP Class UID, message ID, status, SOP
        Instance UID), one PDU each, written together; False (nothing sent) when one must go
        pynetdicom's way.

        The stores a receiver took in one transaction were answered a system call each, and over
        loopback each write also ran the peer's side of TCP and woke it: a tenth of the receiver's
        time per small object.
        """
        commands = [(context_id, c_store_rsp_command(sop_class_uid, message_id, status, sop_instance_uid))
                    for context_id, sop_class_uid, message_id, status, sop_instance_uid in answers]
        if not all(self._sends_as_bytes(command) for _, command in commands):
            return False
        requests.send_pdus(self.dul, [[(context_id, LAST_COMMAND_FRAGMENT + command)] for context_id, command in commands])
        return True

    def send_command(self, context_id: int, command: bytes) -> bool:
        """Send a message of an encoded command set alone; False (nothing sent) at -vv or when the
        command does not fit one PDU, as above."""
        if not self._sends_as_bytes(command):
            return False
        requests.send_pdata(self.dul, [(context_id, LAST_COMMAND_FRAGMENT + command)])
        return True

    def _sends_as_bytes(self, command: bytes) -> bool:
        """Not at -vv (DIMSE logging needs pynetdicom's message object), and only a command that fits one
        PDU (pynetdicom's one-fragment rule)."""
        limit = self.maximum_pdu_size
        return not self.assoc.get_handlers(evt.EVT_DIMSE_SENT) and not (limit and len(command) > limit - 6)


def message_pdus(context_id: int, command: bytes, dataset: bytes, limit: int) -> list[list[tuple[int, bytes]]]:
    """The PDUs of one message, as lists of (context ID, PDV value), for a peer whose maximum PDU
    length is ``limit`` (0: none).

    A message that fits one PDU goes in one, as two PDVs (PS3.8 9.3.5 allows several per PDU): half
    the PDUs, state machine events and queue hand-offs of pynetdicom's one PDV per PDU, which measured
    as much as the rest of a small C-FIND response's cost. A longer one is sent as pynetdicom sends it.
    """
    if not limit or len(command) + len(dataset) + 2 * requests.PDV_OVERHEAD <= limit:
        return [[(context_id, LAST_COMMAND_FRAGMENT + command), (context_id, LAST_DATA_FRAGMENT + dataset)]]
    return [[(context_id, value)] for value in (*requests.part_pdvs(command, limit),
                                                *requests.part_pdvs(dataset, limit, requests.DATA))]
