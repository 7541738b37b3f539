"""The direct P-DATA receive path (pacs_cli/dimse/receive.py) against pynetdicom's own decoders,
and against a raw peer that bends every PDV detail it reads."""

from __future__ import annotations

import io
import os
import socket
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.dimse_messages import C_ECHO_RQ, C_FIND_RSP, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode
from pydicom.filewriter import write_file_meta_info

import pdus
from pacs_cli.archive.header import SCAN_BYTES, scan_header
from pacs_cli.dimse.receive import (
    MalformedPDU, StagedStore, command_fields, discard_staged, file_meta, parse_response,
    parse_store_command, primitive_from_fields, split_pdvs,
)
from test_storescp import StoreSCP, make_file, scp_factory  # noqa: F401 - a fixture

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT_LE = ExplicitVRLittleEndian.encode()


def pynetdicom_meta(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    """What pynetdicom's chunked receive writes before the dataset (dimse_messages.decode_msg)."""
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                                               transfer_syntax=syntax))
    return out.getvalue()


@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", generate_uid(), "1." + "2" * 62])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"])
def test_file_meta_is_byte_identical_to_pynetdicoms(sop_instance, syntax):
    assert file_meta(CT_IMAGE, sop_instance, syntax) == pynetdicom_meta(CT_IMAGE, sop_instance, syntax)


def store_command(originator: str | None = None, originator_id: int | None = None, sop_instance="1.2.3.4",
                  message_id=7) -> bytes:
    """A C-STORE-RQ command set as pynetdicom encodes it."""
    primitive = C_STORE()
    primitive.MessageID, primitive.Priority = message_id, 2
    primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID = CT_IMAGE, sop_instance
    primitive.MoveOriginatorApplicationEntityTitle = originator
    primitive.MoveOriginatorMessageID = originator_id
    primitive.DataSet = io.BytesIO(b"\x08\x00\x16\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("originator, originator_id", [(None, None), ("MOVER", 3), ("ODDLEN", 65535)])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.345", generate_uid()])
def test_store_command_parsed_as_pynetdicom_decodes_it(originator, originator_id, sop_instance):
    fields = parse_store_command(store_command(originator, originator_id, sop_instance))
    expected = {"CommandField": 1, "MessageID": 7, "Priority": 2, "CommandDataSetType": 1,
                "AffectedSOPClassUID": CT_IMAGE, "AffectedSOPInstanceUID": sop_instance}
    if originator:
        expected |= {"MoveOriginatorApplicationEntityTitle": originator, "MoveOriginatorMessageID": originator_id}
    assert fields == expected


def store_response(status: int, comment: str | None = None, sop_instance="1.2.3.4") -> bytes:
    """A C-STORE-RSP command set as pynetdicom encodes it."""
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo, primitive.Status = 7, status
    primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID = CT_IMAGE, sop_instance
    primitive.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0x0111])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.345"])
def test_plain_store_response_parsed_as_pynetdicom_decodes_it(status, sop_instance):
    assert parse_response(store_response(status, sop_instance=sop_instance)) == {
        "CommandField": 0x8001, "MessageIDBeingRespondedTo": 7, "CommandDataSetType": 0x0101, "Status": status,
        "AffectedSOPClassUID": CT_IMAGE, "AffectedSOPInstanceUID": sop_instance}


def test_a_response_with_an_error_comment_or_a_request_is_not_a_plain_response():
    assert parse_response(store_response(0xA700, "disk full")) is None
    assert parse_response(store_command()) is None
    assert parse_store_command(store_response(0)) is None


def echo_command() -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


def with_element(command: bytes, element: int, value: bytes) -> bytes:
    """``command`` with one more group 0000 element (the group length is left as it was)."""
    return command + struct.pack("<HHL", 0x0000, element, len(value)) + value


@pytest.mark.parametrize("command", [
    echo_command(),
    with_element(store_command(), 0x0901, b"\x00\x00\x00\x00"),  # an element C-STORE-RQ does not have
    store_command()[:-3],  # cut inside the last element
    store_command().replace(b"\x00\x08\x02\x00\x00\x00\x01\x00", b"\x00\x08\x02\x00\x00\x00\x01\x01"),  # no dataset
    store_command().replace(b"1.2.3.4", b"1.2.\xe9.4"),  # not ASCII
], ids=["C-ECHO-RQ", "foreign element", "truncated", "no dataset", "non-ASCII UID"])
def test_anything_but_a_plain_store_command_is_left_to_pynetdicom(command):
    assert parse_store_command(command) is None


