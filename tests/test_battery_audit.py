"""Issue 8, the audit trail of retrieves and MPPS: `pacs storescp --worklist DIR --audit-log FILE`.

C-MOVE and C-GET leave Begin Transferring DICOM Instances (110102) when their sub-operations start and
DICOM Instances Transferred (110104, action R) when they end, naming the requestor, the destination, the
patients and studies sent and the sub-operation counts; a refused retrieve is recorded too. MPPS N-CREATE
and N-SET leave Procedure Records (110111, action C / U) with the step's state.
"""

from __future__ import annotations

import json
import threading

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityPerformedProcedureStep,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from battery import assert_survives, measure_baseline, read, store_datasets
from conftest import free_port
from test_mpps import ITEM, create_dataset, final_dataset
from test_storescp import make_file

BEGIN, TRANSFERRED, PROCEDURE = "110102", "110104", "110111"
SOURCE, DESTINATION = "110153", "110152"


def records(path, code: str) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if r["EventIdentification"]["EventID"]["code"] == code]


def sent_records(path) -> list[dict]:
    """DICOM Instances Transferred with action R (read and sent); action C records are the stores."""
    return [r for r in records(path, TRANSFERRED) if r["EventIdentification"]["EventActionCode"] == "R"]


def by_role(record: dict) -> dict[str, dict]:
    return {p.get("RoleIDCode", {}).get("code", "requestor"): p for p in record["ActiveParticipant"]}


def studies(record: dict) -> dict[str, dict]:
    return {o["ParticipantObjectID"]: o for o in record.get("ParticipantObjectIdentification", [])
            if o["ParticipantObjectIDTypeCode"]["code"] == "110180"}


def keep(got: list):
    """An EVT_C_STORE handler that notes the SOP Instance UID and answers success."""
    def handle(event):
        got.append(event.request.AffectedSOPInstanceUID)
        return 0x0000
    return handle


@pytest.fixture
def destination():
    """DEST: a pynetdicom storage SCP in this process, on a free port; the SOP Instance UIDs it received."""
    got = []
    ae = AE(ae_title="DEST")
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep(got))])
    yield port, got
    server.shutdown()


@pytest.fixture
def archive(tmp_path, monkeypatch, watched_scp, destination):
    """storescp with MWL/MPPS, an audit log and DEST configured; two studies of PAT7 (2 + 1 instances)."""
    config = tmp_path / "config.toml"
    config.write_text(f'[peers.dest]\nae_title = "DEST"\nhost = "127.0.0.1"\nport = {destination[0]}\n')
    monkeypatch.setenv("PACS_CONFIG", str(config))
    worklist = tmp_path / "worklist"
    worklist.mkdir()
    (worklist / "acc001.json").write_text(json.dumps(ITEM))
    audit = tmp_path / "audit.jsonl"
    scp = watched_scp("--worklist", str(worklist), "--audit-log", str(audit))
    sources = tmp_path / "sources"
    sources.mkdir()
    first, second = generate_uid(), generate_uid()
    datasets = [read(make_file(sources / f"{n}.dcm", patient_id="PAT7", study=first if n < 2 else second))
                for n in range(3)]
    assert set(store_datasets(scp.port, datasets).values()) == {0x0000}
    return scp, audit, first, second, destination[1]


def c_move(port: int, study_uid: str, dest: str) -> Dataset:
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    try:
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study_uid
        return [status for status, _ in assoc.send_c_move(query, dest, StudyRootQueryRetrieveInformationModelMove)][-1]
    finally:
        assoc.release()
        ae.shutdown()


def c_get(port: int, study_uid: str) -> tuple[Dataset, list[str]]:
    got = []
    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, keep(got))])
    try:
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study_uid
        final = [status for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)][-1]
        return final, got
    finally:
        assoc.release()
        ae.shutdown()


def test_c_move_is_audited_with_destination_studies_and_counts(archive):
    scp, audit, first, _, received = archive
    baseline = measure_baseline(scp)
    assert c_move(scp.port, first, "DEST").Status == 0x0000
    assert len(received) == 2

    [begin] = records(audit, BEGIN)
    assert by_role(begin)[DESTINATION]["UserID"] == "DEST"
    assert first in studies(begin)
    [sent] = sent_records(audit)[-1:]
    event = sent["EventIdentification"]
    assert (event["EventActionCode"], event["EventOutcomeIndicator"]) == ("R", 0)
    assert event["EventOutcomeDescription"] == "C-MOVE to DEST: 2 completed, 0 failed, 0 warning; 0x0000 Success"
    roles = by_role(sent)
    assert roles[SOURCE]["UserID"] == "PACS" and roles[SOURCE]["UserIsRequestor"] is False
    assert (roles[DESTINATION]["UserID"], roles[DESTINATION]["NetworkAccessPointID"]) == ("DEST", "127.0.0.1")
    assert (roles["requestor"]["UserID"], roles["requestor"]["UserIsRequestor"]) == ("MOVER", True)
    assert roles["requestor"]["NetworkAccessPointID"] == "127.0.0.1"
    [sop_class] = studies(sent)[first]["ParticipantObjectDescription"]["SOPClass"]
    assert (sop_class["UID"], sop_class["NumberOfInstances"]) == (CTImageStorage, 2)
    assert sorted(i["UID"] for i in sop_class["Instance"]) == sorted(received)
    patients = [o["ParticipantObjectID"] for o in sent["ParticipantObjectIdentification"]
                if o["ParticipantObjectIDTypeCode"]["code"] == "2"]
    assert patients == ["PAT7"]
    assert_survives(scp, baseline, "an audited C-MOVE")


