"""C-STORE requests sent from a file, the command encoded straight to bytes: a sender's one message per object.

Measured on ``pacs storescu`` into DCMTK's storescp, pynetdicom's ``send_c_store(path)`` cost the sending
thread 2 ms of CPU per small object: ``split_dataset`` reads the File Meta with pydicom, the C_STORE
primitive validates every field, ``primitive_to_message`` builds a pydicom command dataset and encodes it
twice (once for the group length), each dataset fragment is read and then copied again to put its
message control header in front, and the response's status is copied into a new pydicom dataset.

A C-STORE-RQ (PS3.7 9.3.1.1) is a fixed run of Implicit VR Little Endian elements.
:func:`send_file_request` writes them with :func:`c_store_rq_command` and reads the dataset's fragments
from the file straight into the buffers that become their PDVs; the P-DATA primitives then go through
pynetdicom's DUL, state machine and PDU encoder as its own would, and the PDUs are the ones it would
send. :class:`~pacs_cli.dimse.responses.FastResponseDIMSE` takes this path for every request whose
dataset is a file; DIMSE logging at -vv (an EVT_DIMSE_SENT handler, which needs pynetdicom's message
object) and datasets in memory (conversions) keep pynetdicom's. :func:`store_file` is ``send_c_store``
for a file already scanned: its context, UIDs and dataset offset known. tests/test_requests.py checks
the PDUs against pynetdicom's encoder.
"""

from __future__ import annotations

import os
import queue
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from pacs_cli.dimse.encoding import command_set, command_text, command_ui, command_us

C_STORE_RQ = 0x0001
LOW = 0x0002  # PS3.7 9.1.1.1: the Priority pynetdicom's send_c_store gives by default
DATASET_PRESENT = 0x0001  # PS3.7 Table E.1-1: anything but 0x0101 means a dataset follows; pynetdicom's value
# PS3.8 E.2, the message control header: bit 0 set for a command fragment, bit 1 for a message's last one.
DATA, COMMAND, LAST = 0x00, 0x01, 0x02
PDV_OVERHEAD = 6  # PS3.8 9.3.5.1: item length (4), context ID (1), message control header (1)
READ_BYTES = 1 << 18  # dataset bytes read per system call: the fragments of several PDUs at once


class MessageCutShort(OSError):
    """Reading the dataset failed after the command went out: the message cannot be completed."""


@dataclass(frozen=True, slots=True)
class FileRequest:
    """The fields of a C-STORE-RQ sent from a file that :func:`c_store_rq_command` reads, without the
    checks of pynetdicom's C_STORE setters (a tenth of a sender's CPU per small object): the UIDs come
    from the file's header, already checked when it was scanned."""

    MessageID: int
    Priority: int
    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str
    _dataset_path: tuple[str, int]
    MoveOriginatorApplicationEntityTitle: str | None = None
    MoveOriginatorMessageID: int | None = None
    scanned_size: int | None = None  # the file's size when it was scanned: it must not have changed since


def c_store_rq_command(primitive: C_STORE | FileRequest) -> bytes:
    """The command set of a C-STORE-RQ, Implicit VR Little Endian, in tag order (PS3.7 E.1-1, 9.3.1.1)."""
    elements = [
        command_ui(0x0002, primitive.AffectedSOPClassUID),
        command_us(0x0100, C_STORE_RQ),
        command_us(0x0110, primitive.MessageID),
        command_us(0x0700, primitive.Priority),
        command_us(0x0800, DATASET_PRESENT),
        command_ui(0x1000, primitive.AffectedSOPInstanceUID),
    ]
    if primitive.MoveOriginatorApplicationEntityTitle is not None:
        elements.append(command_text(0x1030, primitive.MoveOriginatorApplicationEntityTitle))
    if primitive.MoveOriginatorMessageID is not None:
        elements.append(command_us(0x1031, primitive.MoveOriginatorMessageID))
    return command_set(*elements)


def is_file_request(primitive) -> bool:
    """A C-STORE-RQ whose dataset pynetdicom would read from a file (its chunked send)."""
    return (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is None
            and getattr(primitive, "_dataset_path", None) is not None and primitive.DataSet is None
            and None not in (primitive.MessageID, primitive.Priority, primitive.AffectedSOPClassUID,
                             primitive.AffectedSOPInstanceUID))