def pdv(context_id: int, control: int, payload: bytes) -> bytes:
    return struct.pack(">LB", len(payload) + 2, context_id) + bytes([control]) + payload


def test_split_pdvs_slices_every_item_without_copying():
    body = bytearray(pdv(1, 3, b"cmd") + pdv(3, 0, b"data" * 10) + pdv(3, 2, b""))
    pdvs = split_pdvs(memoryview(body))
    assert [(cid, bytes(value)) for cid, value in pdvs] == [(1, b"\x03cmd"), (3, b"\x00" + b"data" * 10), (3, b"\x02")]
    assert all(value.obj is body for _, value in pdvs)


@pytest.mark.parametrize("body", [
    struct.pack(">LB", 1, 1) + pdv(1, 3, b"abc"),  # no room for the message control header
    struct.pack(">LB", 0, 1) + pdv(1, 3, b"abc"),
    pdv(1, 3, b"abc")[:-1],  # runs past the PDU
    pdv(1, 3, b"abc") + b"\x00\x00",  # a trailing stub of an item header
], ids=["length 1", "length 0", "overrun", "stub"])
def test_malformed_pdv_items_are_refused(body):
    with pytest.raises(MalformedPDU):
        split_pdvs(memoryview(body))


# --- a raw peer ----------------------------------------------------------------------------------

@pytest.fixture
def scp(tmp_path):
    server = StoreSCP(tmp_path, "--host", "127.0.0.1", "-ta", "5")
    yield server
    server.proc.stop()