def test_refused_and_partial_c_moves_are_audited_as_failures(archive):
    scp, audit, first, _, received = archive
    assert c_move(scp.port, first, "NOBODY").Status == 0xA801
    [refused] = sent_records(audit)[-1:]
    assert refused["EventIdentification"]["EventOutcomeIndicator"] == 8
    description = refused["EventIdentification"]["EventOutcomeDescription"]
    assert description.startswith("C-MOVE to NOBODY: 0 completed, 0 failed, 0 warning; 0xA801")
    assert by_role(refused)[DESTINATION]["UserID"] == "NOBODY"

    [row] = scp.rows("select path from instances i join series se on i.series_pk = se.pk "
                     "join studies st on se.study_pk = st.pk where st.study_instance_uid = ? limit 1", (first,))
    (scp.archive / row["path"]).unlink()
    assert c_move(scp.port, first, "DEST").Status == 0xB000
    [partial] = sent_records(audit)[-1:]
    assert partial["EventIdentification"]["EventOutcomeIndicator"] == 4
    assert partial["EventIdentification"]["EventOutcomeDescription"] == (
        "C-MOVE to DEST: 1 completed, 1 failed, 0 warning; 0xB000 Warning: Sub-operations completed, one or "
        "more failures")


def test_c_get_is_audited_with_the_requestor_as_destination(archive):
    scp, audit, _, second, _ = archive
    final, got = c_get(scp.port, second)
    assert final.Status == 0x0000 and len(got) == 1
    [sent] = sent_records(audit)[-1:]
    assert sent["EventIdentification"]["EventOutcomeDescription"] == (
        "C-GET to GETTER: 1 completed, 0 failed, 0 warning; 0x0000 Success")
    roles = by_role(sent)
    assert (roles[DESTINATION]["UserID"], roles[DESTINATION]["UserIsRequestor"]) == ("GETTER", True)
    assert "requestor" not in roles  # the requestor is the destination: listed once
    [sop_class] = studies(sent)[second]["ParticipantObjectDescription"]["SOPClass"]
    assert [i["UID"] for i in sop_class["Instance"]] == got


def test_mpps_create_update_and_refusal_are_procedure_records(archive):
    scp, audit, _, _, _ = archive
    baseline = measure_baseline(scp)
    uid = generate_uid()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PACS")
    try:
        assert assoc.send_n_create(create_dataset(), ModalityPerformedProcedureStep, uid)[0].Status == 0x0000
        assert assoc.send_n_set(final_dataset(), ModalityPerformedProcedureStep, uid)[0].Status == 0x0000
        assert assoc.send_n_create(create_dataset(), ModalityPerformedProcedureStep, uid)[0].Status == 0x0111
    finally:
        assoc.release()
        ae.shutdown()
    created, completed, duplicate = records(audit, PROCEDURE)
    assert [r["EventIdentification"]["EventActionCode"] for r in (created, completed, duplicate)] == ["C", "U", "C"]
    assert [r["EventIdentification"]["EventOutcomeIndicator"] for r in (created, completed, duplicate)] == [0, 0, 4]
    assert created["EventIdentification"]["EventOutcomeDescription"] == f"MPPS {uid}: IN PROGRESS"
    assert completed["EventIdentification"]["EventOutcomeDescription"] == f"MPPS {uid}: COMPLETED"
    assert duplicate["EventIdentification"]["EventOutcomeDescription"].startswith(f"MPPS {uid}: 0x0111")
    assert created["ActiveParticipant"][0]["UserID"] == "MODALITY"
    ids = {o["ParticipantObjectIDTypeCode"]["code"]: o["ParticipantObjectID"]
           for o in completed["ParticipantObjectIdentification"]}
    assert ids == {"2": "PAT001", "110180": "1.2.3.4"}
    assert_survives(scp, baseline, "audited MPPS messages")


def test_concurrent_retrieves_each_get_their_own_counts(archive):
    """Two C-GETs at once over two associations: each record holds its own association's counts."""
    scp, audit, first, second, _ = archive
    results = {}

    def get(study):
        results[study] = c_get(scp.port, study)

    threads = [threading.Thread(target=get, args=(study,)) for study in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    descriptions = sorted(r["EventIdentification"]["EventOutcomeDescription"] for r in sent_records(audit))
    assert descriptions == ["C-GET to GETTER: 1 completed, 0 failed, 0 warning; 0x0000 Success",
                            "C-GET to GETTER: 2 completed, 0 failed, 0 warning; 0x0000 Success"]
