"""`--audit-log`: ATNA-shaped records for what happened at the SCP, and write failures that are never silent."""

from __future__ import annotations

import json
import subprocess

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from conftest import dcmtk_binary
from test_storescp import StoreSCP, dcmtk_send, make_file


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def event_ids(path):
    return [r["EventIdentification"]["EventID"]["code"] for r in records(path)]


def test_storescp_audits_its_life_associations_stores_queries_and_alerts(tmp_path):
    audit = tmp_path / "audit.jsonl"
    scp = StoreSCP(tmp_path, "--audit-log", str(audit), "--allow-calling-aet", "STORESCU",
                   "--allow-calling-aet", "FINDSCU")
    assert dcmtk_send(scp.port, make_file(tmp_path / "a.dcm", patient_id="PAT9", study="1.2.3")).returncode == 0
    subprocess.run([dcmtk_binary("findscu"), "-S", "-aec", "PACS", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "PatientID=PAT9", "127.0.0.1", str(scp.port)], capture_output=True, timeout=30)
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assert ae.associate("127.0.0.1", scp.port, ae_title="PACS").is_rejected
    ae.shutdown()
    scp.stop()
    assert scp.proc.returncode == 0

    ids = event_ids(audit)
    assert ids[0] == ids[-1] == "110100"  # Application Activity: start ... stop
    start, stop = records(audit)[0], records(audit)[-1]
    assert start["EventIdentification"]["EventTypeCode"][0]["code"] == "110120"
    assert stop["EventIdentification"]["EventTypeCode"][0]["code"] == "110121"
    [stored] = [r for r in records(audit) if r["EventIdentification"]["EventID"]["code"] == "110104"]
    assert stored["EventIdentification"]["EventActionCode"] == "C"
    assert stored["EventIdentification"]["EventOutcomeIndicator"] == 0
    objects = {o["ParticipantObjectIDTypeCode"]["code"]: o for o in stored["ParticipantObjectIdentification"]}
    assert objects["2"]["ParticipantObjectID"] == "PAT9"
    assert objects["110180"]["ParticipantObjectID"] == "1.2.3"
    assert stored["ActiveParticipant"][0]["UserID"] == "STORESCU"
    assert stored["ActiveParticipant"][0]["NetworkAccessPointID"] == "127.0.0.1"
    [query] = [r for r in records(audit) if r["EventIdentification"]["EventID"]["code"] == "110112"]
    assert query["ParticipantObjectIdentification"][0]["ParticipantObjectQuery"]["PatientID"] == "PAT9"
    [alert] = [r for r in records(audit) if r["EventIdentification"]["EventID"]["code"] == "110113"]
    assert "INTRUDER" in alert["EventIdentification"]["EventOutcomeDescription"]
    assert ids.count("110114") >= 4  # login and logout of the two accepted associations


def test_audit_write_failure_is_reported_and_fails_the_run(tmp_path):
    """/dev/full accepts the open and fails every write with ENOSPC."""
    scp = StoreSCP(tmp_path, "--audit-log", "/dev/full")
    assert dcmtk_send(scp.port, make_file(tmp_path / "a.dcm")).returncode == 0
    _, err = scp.stop()
    assert scp.proc.returncode == 1
    assert "audit log: a record could not be written" in err
    assert "audit records could not be written to /dev/full" in err
