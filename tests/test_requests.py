"""A C-STORE-RQ sent from a file must put on the wire, PDU for PDU, what pynetdicom's own encoder sends."""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import build_context, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage

from pacs_cli.dimse import requests, send
from pacs_cli.dimse.ae import associate
from pacs_cli.dimse.reactor import encode_pdata_tf
from pacs_cli.options import Connection, Peer, Timeouts

CT = "1.2.840.10008.5.1.4.1.1.2"
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


class CapturingDUL:
    """What a DIMSE provider needs to send: the peer's maximum PDU length and a DUL to queue P-DATA on."""

    def __init__(self, maximum_pdu_size: int, on_send=lambda primitive: None):
        self.maximum_pdu_size = maximum_pdu_size
        self.dul = self
        self.sent = []
        self._on_send = on_send

    def write_pdata(self, values) -> bool:
        """Never written in the sending thread (as over TLS): every PDU is queued through send_pdu."""
        return False

    def write_pdus(self, pdus) -> bool:
        return False

    def send_pdu(self, primitive) -> None:
        self.sent.append(primitive)
        self._on_send(primitive)


class WritingDUL(CapturingDUL):
    """A DUL that lets the sending thread write: what it writes, PDU by PDU, as the socket gets it."""

    def write_pdus(self, pdus) -> bool:
        self.sent += [encode_pdata_tf(values) for values in pdus]
        return True


def request(path: Path | None = None, offset: int = 0, message_id=7, priority=2, sop_class=CT,
            sop_instance="1.2.3.4.5", originator_aet=None, originator_id=None) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.Priority = priority
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.MoveOriginatorApplicationEntityTitle = originator_aet
    primitive.MoveOriginatorMessageID = originator_id
    if path is not None:
        primitive._dataset_path = (path, offset)
    return primitive


def pynetdicom_pdus(primitive: C_STORE, limit: int, context_id: int = 3) -> list[bytes]:
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return [P_DATA_TF(pdata).encode() for pdata in message.encode_msg(context_id, limit)]


def our_pdus(primitive: C_STORE, limit: int, context_id: int = 3) -> list[bytes]:
    """The PDUs queued for the DUL's thread (each value copied out of the buffer the file is read into)."""
    dimse = CapturingDUL(limit)
    requests.send_file_request(dimse, primitive, context_id)
    return [P_DATA_TF(pdata).encode() for pdata in dimse.sent]


def written_pdus(primitive: C_STORE, limit: int, context_id: int = 3) -> list[bytes]:
    """The PDUs written by the sending thread itself, read after read from one reused buffer."""
    dimse = WritingDUL(limit)
    requests.send_file_request(dimse, primitive, context_id)
    return dimse.sent


