"""`pacs storescp` as a user runs it: the real console script, DCMTK and pynetdicom as senders."""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage

from conftest import Peer, dcmtk_binary, free_port, wait_for_port
from pacs_cli.dimse.server import SharedContexts, prefer_requestor_order

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


class StoreSCP:
    """A running `pacs storescp` subprocess with its archive."""

    def __init__(self, root: Path, *options: str):
        self.root = root
        self.archive = root / "archive"
        self.events = root / "events.jsonl"
        ready = root / "ready"
        self.proc = Peer(
            [sys.executable, "-m", "pacs_cli", "storescp", "--port", "0", "--ready-file", str(ready),
             "--dir", str(self.archive), "--events", str(self.events), *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.stop()
                raise RuntimeError(f"storescp did not start: {self.proc.stderr.read()}")
            time.sleep(0.02)
        self.port = int(ready.read_text().strip().rsplit(":", 1)[1])

    def stop(self) -> tuple[str, str]:
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=30)
        return out, err

    def rows(self, sql: str = "select * from instances") -> list[sqlite3.Row]:
        db = sqlite3.connect(self.archive / "index.sqlite")
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def files(self) -> list[Path]:
        return sorted(p for p in self.archive.rglob("*.dcm") if ".incoming" not in p.parts)

    def staging_leftovers(self) -> list[Path]:
        return [p for p in (self.archive / ".incoming").iterdir() if p.name != ".lock"] if (self.archive / ".incoming").exists() else []

    def event_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.events.read_text().splitlines()]


@pytest.fixture
def scp_factory(tmp_path):
    running = []

    def start(*options):
        scp = StoreSCP(tmp_path, *options)
        running.append(scp)
        return scp

    yield start
    for scp in running:
        scp.proc.stop()


def make_file(path: Path, patient_id="PAT1", study=None, series=None, sop=None, rows=8) -> Path:
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop or generate_uid()
    ds.PatientID, ds.PatientName = patient_id, "Doe^Jane"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality, ds.StudyDate = "CT", "20250102"
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(rows * rows * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta: what travelled over the wire."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def dcmtk_send(port: int, *paths: Path, aec="PACS", extra=()) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk_binary("storescu"), "-v", "-aec", aec, *extra, "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_ready_line_and_summary(scp_factory, tmp_path):
    scp = scp_factory("-aet", "ARCHIVE")
    out, _ = scp.stop()
    assert scp.proc.returncode == 0  # SIGTERM is the normal way to stop it
    assert out.splitlines()[0] == f"pacs storescp: listening on 0.0.0.0:{scp.port} as ARCHIVE, archive {scp.archive.resolve()}"
    assert out.splitlines()[-1] == "pacs storescp: 0 associations, 0 instances stored (0 bytes), 0 failed"


def test_dcmtk_storescu_files_arrive_byte_identical_and_indexed_once(scp_factory, tmp_path):
    sources = [make_file(tmp_path / f"in{i}.dcm", study="1.2.3.4" if i < 3 else None) for i in range(5)]
    scp = scp_factory()
    result = dcmtk_send(scp.port, *sources)
    assert result.returncode == 0, result.stderr
    stored = scp.files()
    assert len(stored) == 5
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in stored}
    for source in sources:
        uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(by_uid[uid]) == dataset_bytes(source)
    assert len(scp.rows()) == 5
    assert len(scp.rows("select * from studies")) == 3
    assert scp.staging_leftovers() == []
    out, _ = scp.stop()
    assert "1 association, 5 instances stored" in out.splitlines()[-1]