def p_data(*items: bytes) -> bytes:
    body = b"".join(items)
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = recv_exactly(sock, 6)
    kind, _, length = struct.unpack(">BBL", header)
    return kind, recv_exactly(sock, length)


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def associated(port: int, window: int | None = 16) -> socket.socket:
    """A connection with context 1 accepted for CT Image Storage in Explicit VR Little Endian, asking to
    have ``window`` requests outstanding, as `pacs storescu` does (these peers send ahead)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(pdus.associate_rq([pdus.presentation_context(1, CT_IMAGE.encode(), [EXPLICIT_LE])], window=window))
    kind, _ = read_pdu(sock)
    assert kind == 0x02  # A-ASSOCIATE-AC
    return sock


def store_status(sock: socket.socket) -> int:
    return store_answer(sock)[1]


def store_answer(sock: socket.socket) -> tuple[int, int]:
    """(Message ID Being Responded To, Status) of the next C-STORE-RSP."""
    kind, body = read_pdu(sock)
    assert kind == 0x04, f"expected a P-DATA-TF with the C-STORE-RSP, got PDU type 0x{kind:02X}"
    fields = {}
    command = split_pdvs(memoryview(body))[0][1][1:]
    offset = 0
    while offset < len(command):
        _, element, length = struct.unpack_from("<HHL", command, offset)
        fields[element] = bytes(command[offset + 8:offset + 8 + length])
        offset += 8 + length
    return struct.unpack("<H", fields[0x0120])[0], struct.unpack("<H", fields[0x0900])[0]


def whole_store(number: int, source: Path) -> bytes:
    """A C-STORE-RQ and its dataset in one P-DATA-TF PDU, as pacs storescu sends a small file."""
    uid, data = dataset_bytes(source)
    return p_data(pdv(1, 3, store_command(sop_instance=uid, message_id=number)), pdv(1, 2, data))


def test_requests_read_together_are_stored_together_and_answered_in_order(scp_factory, tmp_path):
    """Several C-STOREs in one write (a peer with requests outstanding) are read at once and stored in
    one index transaction; each is answered, in order, with its own status: the second copy of an
    instance is refused as a duplicate and the others are kept."""
    scp = scp_factory("--host", "127.0.0.1", "--on-duplicate", "reject")
    sources = [make_file(tmp_path / f"{i}.dcm") for i in range(3)]
    sock = associated(scp.port)
    sock.sendall(b"".join(whole_store(number, source)
                          for number, source in enumerate([sources[0], sources[1], sources[0], sources[2]], 1)))
    assert [store_answer(sock) for _ in range(4)] == [(1, 0x0000), (2, 0x0000), (3, 0x0111), (4, 0x0000)]
    release(sock)
    assert {dataset_bytes(path) for path in scp.files()} == {dataset_bytes(path) for path in sources}
    assert len(scp.rows()) == 3
    assert [line["event"] for line in scp.event_lines() if line["event"].startswith("store")] == [
        "stored", "stored", "store-failed", "stored"]
    assert scp.staging_leftovers() == []


def test_stores_read_together_and_kept_are_answered_together_in_order(scp, tmp_path):
    """Stores read together that all succeed are answered in one write (the path where nothing needs
    pynetdicom's response): each answer its own PDU, with its request's message ID, in order."""
    sources = [make_file(tmp_path / f"{i}.dcm") for i in range(4)]
    sock = associated(scp.port)
    sock.sendall(b"".join(whole_store(number, source) for number, source in enumerate(sources, 11)))
    assert [store_answer(sock) for _ in sources] == [(11, 0x0000), (12, 0x0000), (13, 0x0000), (14, 0x0000)]
    release(sock)
    assert {dataset_bytes(path) for path in scp.files()} == {dataset_bytes(path) for path in sources}
    assert len(scp.rows()) == 4 and scp.staging_leftovers() == []


def open_archive_files(pid: int, archive: Path) -> list[str]:
    """The DICOM files under ``archive`` that process ``pid`` holds open."""
    names = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith(str(archive)) and target.endswith(".dcm"):
            names.append(target)
    return names


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to list a process's open files")
def test_no_received_file_stays_open_once_answered(scp, tmp_path):
    """Each stored file is closed by the time its answer goes out, stored alone or with others read
    together, so a long association never piles up open files."""
    sources = [make_file(tmp_path / f"{i}.dcm") for i in range(4)]
    sock = associated(scp.port)
    sock.sendall(whole_store(1, sources[0]))
    assert store_answer(sock) == (1, 0x0000)
    sock.sendall(b"".join(whole_store(number, source) for number, source in enumerate(sources[1:], 2)))
    assert [store_answer(sock) for _ in sources[1:]] == [(2, 0x0000), (3, 0x0000), (4, 0x0000)]
    assert open_archive_files(scp.proc.pid, scp.archive) == []
    release(sock)
    assert len(scp.rows()) == 4 and scp.staging_leftovers() == []


def test_stores_read_whole_are_answered_before_waiting_for_the_rest(scp, tmp_path):
    """A peer that sends a whole C-STORE, then the command of a second and half of its dataset, and
    waits: the first is stored and answered at once (nothing is held back while the receiver waits for
    the network), the second once its dataset is complete."""
    sources = [make_file(tmp_path / f"{i}.dcm") for i in range(2)]
    sock = associated(scp.port)
    uid, data = dataset_bytes(sources[1])
    second = p_data(pdv(1, 2, data))
    sock.sendall(whole_store(1, sources[0]) + p_data(pdv(1, 3, store_command(sop_instance=uid, message_id=2)))
                 + second[:len(second) // 2])
    assert store_answer(sock) == (1, 0x0000)
    assert len(scp.rows()) == 1
    sock.sendall(second[len(second) // 2:])
    assert store_answer(sock) == (2, 0x0000)
    release(sock)
    assert len(scp.rows()) == 2 and scp.staging_leftovers() == []


def store_in_pdus(number: int, source: Path, size: int = 100_000) -> bytes:
    """A C-STORE-RQ as pacs storescu sends a large file: the command, then its dataset in PDUs of at
    most ``size`` bytes."""
    uid, data = dataset_bytes(source)
    pdus = [p_data(pdv(1, 3, store_command(sop_instance=uid, message_id=number)))]
    pdus += [p_data(pdv(1, 2 if start + size >= len(data) else 0, data[start:start + size]))
             for start in range(0, len(data), size)]
    return b"".join(pdus)


def test_large_stores_sent_ahead_are_answered_in_order_and_none_waits_for_the_network(scp, tmp_path):
    """Objects whose PDUs are longer than a read ahead, sent while earlier ones are unanswered (as a
    peer with an asynchronous operations window sends them): all stored and answered in order; and
    when the peer stops mid-PDU, those complete before it are answered without waiting for the rest."""
    sources = [make_file(tmp_path / f"{i}.dcm", rows=rows) for i, rows in enumerate([256, 256, 256, 240])]
    sock = associated(scp.port)
    last = store_in_pdus(4, sources[3], size=120_000)  # one PDU, its header read with the last one's end
    sock.sendall(b"".join(store_in_pdus(number, source) for number, source in enumerate(sources[:3], 1))
                 + last[:len(last) - 1000])
    assert [store_answer(sock) for _ in range(3)] == [(1, 0x0000), (2, 0x0000), (3, 0x0000)]
    sock.sendall(last[len(last) - 1000:])
    assert store_answer(sock) == (4, 0x0000)
    release(sock)
    assert {dataset_bytes(path) for path in scp.files()} == {dataset_bytes(path) for path in sources}
    assert len(scp.rows()) == 4 and scp.staging_leftovers() == []


def test_pdus_of_every_length_carry_their_own_bytes_into_the_file(scp, tmp_path):
    """Long P-DATA-TF PDUs are read into one buffer the socket reuses: objects of distinct pixels in
    PDUs longer than a read ahead, each shorter than the last, and short ones read whole with their
    neighbours, arrive byte-identical (zero pixels would hide bytes left over from an earlier PDU)."""
    sources = []
    for number in range(4):
        path = make_file(tmp_path / f"{number}.dcm", rows=256)
        ds = pydicom.dcmread(path)
        ds.PixelData = os.urandom(len(ds.PixelData))
        ds.save_as(path, enforce_file_format=True)
        sources.append(path)
    sizes = [130_000, 100_000, 70_000, 9_000]  # within the 128 KiB pacs storescp offers
    sock = associated(scp.port)
    sock.sendall(b"".join(store_in_pdus(number, source, size)
                          for number, (source, size) in enumerate(zip(sources, sizes), 1)))
    assert [store_answer(sock) for _ in sources] == [(number, 0x0000) for number in range(1, 5)]
    release(sock)
    assert {dataset_bytes(path) for path in scp.files()} == {dataset_bytes(path) for path in sources}


def test_stores_read_together_with_a_release_are_answered_before_it(scp, tmp_path):
    """Two C-STOREs and the A-RELEASE-RQ in one write: both answered, then the release."""
    sources = [make_file(tmp_path / f"{i}.dcm") for i in range(2)]
    sock = associated(scp.port)
    sock.sendall(whole_store(1, sources[0]) + whole_store(2, sources[1]) + struct.pack(">BBL", 0x05, 0, 4) + bytes(4))
    assert [store_answer(sock) for _ in range(2)] == [(1, 0x0000), (2, 0x0000)]
    assert read_pdu(sock)[0] == 0x06  # A-RELEASE-RP
    sock.close()
    assert len(scp.rows()) == 2 and scp.staging_leftovers() == []


def release(sock: socket.socket) -> None:
    sock.sendall(struct.pack(">BBL", 0x05, 0, 4) + bytes(4))
    assert read_pdu(sock)[0] == 0x06  # A-RELEASE-RP
    sock.close()


def dataset_bytes(path: Path) -> tuple[str, bytes]:
    """The SOP Instance UID and the bytes after the File Meta group of a Part 10 file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    raw = path.read_bytes()
    offset = 132 + 12 + struct.unpack_from("<L", raw, 140)[0]
    return ds.SOPInstanceUID, raw[offset:]


def test_fragments_across_pdus_and_pdvs_are_stored_byte_identical(scp, tmp_path):
    """One command in two fragments (pynetdicom's path), then one in one fragment (the direct one),
    datasets cut into PDVs of odd sizes, several PDVs in one PDU."""
    sources = [make_file(tmp_path / f"{i}.dcm", rows=64) for i in range(2)]
    sock = associated(scp.port)
    for number, source in enumerate(sources, 1):
        uid, data = dataset_bytes(source)
        command = store_command(sop_instance=uid, message_id=number)
        if number == 1:
            sock.sendall(p_data(pdv(1, 1, command[:20]), pdv(1, 3, command[20:])))
        else:
            sock.sendall(p_data(pdv(1, 3, command)))
        pieces = [data[i:i + 1001] for i in range(0, len(data), 1001)]
        for start in range(0, len(pieces), 3):
            batch = pieces[start:start + 3]
            last = start + 3 >= len(pieces)
            sock.sendall(p_data(*(pdv(1, 2 if last and i == len(batch) - 1 else 0, piece)
                                  for i, piece in enumerate(batch))))
        assert store_status(sock) == 0x0000
    release(sock)
    stored = {dataset_bytes(path) for path in scp.files()}
    assert stored == {dataset_bytes(path) for path in sources}
    assert len(scp.rows()) == 2
    for path in scp.files():
        uid, _ = dataset_bytes(path)
        assert path.read_bytes().startswith(pynetdicom_meta(CT_IMAGE, uid, ExplicitVRLittleEndian))
    assert scp.staging_leftovers() == []


@pytest.mark.parametrize("fragment", [1001, SCAN_BYTES - 200, SCAN_BYTES + 5])
def test_the_head_kept_while_staging_is_the_files_first_bytes(tmp_path, monkeypatch, fragment):
    """The archive scans the header from what the receiver kept, instead of reading the staged file back:
    the same bytes, the same size, the same values, however the fragments fall across SCAN_BYTES."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    uid, data = dataset_bytes(make_file(tmp_path / "source.dcm", rows=256))
    fields = {"AffectedSOPClassUID": CT_IMAGE, "AffectedSOPInstanceUID": uid}
    staged = StagedStore(fields, 1, ExplicitVRLittleEndian, chunked=True)
    for start in range(0, len(data), fragment):
        staged.write(memoryview(data)[start:start + fragment])
    primitive = staged.message_to_primitive()
    primitive._dataset_file.flush()
    written = Path(primitive._dataset_path).read_bytes()
    try:
        assert len(written) > SCAN_BYTES
        assert primitive._pacs_head.data == written[:SCAN_BYTES]
        assert primitive._pacs_head.size == len(written)
        keywords = ("PatientID", "StudyInstanceUID", "SOPInstanceUID", "TransferSyntaxUID")
        from_head = scan_header(primitive._dataset_path, keywords, primitive._pacs_head)
        assert from_head == scan_header(primitive._dataset_path, keywords) and from_head["SOPInstanceUID"] == uid
    finally:
        discard_staged(primitive._dataset_file)


@pytest.mark.parametrize("bad_pdu", [
    p_data(struct.pack(">LB", 1, 1) + pdv(1, 3, store_command())),
    p_data(pdv(1, 3, store_command())[:-2]),
], ids=["PDV without control header", "PDV overrunning the PDU"])
def test_malformed_p_data_is_answered_with_an_a_abort(scp, bad_pdu):
    sock = associated(scp.port)
    sock.sendall(bad_pdu)
    assert read_pdu(sock)[0] == 0x07  # A-ABORT (PS3.8 9.3.8, AA-8 for an invalid PDU)
    sock.close()
    _, err = scp.stop()
    assert "Traceback" not in err


def test_a_new_command_before_the_dataset_ends_aborts_and_leaves_nothing(scp, tmp_path):
    """PS3.7 6.3.1: a message's fragments are not interleaved; the half-received object is removed."""
    source = make_file(tmp_path / "a.dcm", rows=64)
    uid, data = dataset_bytes(source)
    sock = associated(scp.port)
    sock.sendall(p_data(pdv(1, 3, store_command(sop_instance=uid)), pdv(1, 0, data[:500])))
    sock.sendall(p_data(pdv(1, 3, store_command(sop_instance=generate_uid()))))
    assert read_pdu(sock)[0] == 0x07
    sock.close()
    _, err = scp.stop()
    assert "Traceback" not in err
    assert scp.rows() == [] and scp.staging_leftovers() == []


def find_response(status: int, identifier: bool, comment: str | None = None) -> bytes:
    """A C-FIND-RSP command set as pynetdicom encodes it."""
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo, primitive.Status = 9, status
    primitive.AffectedSOPClassUID = STUDY_ROOT_FIND
    primitive.Identifier = io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ") if identifier else None
    primitive.ErrorComment = comment
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("status,identifier,data_set_type", [(0xFF00, True, 0x0001), (0x0000, False, 0x0101),
                                                             (0xFE00, False, 0x0101)])
def test_find_response_parsed_as_pynetdicom_decodes_it(status, identifier, data_set_type):
    assert parse_response(find_response(status, identifier)) == {
        "CommandField": 0x8020, "MessageIDBeingRespondedTo": 9, "CommandDataSetType": data_set_type,
        "Status": status, "AffectedSOPClassUID": STUDY_ROOT_FIND}


@pytest.mark.parametrize("command, primitive_class", [(store_command(), C_STORE), (find_response(0xFF00, True), C_FIND)],
                         ids=["C-STORE-RQ", "C-FIND-RSP"])
def test_primitives_from_parsed_fields_are_the_ones_pynetdicom_decodes(command, primitive_class):
    """Twice: the second one takes its SOP Class UID from the remembered check."""
    message = {C_STORE: C_STORE_RQ, C_FIND: C_FIND_RSP}[primitive_class]()
    message.command_set = decode(io.BytesIO(command), True, True)
    expected = message.message_to_primitive()
    for _ in range(2):
        ours = primitive_from_fields(command_fields(command), 1, primitive_class)
        for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID", "MessageID", "MessageIDBeingRespondedTo",
                        "Priority", "Status", "MoveOriginatorApplicationEntityTitle"):
            if hasattr(expected, keyword):
                assert getattr(ours, keyword) == getattr(expected, keyword), keyword
                assert type(getattr(ours, keyword)) is type(getattr(expected, keyword)), keyword