def send_file_request(dimse, primitive: C_STORE | FileRequest, context_id: int) -> None:
    """Send (or queue) the P-DATA-TF PDUs of a C-STORE-RQ whose dataset is read from
    ``primitive._dataset_path``.

    The PDUs are those pynetdicom sends: one PDV each, its fragment as long as the peer's maximum PDU
    length allows (PS3.8 9.3.5), the whole part when the peer set no maximum. They are written a read
    at a time, the command's with the first: one system call for a small object, where there were
    two. Packing the command's end and the dataset's start into one PDU, as dcm4che does, measured no
    cheaper, so it is not done. A file whose size differs from ``scanned_size`` (a spool writer still
    writing it) sends nothing: checked on the descriptor the file is read through, with positioned
    reads, three system calls fewer per file than a path ``stat``, a file object and a seek.
    """
    limit, dul = dimse.maximum_pdu_size, dimse.dul
    if 0 < limit <= PDV_OVERHEAD:
        raise ValueError(f"the peer's maximum PDU length ({limit} bytes) leaves no room for data")
    command = c_store_rq_command(primitive)
    path, offset = primitive._dataset_path
    fd = os.open(path, os.O_RDONLY)  # opened first: a file that cannot be opened sends nothing
    try:
        size = os.fstat(fd).st_size
        check_scanned_size(getattr(primitive, "scanned_size", None), size)
        pdus = [[(context_id, value)] for value in part_pdvs(command, limit)]
        try:
            for values in dataset_pdvs(fd, offset, size - offset, limit):
                send_pdus(dul, pdus + [[(context_id, value)] for value in values])
                pdus = []
        except OSError as exc:
            raise MessageCutShort(exc.errno, exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)


def check_scanned_size(scanned: int | None, size: int) -> None:
    """A file must still be what was scanned (``scanned``: its size then, None: not scanned): a spool
    writer may still be writing it."""
    if scanned is not None and size != scanned:
        raise OSError(0, f"the file changed size since it was scanned ({scanned} -> {size} bytes)")


def part_pdvs(part: bytes, limit: int, kind: int = COMMAND) -> Iterator[bytes]:
    """The PDV values of a command set (or of a dataset in memory, ``kind`` DATA): message control
    header (PS3.8 E.2), then the fragment; an empty part is one last, empty fragment."""
    size = limit - PDV_OVERHEAD if limit else max(len(part), 1)
    for start in range(0, max(len(part), 1), size):
        yield bytes((kind | LAST if start + size >= len(part) else kind,)) + part[start:start + size]