def file_with_dataset(tmp_path: Path, length: int, offset: int = 300) -> Path:
    """``offset`` bytes standing for a File Meta, then ``length`` dataset bytes (content is not looked at)."""
    path = tmp_path / f"{length}.dcm"
    path.write_bytes(b"M" * offset + bytes(range(256)) * (length // 256) + bytes(range(length % 256)))
    return path


def part10_file(path: Path, pixel_bytes: int = 40_000, sop_instance: str | None = None) -> Path:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, sop_instance or generate_uid()
    ds.PatientID, ds.Modality = "REQ", "CT"
    ds.Rows, ds.Columns, ds.BitsAllocated = 100, pixel_bytes // 200, 16
    ds.PixelData = os.urandom(pixel_bytes)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CT, ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


# --- the command set --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sop_class", [CT, "1.2.3", "1.2.34"])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4.5", "1.2.3.4.56", "1." + "2" * 62])
@pytest.mark.parametrize("message_id, priority", [(1, 2), (65535, 0), (300, 1)])
def test_command_matches_pynetdicoms_encoder(tmp_path, sop_class, sop_instance, message_id, priority):
    primitive = request(file_with_dataset(tmp_path, 10), 300, message_id, priority, sop_class, sop_instance)
    assert our_pdus(primitive, 16384)[0] == pynetdicom_pdus(primitive, 16384)[0]


@pytest.mark.parametrize("originator_aet, originator_id", [
    ("MOVESCU", 9), ("MOVE", 65535), ("A", 1), ("SIXTEEN-CHARS-AE", 2), ("", 3), ("ORIGIN", None), (None, 4),
])
def test_command_with_move_originator_matches_pynetdicoms_encoder(tmp_path, originator_aet, originator_id):
    primitive = request(file_with_dataset(tmp_path, 10), 300, originator_aet=originator_aet,
                        originator_id=originator_id)
    ours = our_pdus(primitive, 16384)[0]
    assert ours == pynetdicom_pdus(primitive, 16384)[0]
    assert (b"\x00\x00\x30\x10" in ours) == (originator_aet is not None)  # (0000,1030) Move Originator AE


# --- the dataset's fragments -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [16384, 4096, 1000, 0])
@pytest.mark.parametrize("length", [0, 1, 2, 4090, 4091, 4096, 3 * 4090, 3 * 4090 + 2, 70_000, 600_000])
def test_pdus_are_pynetdicoms(tmp_path, limit, length):
    primitive = request(file_with_dataset(tmp_path, length), 300)
    expected = pynetdicom_pdus(primitive, limit)
    assert our_pdus(primitive, limit) == expected
    assert written_pdus(primitive, limit) == expected


def test_a_peer_maximum_smaller_than_the_command_fragments_it_as_pynetdicom_does(tmp_path):
    primitive = request(file_with_dataset(tmp_path, 40), 300, originator_aet="MOVESCU", originator_id=2)
    for limit in (7, 50, 100):
        assert our_pdus(primitive, limit) == pynetdicom_pdus(primitive, limit)


def test_reads_that_fall_short_are_continued(tmp_path, monkeypatch):
    primitive = request(file_with_dataset(tmp_path, 300_000), 300)
    expected = pynetdicom_pdus(primitive, 16384)
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: preadv(fd, [buffers[0][:1000]], offset))
    assert our_pdus(primitive, 16384) == expected


def test_a_file_that_cannot_be_opened_sends_nothing(tmp_path):
    dimse = CapturingDUL(16384)
    with pytest.raises(FileNotFoundError):
        requests.send_file_request(dimse, request(tmp_path / "gone.dcm", 300), 1)
    assert dimse.sent == []


def test_a_file_cut_short_after_the_command_went_out_says_so(tmp_path):
    path = file_with_dataset(tmp_path, 600_000)
    dimse = CapturingDUL(16384, on_send=lambda primitive: os.truncate(path, 5_000))
    with pytest.raises(requests.MessageCutShort, match="shorter"):
        requests.send_file_request(dimse, request(path, 300), 1)
    first_read = requests.READ_BYTES // (16384 - requests.PDV_OVERHEAD)
    assert len(dimse.sent) == 1 + first_read  # the command and the first read: nothing of what is not there


def test_a_peer_maximum_with_no_room_for_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no room"):
        requests.send_file_request(CapturingDUL(6), request(file_with_dataset(tmp_path, 10), 300), 1)


# --- which requests take this path -----------------------------------------------------------------------


def test_only_requests_whose_dataset_is_a_file_are_taken(tmp_path):
    from io import BytesIO

    assert requests.is_file_request(request(tmp_path / "a.dcm", 300))
    in_memory = request()
    in_memory.DataSet = BytesIO(b"\x08\x00\x18\x00")
    assert not requests.is_file_request(in_memory)  # a converted dataset: pynetdicom's path
    response = C_STORE()
    response.MessageIDBeingRespondedTo, response.Status = 7, 0
    response._dataset_path = (tmp_path / "a.dcm", 300)
    assert not requests.is_file_request(response)
    echo = C_ECHO()
    echo.MessageID = 1
    assert not requests.is_file_request(echo)
    no_id = request(tmp_path / "a.dcm", 300)
    no_id.MessageID = None
    assert not requests.is_file_request(no_id)


# --- over an association ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dimse_logging", [False, True])
def test_store_file_arrives_byte_identical(pynetdicom_scp, tmp_path, monkeypatch, dimse_logging):
    """Both ways: our encoder, and pynetdicom's when an EVT_DIMSE_SENT handler (-vv logging) is bound."""
    received = []

    def on_store(event):
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    port = pynetdicom_scp(contexts=[CTImageStorage], handlers=[(evt.EVT_C_STORE, on_store)], maximum_pdu_size=4096)
    fast = []
    monkeypatch.setattr(requests, "send_file_request",
                        lambda *args, send=requests.send_file_request: fast.append(1) or send(*args))
    handlers = [(evt.EVT_DIMSE_SENT, lambda event: None)] if dimse_logging else []
    paths = [part10_file(tmp_path / f"{n}.dcm", pixel_bytes=20_000 * n) for n in (1, 2, 3)]
    connection = Connection(Peer("127.0.0.1", port, "PYNETDICOM"), "PACS", Timeouts(), 16384, None)
    with associate(connection, [build_context(CTImageStorage, ExplicitVRLittleEndian)], handlers) as assoc, \
            requests.sending(assoc):
        context_id = assoc.accepted_contexts[0].context_id
        for number, path in enumerate(paths, start=1):
            _, offset = split_dataset(path)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            request = requests.FileRequest(number, requests.LOW, ds.SOPClassUID, ds.SOPInstanceUID, (str(path), offset))
            rsp = requests.store_file(assoc, context_id, request)
            assert rsp.Status == 0x0000 and rsp.MessageIDBeingRespondedTo == number
    assert received == [path.read_bytes()[split_dataset(path)[1]:] for path in paths]
    assert len(fast) == (0 if dimse_logging else len(paths))


def test_the_waiting_thread_reads_its_own_responses_then_gives_the_socket_back(dcmtk_storescp, tmp_path):
    """Against a peer that grants no window (DCMTK's storescp), each C-STORE-RSP is read by the thread
    waiting for it, not handed over by the DUL thread; once sending ends the DUL thread reads again, so
    the release completes."""
    port, out = dcmtk_storescp
    paths = [part10_file(tmp_path / f"{n}.dcm", pixel_bytes=5_000) for n in range(3)]
    connection = Connection(Peer("127.0.0.1", port, "DCMTK-SCP"), "PACS", Timeouts(), 16384, None)
    queued_by = []
    with associate(connection, [build_context(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
        queue_put = assoc.dimse.msg_queue.put
        assoc.dimse.msg_queue.put = lambda item, *args: queued_by.append(threading.get_ident()) or queue_put(item, *args)
        with requests.sending(assoc):
            for number, path in enumerate(paths, start=1):
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                request = requests.FileRequest(number, requests.LOW, ds.SOPClassUID, ds.SOPInstanceUID,
                                               (str(path), split_dataset(path)[1]))
                requests.send_store_request(assoc, assoc.accepted_contexts[0].context_id, request)
                assert requests.next_response(assoc).Status == 0x0000
            assert assoc.dul._lent
        assert not assoc.dul._lent
    assert assoc.is_released and not assoc.is_aborted
    assert queued_by[1:] == [threading.get_ident()] * (len(paths) - 1)  # the first may come before the lending
    assert len(list(out.iterdir())) == len(paths)


def test_a_response_that_never_comes_ends_the_wait_after_the_dimse_timeout(pynetdicom_scp, tmp_path):
    """Read in the waiting thread or not, the wait for a C-STORE-RSP lasts -td, once: no answer, the
    association aborted."""
    answered = threading.Event()
    port = pynetdicom_scp(contexts=[CTImageStorage],
                          handlers=[(evt.EVT_C_STORE, lambda event: answered.wait(5) and 0x0000)])
    path = part10_file(tmp_path / "slow.dcm", pixel_bytes=1_000)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    connection = Connection(Peer("127.0.0.1", port, "PYNETDICOM"), "PACS", Timeouts(dimse=0.5), 16384, None)
    try:
        with associate(connection, [build_context(CTImageStorage, ExplicitVRLittleEndian)]) as assoc, \
                requests.sending(assoc):
            request = requests.FileRequest(1, requests.LOW, ds.SOPClassUID, ds.SOPInstanceUID,
                                           (str(path), split_dataset(path)[1]))
            requests.send_store_request(assoc, assoc.accepted_contexts[0].context_id, request)
            started = time.monotonic()
            assert requests.next_response(assoc) is None
            waited = time.monotonic() - started
    finally:
        answered.set()
    assert 0.5 <= waited < 0.9, waited
    assert assoc.is_aborted


# --- the scan that finds each file's UIDs and dataset offset ---------------------------------------------


def test_quick_header_reads_what_pydicom_reads():
    """Every file the quick reader takes gets the UIDs and dataset offset pydicom (and split_dataset) gives."""
    taken = 0
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        with path.open("rb") as fp:
            quick = send._quick_header(fp.read(send.QUICK_HEADER_BYTES))
            if quick is None:
                continue
            fp.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                slow = send._pydicom_header(fp)
        taken += 1
        assert quick == tuple(None if value is None else value if isinstance(value, int) else str(value)
                              for value in slow), path
        assert quick.offset == split_dataset(path)[1], path
    assert taken > 100  # the usual files do not need pydicom
