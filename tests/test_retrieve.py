"""C-MOVE and C-GET from `pacs storescp`: DCMTK's movescu and getscu, and a pynetdicom SCU for the statuses."""

from __future__ import annotations

import re
import subprocess
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from conftest import Peer, dcmtk_binary, free_port, wait_for_port
from test_storescp import StoreSCP, dataset_bytes, dcmtk_send, make_file

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """`pacs storescp` with a config naming DEST at a free port, holding two studies (3 + 1 instances)."""
    dest_port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[peers.dest]\nae_title = "DEST"\nhost = "127.0.0.1"\nport = {dest_port}\n')
    monkeypatch.setenv("PACS_CONFIG", str(config))
    sources = tmp_path / "sources"
    sources.mkdir()
    study, series = generate_uid(), generate_uid()
    files = [make_file(sources / f"a{n}.dcm", study=study, series=series) for n in range(2)]
    files.append(make_file(sources / "a2.dcm", study=study))  # a second series of the study
    other = make_file(sources / "b.dcm", patient_id="PAT2")
    scp = StoreSCP(tmp_path, "-aet", "PACS")
    assert dcmtk_send(scp.port, *files, other).returncode == 0
    yield scp, dest_port, study, series, files, other
    scp.proc.stop()


def movescu(scp_port, dest_port, out: Path, *keys: str, dest="DEST"):
    out.mkdir(exist_ok=True)
    args = [dcmtk_binary("movescu"), "-d", "-S", "-aec", "PACS", "-aet", "MOVER", "-aem", dest,
            "--port", str(dest_port), "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    return subprocess.run([*args, "127.0.0.1", str(scp_port)], capture_output=True, text=True, timeout=120)


def getscu(scp_port, out: Path, *keys: str):
    out.mkdir(exist_ok=True)
    args = [dcmtk_binary("getscu"), "-d", "-S", "-aec", "PACS", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    return subprocess.run([*args, "127.0.0.1", str(scp_port)], capture_output=True, text=True, timeout=120)


def received(out: Path) -> dict[str, bytes]:
    """SOP Instance UID -> bytes after the file meta, of every file DCMTK wrote into ``out``."""
    import pydicom

    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: dataset_bytes(p)
            for p in out.iterdir() if p.is_file()}


def originals(*paths: Path) -> dict[str, bytes]:
    import pydicom

    return {pydicom.dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in paths}


def test_dcmtk_movescu_moves_a_study_byte_identical(archive, tmp_path):
    scp, dest_port, study, _, files, _ = archive
    result = movescu(scp.port, dest_port, tmp_path / "moved", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert result.returncode == 0, result.stderr + result.stdout
    assert received(tmp_path / "moved") == originals(*files)
    assert "0x0000: Success" in result.stderr
    assert re.search(r"Completed Suboperations +: 3", result.stderr)


def test_dcmtk_movescu_moves_one_series(archive, tmp_path):
    scp, dest_port, study, series, files, _ = archive
    result = movescu(scp.port, dest_port, tmp_path / "moved", "QueryRetrieveLevel=SERIES",
                     f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}")
    assert result.returncode == 0, result.stderr + result.stdout
    assert received(tmp_path / "moved") == originals(*files[:2])


def test_dcmtk_getscu_gets_a_study_and_a_series_byte_identical(archive, tmp_path):
    scp, _, study, series, files, _ = archive
    result = getscu(scp.port, tmp_path / "study", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert result.returncode == 0, result.stderr + result.stdout
    assert received(tmp_path / "study") == originals(*files)
    result = getscu(scp.port, tmp_path / "series", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                    f"SeriesInstanceUID={series}")
    assert result.returncode == 0, result.stderr + result.stdout
    assert received(tmp_path / "series") == originals(*files[:2])


def test_dcmtk_movescu_unknown_destination_is_a801_with_what_to_configure(archive, tmp_path):
    scp, dest_port, study, _, _, _ = archive
    result = movescu(scp.port, dest_port, tmp_path / "moved", "QueryRetrieveLevel=STUDY",
                     f"StudyInstanceUID={study}", dest="NOBODY")
    output = result.stdout + result.stderr
    assert "0xa801" in output.lower()
    assert 'ae_title="NOBODY"' in output
    assert not list((tmp_path / "moved").iterdir())


# --- statuses, through a pynetdicom SCU -----------------------------------------------------------

@pytest.fixture
def receiver():
    """A pynetdicom storage SCP as move destination DEST, keeping what arrives (UID -> dataset)."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts

    got = {}
    delay = []

    def handle(event):
        got[event.dataset.SOPInstanceUID] = event.dataset
        time.sleep(sum(delay))
        return 0

    ae = AE(ae_title="DEST")
    ae.supported_contexts = AllStoragePresentationContexts
    servers = []

    def start(port, seconds_per_store: float = 0.0):
        delay.append(seconds_per_store)
        servers.append(ae.start_server(("127.0.0.1", port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, handle)]))
        return got

    yield start
    for server in servers:
        server.shutdown()


def move(port, identifier: Dataset, model=STUDY_ROOT_MOVE, dest="DEST", cancel_after=None):
    """[(status, identifier)] of one C-MOVE from a pynetdicom SCU."""
    from pynetdicom import AE

    ae = AE(ae_title="MOVER")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        responses = []
        for status, ds in assoc.send_c_move(identifier, dest, model, msg_id=7):
            responses.append((status, ds))
            if cancel_after is not None and len(responses) == cancel_after:
                assoc.send_c_cancel(7, assoc.accepted_contexts[0].context_id)
        return responses
    finally:
        assoc.release()
        ae.shutdown()


def identifier(level, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_pending_counts_and_success(archive, receiver):
    scp, dest_port, study, _, files, _ = archive
    got = receiver(dest_port)
    responses = move(scp.port, identifier("STUDY", StudyInstanceUID=study))
    pending = [s for s, _ in responses if s.Status == 0xFF00]
    assert [s.NumberOfRemainingSuboperations for s in pending] == [2, 1, 0]
    assert [s.NumberOfCompletedSuboperations for s in pending] == [1, 2, 3]
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
    assert set(got) == set(originals(*files))


def test_patient_and_image_levels_patient_root(archive, receiver):
    scp, dest_port, _, _, files, other = archive
    got = receiver(dest_port)
    final = move(scp.port, identifier("PATIENT", PatientID="PAT2"), PATIENT_ROOT_MOVE)[-1][0]
    assert final.Status == 0x0000 and set(got) == set(originals(other))
    uid = next(iter(originals(files[0])))
    study = move(scp.port, identifier("IMAGE", SOPInstanceUID=uid, StudyInstanceUID="", SeriesInstanceUID=""))
    assert study[-1][0].Status == 0x0000 and uid in got


def test_a_file_gone_from_disk_gives_b000_with_its_uid(archive, receiver):
    scp, dest_port, study, _, files, _ = archive
    got = receiver(dest_port)
    row = scp.rows("select sop_instance_uid, path from instances order by pk")[1]
    (scp.archive / row["path"]).unlink()
    responses = move(scp.port, identifier("STUDY", StudyInstanceUID=study))
    final, failed = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert list(failed.FailedSOPInstanceUIDList) == [row["sop_instance_uid"]] or \
        failed.FailedSOPInstanceUIDList == row["sop_instance_uid"]
    assert len(got) == 2


def test_all_sub_operations_failed_is_a702(archive, receiver):
    scp, dest_port, _, _, _, _ = archive
    receiver(dest_port)
    row = scp.rows("select i.sop_instance_uid, i.path from instances i join series se on i.series_pk = se.pk "
                   "join studies st on se.study_pk = st.pk join patients p on st.patient_pk = p.pk "
                   "where p.patient_id = 'PAT2'")[0]
    (scp.archive / row["path"]).unlink()
    final, failed = move(scp.port, identifier("PATIENT", PatientID="PAT2"), PATIENT_ROOT_MOVE)[-1]
    assert final.Status == 0xA702
    assert failed.FailedSOPInstanceUIDList == row["sop_instance_uid"]


def test_destination_that_does_not_answer_is_a801(archive):
    scp, _, study, _, _, _ = archive  # nothing listens on DEST's port
    final = move(scp.port, identifier("STUDY", StudyInstanceUID=study))[-1][0]
    assert final.Status == 0xA801
    assert "cannot associate with DEST" in final.ErrorComment


@pytest.mark.parametrize("level, keys, comment", [
    ("STUDY", {}, "needs StudyInstanceUID"),
    ("STUDY", {"StudyInstanceUID": ""}, "needs StudyInstanceUID"),
    ("PATIENT", {"PatientID": "PAT1"}, "no level"),  # Study Root has no PATIENT level
    ("SERIES", {"StudyInstanceUID": "1.2", "Modality": "CT", "SOPInstanceUID": "1.2.3"}, "SOPInstanceUID"),
])
def test_bad_identifier_is_a900(archive, level, keys, comment):
    scp, _, _, _, _, _ = archive
    final = move(scp.port, identifier(level, **keys))[-1][0]
    assert final.Status == 0xA900
    assert comment in final.ErrorComment


def test_dcmtk_getscu_with_a_file_gone_gives_b000(archive, tmp_path):
    scp, _, study, _, files, _ = archive
    row = scp.rows("select sop_instance_uid, path from instances order by pk")[0]
    (scp.archive / row["path"]).unlink()
    result = getscu(scp.port, tmp_path / "got", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    assert "0xb000: Warning" in result.stderr  # getscu does not print the Failed SOP Instance UID List
    assert re.search(r"Number of Failed Suboperations +: 1", result.stderr)
    assert received(tmp_path / "got") == originals(*files[1:])


def test_nothing_matched_is_success_without_sub_operations(archive, receiver):
    scp, dest_port, _, _, _, _ = archive
    got = receiver(dest_port)
    final = move(scp.port, identifier("STUDY", StudyInstanceUID="1.2.3.4"))[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 0 and not got


def test_cancel_between_sub_operations_is_fe00(archive, receiver):
    scp, dest_port, study, _, _, _ = archive
    receiver(dest_port, seconds_per_store=0.3)  # the C-CANCEL lands while the second sub-operation runs
    responses = move(scp.port, identifier("STUDY", StudyInstanceUID=study), cancel_after=1)
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations == 3
    assert final.NumberOfRemainingSuboperations >= 1


def test_no_query_turns_retrieve_off(tmp_path):
    from pynetdicom import AE

    scp = StoreSCP(tmp_path, "--no-query")
    try:
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(STUDY_ROOT_MOVE)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="PACS")
        assert not assoc.is_established or not assoc.accepted_contexts
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    finally:
        scp.proc.stop()


def test_move_contexts_are_at_most_128():
    from pacs_cli.archive.index import InstanceRow
    from pacs_cli.dimse.retrieve import move_contexts

    rows = [InstanceRow(str(n), f"1.2.3.{n}", "1.2.840.10008.1.2.1", "x", "P", "1.2") for n in range(200)]
    contexts = move_contexts(rows)
    assert len(contexts) == 128
    same_class = [InstanceRow(str(n), "1.2.3", ts, "x", "P", "1.2")
                  for n, ts in enumerate(["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])]
    assert [cx.transfer_syntax for cx in move_contexts(same_class)] == [
        ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"], ["1.2.840.10008.1.2.4.50"]]


def test_watches_on_sent_responses_stop_in_any_order():
    """The audit counts and a once-only status rewrite watch the same association's responses; the
    rewrite may stop before or after the counts, and the association ends up sending as it did."""
    from types import SimpleNamespace

    from pacs_cli.dimse.retrieve import _SendWatch

    class DIMSE:
        def __init__(self):
            self.sent = []

        def send_msg(self, primitive, context_id):
            self.sent.append(primitive)

    seen = []
    dimse = DIMSE()
    assoc = SimpleNamespace(dimse=dimse)
    first, second = _SendWatch(assoc, lambda p: seen.append(("first", p))), _SendWatch(assoc, lambda p: seen.append(("second", p)))
    first.start()
    second.start()
    dimse.send_msg("a", 1)
    first.stop()  # out of order
    dimse.send_msg("b", 1)
    second.stop()
    dimse.send_msg("c", 1)
    assert seen == [("first", "a"), ("second", "a"), ("second", "b")]
    assert dimse.sent == ["a", "b", "c"] and "send_msg" not in vars(dimse)


# --- sub-operations sent from the stored file -----------------------------------------------------


def implicit(path: Path) -> Path:
    """``path`` rewritten in Implicit VR Little Endian."""
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return path


def add_implicit_study(scp: StoreSCP, folder: Path) -> tuple[str, list[Path]]:
    """A study of two Implicit VR Little Endian files, sent as such (storescu -xi) and so archived."""
    folder.mkdir(exist_ok=True)
    study = generate_uid()
    files = [implicit(make_file(folder / f"implicit{n}.dcm", patient_id="PAT3", study=study)) for n in range(2)]
    assert dcmtk_send(scp.port, *files, extra=("-xi",)).returncode == 0
    return study, files


def archived(scp: StoreSCP, *sources: Path) -> dict[str, bytes]:
    """SOP Instance UID -> bytes after the file meta, of the archive's files of ``sources``' instances."""
    wanted = set(originals(*sources))
    held = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in scp.files()}
    return {uid: dataset_bytes(held[uid]) for uid in wanted}


def syntaxes(out: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in out.iterdir()}


def decoded(*paths: Path) -> dict[str, Dataset]:
    """SOP Instance UID -> the dataset, whatever transfer syntax it came in."""
    return {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, paths)}


@pytest.fixture
def dcmtk_dest(tmp_path):
    """Factory: DCMTK's storescp as DEST on ``port`` with extra options, writing what arrives as it came
    (+B, bit-preserving) into a folder it returns."""
    running = []

    def start(port: int, *options: str) -> Path:
        out = tmp_path / f"dest{len(running)}"
        out.mkdir()
        proc = Peer([dcmtk_binary("storescp"), "+B", *options, "-aet", "DEST", "-od", str(out), str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running.append(proc)
        wait_for_port(port, proc)
        return out

    yield start
    for proc in running:
        proc.stop()


def test_c_move_to_dcmtk_storescp_sends_explicit_and_implicit_files_as_archived(archive, dcmtk_dest, tmp_path):
    scp, dest_port, study, _, files, _ = archive
    implicit_study, implicit_files = add_implicit_study(scp, tmp_path / "sources")
    out = dcmtk_dest(dest_port)
    for uid in (study, implicit_study):
        final = move(scp.port, identifier("STUDY", StudyInstanceUID=uid))[-1][0]
        assert final.Status == 0x0000
    assert syntaxes(out) == {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    assert received(out) == archived(scp, *files, *implicit_files)


def test_c_move_converts_for_a_destination_taking_only_implicit_vr(archive, dcmtk_dest):
    scp, dest_port, study, _, files, _ = archive
    out = dcmtk_dest(dest_port, "+xi")
    final = move(scp.port, identifier("STUDY", StudyInstanceUID=study))[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
    assert syntaxes(out) == {ImplicitVRLittleEndian}
    assert decoded(*out.iterdir()) == decoded(*files)


def c_get(port: int, study: str, syntax: str) -> dict[str, tuple[str, bytes]]:
    """SOP Instance UID -> (transfer syntax, dataset bytes as received) of a pynetdicom C-GET of ``study``
    proposing CT Image Storage in ``syntax`` only (DCMTK's getscu proposes Explicit VR whatever it is told)."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import build_role

    got = {}

    def handle(event):
        got[event.request.AffectedSOPInstanceUID] = (event.context.transfer_syntax, event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(CT_IMAGE_STORAGE, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=[build_role(CT_IMAGE_STORAGE, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, handle)])
    assert assoc.is_established
    try:
        query = identifier("STUDY", StudyInstanceUID=study)
        statuses = [status for status, _ in assoc.send_c_get(query, STUDY_ROOT_GET)]
    finally:
        assoc.release()
        ae.shutdown()
    assert statuses[-1].Status == 0x0000
    return got


def test_c_get_sends_explicit_and_implicit_files_as_archived_or_converted(archive, tmp_path, monkeypatch):
    from pynetdicom import _config
    from pynetdicom.dsutils import decode

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)  # the bytes as they came, in memory
    scp, _, study, _, files, _ = archive
    implicit_study, implicit_files = add_implicit_study(scp, tmp_path / "sources")
    for uid, sources, syntax in ((study, files, ExplicitVRLittleEndian),
                                 (implicit_study, implicit_files, ImplicitVRLittleEndian)):
        got = c_get(scp.port, uid, syntax)
        assert {ts for ts, _ in got.values()} == {syntax}
        assert {uid: data for uid, (_, data) in got.items()} == archived(scp, *sources)
    converted = c_get(scp.port, implicit_study, ExplicitVRLittleEndian)
    assert {ts for ts, _ in converted.values()} == {ExplicitVRLittleEndian}
    assert {uid: decode(BytesIO(data), False, True) for uid, (_, data) in converted.items()} == \
        decoded(*implicit_files)


def test_the_handler_yields_stand_ins_and_reads_no_file(tmp_path, monkeypatch):
    """What a C-GET handler hands pynetdicom: the archived instance's UIDs, path and transfer syntax,
    not its decoded dataset."""
    from types import SimpleNamespace

    import pydicom.filereader

    from pacs_cli.archive import Archive
    from pacs_cli.dimse.retrieve import GET_MODELS, PENDING, handle_get
    from pacs_cli.dimse.substore import StoredInstance

    study = generate_uid()
    files = [make_file(tmp_path / f"{n}.dcm", patient_id="PAT9", study=study) for n in range(2)]
    paths = {uid: path for uid, path in zip(originals(*files), files)}
    archive = Archive.open(tmp_path / "archive")
    archive.index_files(files)

    def read_partial(*args, **kwargs):
        raise AssertionError("the handler decoded a file")

    monkeypatch.setattr(pydicom.filereader, "read_partial", read_partial)
    requestor = SimpleNamespace(ae_title="GETTER", address_info=SimpleNamespace(address="127.0.0.1"))
    assoc = SimpleNamespace(requestor=requestor, dimse=SimpleNamespace(send_msg=None))  # no responses here
    event = SimpleNamespace(assoc=assoc,
                            request=SimpleNamespace(AffectedSOPClassUID=GET_MODELS["study"].uid),
                            identifier=identifier("STUDY", StudyInstanceUID=study), is_cancelled=False)
    try:
        count, *pending = handle_get(event, archive)
    finally:
        archive.close()
    assert count == 2 and {status for status, _ in pending} == {PENDING}
    instances = [ds for _, ds in pending]
    assert all(isinstance(ds, StoredInstance) and "PixelData" not in ds for ds in instances)
    assert {ds.SOPInstanceUID: ds.path for ds in instances} == paths
    assert {(ds.transfer_syntax, ds.PatientID, ds.StudyInstanceUID) for ds in instances} == {
        (ExplicitVRLittleEndian, "PAT9", study)}


def test_a_pacs_association_sends_a_stored_instance_from_its_file_or_converts_it(tmp_path, monkeypatch):
    """The file's bytes as they are when the peer accepted their transfer syntax, no file decoded; the
    dataset read and converted when it accepted only the other uncompressed one."""
    import pydicom.filereader
    from pynetdicom import AE, _config, evt
    from pynetdicom.dsutils import encode
    from pynetdicom.sop_class import CTImageStorage

    from pacs_cli.dimse.ae import RequestorAE
    from pacs_cli.dimse.substore import StoredInstance

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)  # substore sends the file itself anyway
    path = make_file(tmp_path / "ct.dcm")
    ds = pydicom.dcmread(path)
    instance = StoredInstance(path, ExplicitVRLittleEndian, SOPClassUID=ds.SOPClassUID,
                              SOPInstanceUID=ds.SOPInstanceUID)
    got = {}

    def handle(event):
        got[event.context.transfer_syntax] = event.request.DataSet.getvalue()
        originators.append((event.request.MoveOriginatorApplicationEntityTitle, event.request.MoveOriginatorMessageID))
        return 0x0000

    originators = []

    peer = AE(ae_title="DEST")
    peer.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = peer.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    reads = []
    read_partial = pydicom.filereader.read_partial

    def counted(*args, **kwargs):
        reads.append(args)
        return read_partial(*args, **kwargs)

    monkeypatch.setattr(pydicom.filereader, "read_partial", counted)
    files_read = {}
    try:
        for proposed in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ae = RequestorAE(ae_title="PACS")
            ae.add_requested_context(CTImageStorage, proposed)
            assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="DEST")
            try:
                assert assoc.send_c_store(instance, msg_id=3, originator_aet="MOVER", originator_id=7).Status == 0x0000
            finally:
                assoc.release()
                ae.shutdown()
            files_read[proposed] = len(reads)
            reads.clear()
    finally:
        peer.shutdown()
    assert files_read == {ExplicitVRLittleEndian: 0, ImplicitVRLittleEndian: 1}
    assert originators == [("MOVER", 7), ("MOVER", 7)]  # a C-MOVE sub-operation says whose it is
    assert got[ExplicitVRLittleEndian] == dataset_bytes(path)
    assert got[ImplicitVRLittleEndian] == encode(ds, True, True)