def dataset_pdvs(fd: int, offset: int, length: int, limit: int) -> Iterator[list[memoryview]]:
    """The PDV values of the ``length`` dataset bytes at ``offset`` in the file open as ``fd``, a read's
    worth at a time.

    Each fragment is read into the buffer that is sent, behind its header byte, rather than read and
    then copied behind it; the fragments of up to 256 KiB are read in one system call (measured: a
    sixth of the sender's CPU per 0.5 MB object in 16 KiB PDUs), into one buffer that serves every
    read of the file: a new one was fresh memory for the kernel to map and zero each time. So a
    batch is only valid until the next is asked for: :func:`send_pdus` sends it, or copies what it
    queues. An empty dataset is still one (last) fragment, as pynetdicom sends it.
    """
    size = limit - PDV_OVERHEAD if limit else length
    per_read = max(1, READ_BYTES // size) if size else 1
    buffer = bytearray()
    remaining = length
    while True:
        counts = []
        while len(counts) < per_read and (remaining or not counts):
            counts.append(min(size, remaining))
            remaining -= counts[-1]
        if len(buffer) < sum(counts) + len(counts):
            buffer = bytearray(sum(counts) + len(counts))
        values, start = [], 0
        for count in counts:
            values.append(memoryview(buffer)[start:start + count + 1])
            values[-1][0] = DATA
            start += count + 1
        if remaining == 0:
            values[-1][0] = DATA | LAST
        offset = _read_into(fd, offset, values)
        yield values
        if remaining == 0:
            return


def _read_into(fd: int, offset: int, values: list[memoryview]) -> int:
    """Fill each value after its header byte from ``offset`` on, however the reads fall short (a read
    stops at 2 GiB); the offset after them. Positioned reads: no seek per file."""
    views = [value[1:] for value in values if len(value) > 1]
    while views:
        count = os.preadv(fd, views, offset)
        if count == 0:
            raise OSError(0, "the file became shorter while it was sent")
        offset += count
        while views and count >= len(views[0]):
            count -= len(views.pop(0))
        if count:
            views[0] = views[0][count:]
    return offset


def send_pdus(dul, pdus: list[list[tuple[int, bytes | memoryview]]]) -> None:
    """P-DATA-TF PDUs of (context ID, PDV value) items: written in this thread, in one system call, when
    the DUL allows it (:meth:`~pacs_cli.dimse.reactor.EventDrivenDUL.write_pdus`), else queued for the
    DUL's, each value copied (a caller may reuse its buffers once this returns)."""
    if dul.write_pdus(pdus):
        return
    for values in pdus:
        send_pdata(dul, [(context_id, bytes(value)) for context_id, value in values])


def send_pdata(dul, values: list[tuple[int, bytes | bytearray]]) -> None:
    """One P-DATA-TF PDU of (context ID, PDV value) items: written in this thread when the DUL allows
    it (:meth:`~pacs_cli.dimse.reactor.EventDrivenDUL.write_pdata`), else queued for the DUL's."""
    if dul.write_pdata(values):
        return
    pdata = P_DATA()
    pdata.presentation_data_value_list.extend(values)
    dul.send_pdu(pdata)


def store_file(assoc, context_id: int, request: FileRequest) -> C_STORE | None:
    """``send_c_store(path)`` for a scanned file: the C-STORE-RSP primitive, or None when none came.

    Call it inside :func:`sending`. The response comes from the DUL thread, not read here: a C-MOVE
    or C-GET sub-operation, its one caller, has a :func:`sending` of its own, and lending the socket
    for a single response cost the mover more than the hand-over it saves (CPU per sub-operation
    up by a fifth, 1,072 small objects to DCMTK's storescp).
    """
    send_store_request(assoc, context_id, request)
    return next_response(assoc, read_here=False)


def send_store_request(assoc, context_id: int, request: FileRequest) -> None:
    """Send a C-STORE-RQ from a scanned file, not waiting for its response (inside :func:`sending`).

    A file that cannot be read to its end aborts the association (PS3.8 7.3: the peer waits for the
    rest of the message; only an A-ABORT ends it) and raises :class:`MessageCutShort`.
    """
    pause_reactor(assoc)
    try:
        if assoc.get_handlers(evt.EVT_DIMSE_SENT):  # -vv: pynetdicom's message object is logged
            assoc.dimse.send_msg(_primitive(request), context_id)
        else:
            send_file_request(assoc.dimse, request, context_id)
    except MessageCutShort:
        assoc.abort()
        raise


def next_response(assoc, read_here: bool = True):
    """The next response the peer sent, or None, with pynetdicom's own reactions kept: no response
    aborts the association unless it has ended, and an invalid one is logged and aborts it.

    ``read_here``: read the peer's PDUs in this thread (:func:`take_message`), for a thread sending
    request after request inside one :func:`sending`.
    """
    _, response = take_message(assoc) if read_here else assoc.dimse.get_msg(block=True)
    if response is None:
        assoc._handle_no_response()
        return None
    if not response.is_valid_response:
        assoc._check_received_status(response)
        return None
    return response


def take_message(assoc) -> tuple:
    """pynetdicom's ``dimse.get_msg(block=True)``, the peer's PDUs read in this thread while the DUL
    lends it its socket (:meth:`~pacs_cli.dimse.reactor.EventDrivenDUL.read_until_message`): the
    same (context ID, message), or (None, None) after an abort or ``dimse_timeout`` seconds."""
    dimse = assoc.dimse
    timeout = dimse.dimse_timeout
    waited = assoc.dul.read_until_message(dimse.msg_queue, timeout)
    try:
        return dimse.msg_queue.get(timeout=None if timeout is None else max(0.0, timeout - waited))
    except queue.Empty:
        return None, None


def _primitive(request: FileRequest) -> C_STORE:
    """The C-STORE-RQ primitive pynetdicom's ``send_c_store`` builds for a file."""
    primitive = C_STORE()
    primitive.MessageID = request.MessageID
    primitive.Priority = request.Priority
    primitive.AffectedSOPClassUID = request.AffectedSOPClassUID
    primitive.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    primitive.MoveOriginatorApplicationEntityTitle = request.MoveOriginatorApplicationEntityTitle
    primitive.MoveOriginatorMessageID = request.MoveOriginatorMessageID
    primitive._dataset_path = request._dataset_path  # as send_c_store sets it: pynetdicom's encoder reads it at -vv
    return primitive


@contextmanager
def sending(assoc) -> Iterator[None]:
    """While one thread sends request after request, the association's reactor stays paused.

    pynetdicom's SCU methods pause it before each request, so that it cannot take the response off
    the queue, and resume it after: two wake-ups of its thread per object, measured at 7% of the
    CPU per small object. A storage SCU's peer sends nothing but answers meanwhile (and aborts,
    which reach the waiting thread as no response); resuming at the end lets the reactor handle
    whatever came, and the release. The peer's socket, lent to this thread while it waits for
    responses (:func:`take_message`), goes back to the DUL thread then too.
    """
    try:
        yield
    finally:
        assoc.dul.return_socket()
        assoc._reactor_checkpoint.set()


def pause_reactor(assoc) -> None:
    """As pynetdicom's SCU methods do, unless it is paused already (pynetdicom's own sends resume it)."""
    checkpoint = assoc._reactor_checkpoint
    if checkpoint.is_set():
        checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