def test_hierarchical_layout_is_patient_study_series_instance(scp_factory, tmp_path):
    source = make_file(tmp_path / "a.dcm", patient_id="P42", study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5")
    scp = scp_factory()
    assert dcmtk_send(scp.port, source).returncode == 0
    assert scp.files() == [scp.archive / "P42" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"]


def test_pydicom_test_files_sent_by_dcmtk(scp_factory, tmp_path):
    """Everything DCMTK's storescu sends from pydicom's test files is stored once, as sent.

    storescu re-encodes some files on the way, so "as sent" is judged against DCMTK's own
    storescp in bit-preserving mode (+B), which receives the same run.
    """
    sources = sorted(p for p in TEST_FILES.glob("*.dcm") if p.stat().st_size < 20_000_000)
    scp = scp_factory("--on-duplicate", "replace")  # the oracle overwrites too: the last copy wins
    result = dcmtk_send(scp.port, *sources, extra=["--no-halt"])
    oracle_dir = tmp_path / "oracle"
    oracle_dir.mkdir()
    port = free_port()
    oracle = Peer([dcmtk_binary("storescp"), "+B", "-od", str(oracle_dir), str(port)])
    try:
        wait_for_port(port, oracle)
        dcmtk_send(port, *sources, extra=["--no-halt"])
    finally:
        oracle.stop()
    wire = {}
    for path in oracle_dir.iterdir():
        header = pydicom.dcmread(path, stop_before_pixels=True)
        wire[header.SOPInstanceUID, header.file_meta.TransferSyntaxUID] = dataset_bytes(path)
    stored = scp.files()
    assert result.stderr.count("Received Store Response (Success)") > 20
    compared = 0
    for path in stored:  # the two SCPs may negotiate different transfer syntaxes for a file
        header = pydicom.dcmread(path, stop_before_pixels=True)
        key = header.SOPInstanceUID, header.file_meta.TransferSyntaxUID
        if key in wire:
            assert dataset_bytes(path) == wire[key], path
            compared += 1
    assert compared >= 8
    uids = [row["sop_instance_uid"] for row in scp.rows()]
    assert len(uids) == len(set(uids)) == len(stored) == len({uid for uid, _ in wire})
    assert scp.staging_leftovers() == []


@pytest.mark.parametrize("policy, expect_rc, expect_bytes", [
    ("reject", 1, "first"), ("ignore", 0, "first"), ("replace", 0, "second")])
def test_duplicate_policies(scp_factory, tmp_path, policy, expect_rc, expect_bytes):
    uid = generate_uid()
    first = make_file(tmp_path / "first.dcm", sop=uid, study="1.2.3", series="1.2.3.4")
    second = make_file(tmp_path / "second.dcm", sop=uid, study="1.2.3", series="1.2.3.4", rows=4)
    scp = scp_factory("--on-duplicate", policy)
    assert dcmtk_send(scp.port, first).returncode == 0
    result = dcmtk_send(scp.port, second)
    assert (result.returncode != 0) == (expect_rc != 0), result.stderr
    [stored] = scp.files()
    wanted = first if expect_bytes == "first" else second
    assert dataset_bytes(stored) == dataset_bytes(wanted)
    assert len(scp.rows()) == 1
    if policy == "reject":
        assert "Received Store Response (Unknown Status: 0x111)" in result.stderr  # DCMTK's words for it
        [failure] = [e for e in scp.event_lines() if e["event"] == "store-failed"]
        assert failure["status"] == "0x0111"


def test_unknown_called_ae_is_rejected(scp_factory, script_runner):
    scp = scp_factory("-aet", "ARCHIVE", "--accept-called-aet", "ARCHIVE")
    wrong = script_runner.run(["pacs", "echo", "127.0.0.1", str(scp.port), "-aec", "WRONG"])
    assert wrong.returncode == 3
    assert "Called AE title not recognised" in wrong.stderr
    right = script_runner.run(["pacs", "echo", "127.0.0.1", str(scp.port), "-aec", "ARCHIVE"])
    assert right.returncode == 0, right.stderr


def test_each_association_gets_the_transfer_syntax_its_peer_proposed_first(scp_factory):
    """An archive keeps objects as sent: pynetdicom alone would pick by the acceptor's order."""
    scp = scp_factory()
    orders = [[JPEG2000Lossless, ExplicitVRLittleEndian], [ExplicitVRLittleEndian, JPEG2000Lossless],
              [ImplicitVRLittleEndian, JPEG2000Lossless, ExplicitVRLittleEndian]]
    opened = []
    try:
        for order in orders:  # all open at once: no association's order may reach another's
            ae = AE(ae_title="ORDERS")
            ae.add_requested_context(CTImageStorage, order)
            opened.append(ae.associate("127.0.0.1", scp.port, ae_title="PACS"))
        assert [assoc.accepted_contexts[0].transfer_syntax[0] for assoc in opened] == [o[0] for o in orders]
    finally:
        for assoc in opened:
            assoc.release()


def test_reordering_for_one_association_leaves_the_servers_contexts_as_they_were():
    shared = SharedContexts([build_context(CTImageStorage, [ExplicitVRLittleEndian, JPEG2000Lossless])])
    mine = copy.deepcopy(shared)
    prefer_requestor_order([build_context(CTImageStorage, [JPEG2000Lossless, ExplicitVRLittleEndian])], mine)
    assert mine[0].transfer_syntax == [JPEG2000Lossless, ExplicitVRLittleEndian]
    assert shared[0].transfer_syntax == [ExplicitVRLittleEndian, JPEG2000Lossless]


def test_calling_ae_and_ip_allow_lists(scp_factory, script_runner):
    scp = scp_factory("--allow-calling-aet", "MODALITY")
    assert "Calling AE title not recognised" in script_runner.run(
        ["pacs", "echo", "127.0.0.1", str(scp.port), "-aet", "OTHER"]).stderr
    assert script_runner.run(["pacs", "echo", "127.0.0.1", str(scp.port), "-aet", "MODALITY"]).returncode == 0
    scp2 = scp_factory("--allow-ip", "10.0.0.0/8")
    refused = script_runner.run(["pacs", "echo", "127.0.0.1", str(scp2.port), "-ta", "5"])
    assert refused.returncode == 3


def test_fault_status_answers_and_stores_nothing(scp_factory, tmp_path):
    scp = scp_factory("--fault-status", "0xA700")
    result = dcmtk_send(scp.port, make_file(tmp_path / "a.dcm"))
    assert result.returncode != 0
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr
    assert scp.files() == [] and scp.rows() == []


def test_write_failure_answers_a700_and_keeps_serving(scp_factory, tmp_path):
    """A file where the patient folder must go: the write fails, nothing is indexed."""
    scp = scp_factory()
    (scp.archive / "BLOCKED").write_text("not a folder")
    bad = dcmtk_send(scp.port, make_file(tmp_path / "bad.dcm", patient_id="BLOCKED"))
    assert bad.returncode != 0
    assert "Received Store Response (Refused: OutOfResources)" in bad.stderr
    [failure] = [e for e in scp.event_lines() if e["event"] == "store-failed"]
    assert failure["status"] == "0xA700" and failure["error"]
    assert scp.rows() == []
    good = dcmtk_send(scp.port, make_file(tmp_path / "good.dcm", patient_id="OK"))
    assert good.returncode == 0, good.stderr
    assert len(scp.rows()) == 1
    assert scp.staging_leftovers() == []


def test_abort_mid_transfer_leaves_no_partial_file(scp_factory, tmp_path):
    """A sender killed mid-dataset: no file, no row, and the next association is served."""
    big = make_file(tmp_path / "big.dcm", rows=4096)  # 32 MB: still in flight when the sender is killed
    scp = scp_factory("--fault-delay", "0")
    sender = subprocess.Popen([dcmtk_binary("storescu"), "-aec", "PACS", "-pdu", "4096",
                               "127.0.0.1", str(scp.port), str(big)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not scp.staging_leftovers():
        time.sleep(0.005)
    sender.kill()
    sender.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and scp.staging_leftovers():
        time.sleep(0.05)
    assert scp.staging_leftovers() == []
    assert scp.files() == [] and scp.rows() == []
    assert dcmtk_send(scp.port, make_file(tmp_path / "next.dcm")).returncode == 0
    assert len(scp.rows()) == 1


def test_hostile_uids_never_leave_the_archive(scp_factory, tmp_path):
    scp = scp_factory()
    hostile = ["../../../etc/x", "..", "/abs/path", "a\\b"]
    for i, value in enumerate(hostile):
        make_file(tmp_path / f"h{i}.dcm", patient_id=value, study="1.2", series="1.2.3", sop=f"1.2.3.{i}")
    dcmtk_send(scp.port, *[tmp_path / f"h{i}.dcm" for i in range(len(hostile))])
    root = scp.archive.resolve()
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix == ".dcm" and path.parent != tmp_path:
            assert path.resolve().is_relative_to(root), path
    assert len(scp.rows()) == len(hostile)


def test_exit_after_events_and_exec_on_store(scp_factory, tmp_path):
    marker = tmp_path / "exec.log"
    scp = scp_factory("--exit-after", "2", "--exec-on-store", f"sh -c 'echo $0 >> {marker}' {{path}}")
    dcmtk_send(scp.port, make_file(tmp_path / "a.dcm"), make_file(tmp_path / "b.dcm"))
    assert scp.proc.wait(timeout=30) == 0
    stored = [e for e in scp.event_lines() if e["event"] == "stored"]
    assert len(stored) == 2
    assert {e["calling_aet"] for e in stored} == {"STORESCU"}
    assert all(Path(e["path"]).exists() and e["status"] == "0x0000" for e in stored)
    assert sorted(marker.read_text().split()) == sorted(e["path"] for e in stored)


def test_idle_exit(scp_factory):
    scp = scp_factory("--idle-exit", "0.5")
    assert scp.proc.wait(timeout=15) == 0


def test_cannot_open_archive_exits_1_with_one_line(script_runner, tmp_path):
    (tmp_path / "file").write_text("x")
    result = script_runner.run(["pacs", "storescp", "--port", "0", "--dir", str(tmp_path / "file" / "archive")])
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("Error: ")


def test_four_concurrent_associations(scp_factory, tmp_path):
    """1,000 images over 4 parallel DCMTK senders: every one stored once, no temp files left."""
    study = generate_uid()
    folders = []
    for a in range(4):
        folder = tmp_path / f"batch{a}"
        folder.mkdir()
        series = generate_uid()
        for i in range(250):
            make_file(folder / f"{i}.dcm", study=study, series=series)
        folders.append(folder)
    scp = scp_factory()
    senders = [subprocess.Popen([dcmtk_binary("storescu"), "-aec", "PACS", "+sd", "127.0.0.1",
                                 str(scp.port), str(folder)], stderr=subprocess.PIPE) for folder in folders]
    assert [s.wait(timeout=120) for s in senders] == [0, 0, 0, 0]
    assert len(scp.files()) == 1000
    assert len(scp.rows()) == 1000
    assert len(scp.rows("select * from series")) == 4
    assert len(scp.rows("select * from studies")) == 1
    assert scp.staging_leftovers() == []


def test_pynetdicom_storescu_app_as_sender(scp_factory, tmp_path):
    sources = [make_file(tmp_path / f"p{i}.dcm") for i in range(3)]
    scp = scp_factory()
    result = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "-aec", "PACS",
                             "127.0.0.1", str(scp.port), *map(str, sources)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(scp.rows()) == 3
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in scp.files()}
    for source in sources:
        assert dataset_bytes(by_uid[pydicom.dcmread(source).SOPInstanceUID]) == dataset_bytes(source)


def send_raw(port: int, path: Path) -> int:
    """Send a Part 10 file's dataset bytes as they are, with the command UIDs from its file meta."""
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="RAW")
        meta = pydicom.filereader.read_file_meta_info(path)
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        try:
            return assoc.send_c_store(path).Status
        finally:
            assoc.release()
            ae.shutdown()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def test_dataset_uid_not_matching_command_is_refused(scp_factory, tmp_path):
    path = make_file(tmp_path / "m.dcm", sop="1.2.3.4")
    _, offset = split_dataset(path)
    raw = path.read_bytes()
    meta = raw[:offset].replace(b"1.2.3.4\x00", b"1.2.3.9\x00")  # the command will say 1.2.3.9
    path.write_bytes(meta + raw[offset:])
    scp = scp_factory()
    assert send_raw(scp.port, path) == 0xC000
    assert scp.files() == [] and scp.rows() == []
    [failure] = [e for e in scp.event_lines() if e["event"] == "store-failed"]
    assert failure["status"] == "0xC000" and failure["sop_instance_uid"] == "1.2.3.9"


def test_unparseable_dataset_is_refused(scp_factory, tmp_path):
    path = make_file(tmp_path / "g.dcm")
    _, offset = split_dataset(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:offset] + b"\x08\x00\x16\x00UI\xff\xff" + b"garbage" * 10)
    scp = scp_factory()
    assert send_raw(scp.port, path) == 0xC000
    assert scp.files() == [] and scp.rows() == []
    assert scp.staging_leftovers() == []


def test_index_gives_the_same_rows_as_receiving(scp_factory, tmp_path, script_runner):
    """`pacs index` over a tree and storescp receiving the same files agree on every key value."""
    tree = tmp_path / "tree"
    tree.mkdir()
    study = generate_uid()
    for i in range(60):
        shared = i < 30
        make_file(tree / f"{i}.dcm", patient_id="P000" if shared else f"P{i % 3:03d}", study=study if shared else None)
    scp = scp_factory()
    assert dcmtk_send(scp.port, tree, extra=["+sd"]).returncode == 0
    other = tmp_path / "indexed"
    assert script_runner.run(["pacs", "index", "--dir", str(other), str(tree)]).returncode == 0
    query = """select p.patient_id, p.patient_name, st.study_instance_uid, st.study_date,
                      st.modalities_in_study, se.series_instance_uid, se.modality,
                      i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid
               from instances i join series se on i.series_pk = se.pk
               join studies st on se.study_pk = st.pk join patients p on st.patient_pk = p.pk
               order by i.sop_instance_uid"""
    received = [tuple(row) for row in scp.rows(query)]
    db = sqlite3.connect(other / "index.sqlite")
    try:
        indexed = db.execute(query).fetchall()
    finally:
        db.close()
    assert len(received) == 60
    assert received == indexed


@pytest.mark.parametrize("kind, words", [("permanent", "Rejected Permanent"), ("transient", "Rejected Transient")])
def test_fault_reject(scp_factory, script_runner, kind, words):
    scp = scp_factory("--fault-reject", kind)
    result = script_runner.run(["pacs", "echo", "127.0.0.1", str(scp.port), "-aec", "PACS"])
    assert result.returncode == 3
    assert words in result.stderr


def test_fault_abort_after(scp_factory, tmp_path):
    sources = [make_file(tmp_path / f"{i}.dcm") for i in range(4)]
    scp = scp_factory("--fault-abort-after", "2")
    result = dcmtk_send(scp.port, *sources)
    assert result.returncode != 0
    assert len(scp.rows()) == 2
    assert scp.staging_leftovers() == []


def test_pynetdicom_storescu_app_sends_pydicom_test_files(scp_factory):
    """Every file pynetdicom's storescu app reports as stored is in the archive once and indexed."""
    sources = sorted(p for p in TEST_FILES.glob("*.dcm") if p.stat().st_size < 5_000_000)
    scp = scp_factory("--on-duplicate", "reject")
    result = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "-v", "-aec", "PACS",
                             "127.0.0.1", str(scp.port), *map(str, sources)],
                            capture_output=True, text=True, timeout=300)
    confirmed = result.stderr.count("Received Store Response (Status: 0x0000 - Success)")
    duplicates = result.stderr.count("0x0111")
    assert confirmed >= 10, result.stderr[-2000:]  # it proposes uncompressed syntaxes only
    stored = scp.files()
    assert len(stored) == len(scp.rows()) == confirmed
    assert len([e for e in scp.event_lines() if e["event"] == "store-failed"]) == duplicates
    assert scp.staging_leftovers() == []


@pytest.mark.dcmtk
def test_an_object_past_max_object_mb_is_aborted_and_leaves_nothing(scp_factory, tmp_path):
    """--max-object-mb: the association is aborted while the dataset arrives; a smaller object is stored."""
    scp = scp_factory("--max-object-mb", "1")
    big = make_file(tmp_path / "big.dcm", rows=800)  # 800 x 800 x 2 bytes: 1.28 MB of pixels
    small = make_file(tmp_path / "small.dcm")

    refused = dcmtk_send(scp.port, big)
    stored = dcmtk_send(scp.port, small)
    _, err = scp.stop()

    assert refused.returncode != 0
    assert stored.returncode == 0
    assert [r["sop_instance_uid"] for r in scp.rows()] == [read_uid(small)]
    assert [p.name for p in (scp.archive / ".incoming").glob("*.dcm")] == []
    assert "dataset larger than 1 MB (--max-object-mb)" in err


def read_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
