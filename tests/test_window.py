"""The asynchronous operations window (PS3.7 D.3.3.3): `pacs storescu` keeps several C-STOREs outstanding
when the peer accepts it, `pacs storescp` grants it for storage, and nothing changes with peers that do not.

The peer that proves the sender pipelines is a raw acceptor: it reads two whole C-STORE requests before it
answers any (a sender waiting for each response would leave it waiting), and answers them out of order.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, build_context
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation
from pynetdicom.dsutils import decode, encode

from battery import A_RELEASE_RQ, A_RELEASE_RP, COMMAND, LAST, P_DATA_TF, command_set, pdvs
from conftest import free_port
from test_storescp import dataset_bytes, make_file, scp_factory  # noqa: F401 - a fixture
from test_storescu import storescu

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
SUCCESS = 0x0000
COERCION = 0xB000  # a warning (PS3.4 B.2.3): the file counts as stored, reported as such


def item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


class RawAcceptor(threading.Thread):
    """Accepts one association, granting ``window`` outstanding requests, and answers C-STOREs as
    ``answer`` says: it gets the messages read so far (dicts of the command's fields and the dataset
    bytes) and returns the responses to send now, as (message ID, status), or None to read one more."""

    def __init__(self, window: int, answer):
        super().__init__(daemon=True)
        self.window, self.answer = window, answer
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(15)
        self.received: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(10)
            with conn:
                self._serve(conn)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.listener.close()

    def _serve(self, conn: socket.socket) -> None:
        kind, body = _read_pdu(conn)
        rq = A_ASSOCIATE_RQ()
        rq.decode(struct.pack(">BBI", kind, 0, len(body)) + body)
        conn.sendall(self._associate_ac(rq))
        waiting: list[dict] = []
        while True:
            message = _read_message(conn)
            if message is None:  # A-RELEASE-RQ
                conn.sendall(struct.pack(">BBI", A_RELEASE_RP, 0, 4) + bytes(4))
                return
            self.received.append(message)
            waiting.append(message)
            responses = self.answer(waiting)
            if responses is None:
                continue
            for message_id, status in responses:
                answered = next((m for m in waiting if m["MessageID"] == message_id), waiting[0])
                waiting = [m for m in waiting if m is not answered]
                command = command_set(AffectedSOPClassUID=answered["AffectedSOPClassUID"], CommandField=0x8001,
                                      MessageIDBeingRespondedTo=message_id, CommandDataSetType=0x0101,
                                      Status=status, AffectedSOPInstanceUID=answered["AffectedSOPInstanceUID"])
                conn.sendall(b"".join(pdvs(answered["context_id"], command, COMMAND)))

    def _associate_ac(self, rq: A_ASSOCIATE_RQ) -> bytes:
        contexts = b"".join(item(0x21, struct.pack(">BBBB", cx.context_id, 0, 0, 0)
                                 + item(0x40, cx.transfer_syntax[0].encode()))
                            for cx in rq.presentation_context)
        user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.9")
                    + item(0x53, struct.pack(">HH", self.window, 1)))
        body = (struct.pack(">HH", 1, 0) + rq.called_ae_title.encode().ljust(16)
                + rq.calling_ae_title.encode().ljust(16) + bytes(32)
                + item(0x10, b"1.2.840.10008.3.1.1.1") + contexts + user)
        return struct.pack(">BBI", 0x02, 0, len(body)) + body


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the sender closed the connection")
        data += chunk
    return bytes(data)


def _read_pdu(conn: socket.socket) -> tuple[int, bytes]:
    header = _read_exactly(conn, 6)
    return header[0], _read_exactly(conn, struct.unpack(">I", header[2:])[0])


def _read_message(conn: socket.socket) -> dict | None:
    """One whole C-STORE-RQ (command and dataset), or None for an A-RELEASE-RQ."""
    command, dataset, context_id = bytearray(), bytearray(), None
    fields = None
    while True:
        kind, body = _read_pdu(conn)
        if kind == A_RELEASE_RQ:
            return None
        assert kind == P_DATA_TF, f"PDU type {kind}"
        offset = 0
        while offset < len(body):
            length, context_id, control = struct.unpack(">IBB", body[offset:offset + 6])
            value = body[offset + 6:offset + 4 + length]
            offset += 4 + length
            if control & COMMAND:
                command += value
                if control & LAST:
                    ds = decode(BytesIO(bytes(command)), True, True)
                    fields = {k: ds[k].value for k in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID")}
            else:
                dataset += value
                if control & LAST:
                    return {**fields, "context_id": context_id, "dataset": bytes(dataset)}


def two_then_in_reverse(waiting: list[dict]):
    """Answer nothing until two requests are outstanding, then the later one first, with a warning."""
    if len(waiting) < 2:
        return None
    return [(waiting[1]["MessageID"], COERCION), (waiting[0]["MessageID"], SUCCESS)]


def files(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    return [make_file(folder / f"{i}.dcm") for i in range(count)]


def test_requests_pipelined_and_answered_out_of_order(script_runner, tmp_path):
    sources = files(tmp_path / "out", 4)
    peer = RawAcceptor(2, two_then_in_reverse)
    peer.start()
    report = tmp_path / "report.json"
    result = storescu(script_runner, peer.port, tmp_path / "out", "-v", "--report", report)
    peer.join(15)
    assert peer.error is None, peer.error
    assert result.returncode == 0, result.stderr
    assert "up to 2 C-STORE requests outstanding" in result.stderr
    assert [m["dataset"] for m in peer.received] == [dataset_bytes(p) for p in sources]  # in order, byte-identical
    outcomes = {e["path"]: e["outcome"] for e in json.loads(report.read_text())["files"]}
    assert outcomes == {str(p): "stored" if n % 2 == 0 else "warning" for n, p in enumerate(sources)}


def test_a_file_sent_decoded_waits_for_the_responses_outstanding(script_runner, tmp_path):
    """A raw dataset (no file meta) is decoded and sent by pynetdicom, which takes the next response as
    its own: the first file's warning must stay the first file's."""
    folder = tmp_path / "out"
    folder.mkdir()
    first = make_file(folder / "1.dcm")
    raw = make_file(folder / "2.dcm")
    raw.write_bytes(encode(pydicom.dcmread(raw), True, True))  # the dataset alone
    last = make_file(folder / "3.dcm")
    warned = pydicom.dcmread(first).SOPInstanceUID
    peer = RawAcceptor(2, lambda waiting: [(waiting[0]["MessageID"], COERCION if
                                             waiting[0]["AffectedSOPInstanceUID"] == warned else SUCCESS)])
    peer.start()
    report = tmp_path / "report.json"
    result = storescu(script_runner, peer.port, folder, "--report", report)
    peer.join(15)
    assert peer.error is None, peer.error
    assert result.returncode == 0, result.stderr
    outcomes = {e["path"]: e["outcome"] for e in json.loads(report.read_text())["files"]}
    assert outcomes == {str(first): "warning", str(raw): "stored", str(last): "stored"}


def test_window_one_waits_for_each_response(script_runner, tmp_path):
    """--window 1 proposes nothing: the peer, waiting for a second request, never gets one."""
    files(tmp_path / "out", 2)
    peer = RawAcceptor(2, two_then_in_reverse)
    peer.start()
    result = storescu(script_runner, peer.port, tmp_path / "out", "--window", "1", "-td", "3")
    peer.join(15)
    assert result.returncode == 1  # associated, then a file failed: not an unreachable peer (3)
    assert len(peer.received) == 1
    assert "no C-STORE response" in result.stderr


def test_a_response_to_a_request_never_sent_aborts(script_runner, tmp_path):
    files(tmp_path / "out", 2)
    peer = RawAcceptor(2, lambda waiting: [(999, SUCCESS)])
    peer.start()
    result = storescu(script_runner, peer.port, tmp_path / "out")
    peer.join(15)
    assert result.returncode == 1
    assert "answered a request that was not sent (Message ID 999)" in result.stderr
    assert "Traceback" not in result.stderr


def test_pipelined_files_resent_after_an_abort_are_stored_once(script_runner, scp_factory, tmp_path):
    """The receiver aborts after every 5th object with more outstanding: those are sent again."""
    sources = files(tmp_path / "out", 23)
    scp = scp_factory("--fault-abort-after", "5")
    report = tmp_path / "report.json"
    result = storescu(script_runner, scp.port, tmp_path / "out", "--retries", "6", "--retry-delay", "0",
                      "--report", report)
    assert result.returncode == 0, result.stderr
    entries = json.loads(report.read_text())["files"]
    assert sorted(e["path"] for e in entries) == sorted(map(str, sources))  # each file reported once
    assert {e["outcome"] for e in entries} == {"stored"}
    rows = [row["sop_instance_uid"] for row in scp.rows()]
    assert len(rows) == len(set(rows)) == 23
    assert scp.staging_leftovers() == []


def test_pacs_storescu_to_pacs_storescp_negotiates_a_window(script_runner, scp_factory, tmp_path):
    sources = files(tmp_path / "out", 3)
    scp = scp_factory()
    result = storescu(script_runner, scp.port, tmp_path / "out", "-v", "--window", "4")
    assert result.returncode == 0, result.stderr
    assert "up to 4 C-STORE requests outstanding" in result.stderr
    assert len(scp.rows()) == len(sources)


@pytest.mark.dcmtk
def test_dcmtk_storescp_keeps_the_synchronous_mode(script_runner, dcmtk_storescp, tmp_path):
    files(tmp_path / "out", 3)
    port, out = dcmtk_storescp
    result = storescu(script_runner, port, tmp_path / "out", "-v")
    assert result.returncode == 0, result.stderr
    assert "outstanding" not in result.stderr
    assert len([p for p in Path(out).rglob("*") if p.is_file()]) == 3


def granted(port: int, proposed: tuple[int, int] | None, contexts: list[str]) -> tuple[int, int] | None:
    """What `pacs storescp` answers to a pynetdicom requestor's proposal: (invoked, performed), None without."""
    ae = AE(ae_title="REQUESTOR")
    ae.requested_contexts = [build_context(uid) for uid in contexts]
    negotiation = []
    if proposed is not None:
        negotiation = [AsynchronousOperationsWindowNegotiation()]
        negotiation[0].maximum_number_operations_invoked, negotiation[0].maximum_number_operations_performed = proposed
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=negotiation)
    try:
        assert assoc.is_established
        answers = [i for i in assoc.acceptor.user_information
                   if isinstance(i, AsynchronousOperationsWindowNegotiation)]
        return (answers[0].maximum_number_operations_invoked,
                answers[0].maximum_number_operations_performed) if answers else None
    finally:
        assoc.release()
        ae.shutdown()


@pytest.mark.parametrize("proposed, contexts, answer", [
    ((4, 1), [CT_IMAGE_STORAGE], (4, 1)),
    ((0, 0), [CT_IMAGE_STORAGE, "1.2.840.10008.1.1"], (16, 1)),  # unlimited asked: the acceptor's maximum
    ((100, 1), [CT_IMAGE_STORAGE], (16, 1)),
    ((4, 1), [CT_IMAGE_STORAGE, STUDY_ROOT_GET], (1, 1)),  # a C-GET's sub-operations share the queue
    (None, [CT_IMAGE_STORAGE], None),
])
def test_storescp_grants_a_window_for_storage_only(scp_factory, proposed, contexts, answer):
    scp = scp_factory()
    assert granted(scp.port, proposed, contexts) == answer