@pytest.mark.parametrize("sop_instance", ["1.2.3.4", generate_uid(), "1.02.3", "1.2.x", "9" * 64])
def test_the_instance_uid_is_taken_as_pynetdicoms_setter_takes_it(sop_instance):
    """Conformant UIDs skip the setter; the others still go through it and get its warning."""
    command = store_command(sop_instance=sop_instance)
    message = C_STORE_RQ()
    message.command_set = decode(io.BytesIO(command), True, True)
    expected = message.message_to_primitive().AffectedSOPInstanceUID
    ours = primitive_from_fields(command_fields(command), 1).AffectedSOPInstanceUID
    assert (ours, type(ours)) == (expected, type(expected))


def test_an_instance_uid_the_setter_refuses_is_refused():
    with pytest.raises(ValueError, match="must not exceed 64 characters"):
        primitive_from_fields({"CommandField": 1, "AffectedSOPInstanceUID": "9" * 65}, 1)


def test_a_find_response_with_an_error_comment_is_left_to_pynetdicom():
    assert parse_response(find_response(0xA700, False, "too many matches")) is None


def test_a_store_sent_before_the_acceptor_is_established_is_answered(tmp_path):
    """A peer may send its first C-STORE the moment the A-ASSOCIATE-AC arrives, while the acceptor's
    thread is still in its EVT_ACCEPTED handlers (pynetdicom marks the association established only
    after them). The request waits for that thread, and is answered (the fuzz battery once saw one
    stored and never answered)."""
    import time

    from pynetdicom import evt
    from pynetdicom.presentation import build_context

    from pacs_cli.dimse.server import Server
    from pacs_cli.options import Listener, Timeouts

    stored = []

    def store(event):
        stored.append((time.monotonic(), event.request.AffectedSOPInstanceUID))
        return 0x0000

    accepted = []
    handlers = [(evt.EVT_C_STORE, store), (evt.EVT_ACCEPTED, lambda event: (time.sleep(0.5), accepted.append(1)))]
    listener = Listener("127.0.0.1", 0, "PACS", Timeouts(acse=5, dimse=5), 65536, 4)
    server = Server(listener, [build_context(CT_IMAGE, ExplicitVRLittleEndian)], handlers)
    server.start()
    try:
        uid, data = dataset_bytes(make_file(tmp_path / "a.dcm", rows=16))
        sock = associated(server.address[1])
        sock.sendall(p_data(pdv(1, 3, store_command(sop_instance=uid)), pdv(1, 2, data)))
        assert store_status(sock) == 0x0000
        release(sock)
    finally:
        server.stop(grace=1)
    assert [sop for _, sop in stored] == [uid] and accepted == [1]
