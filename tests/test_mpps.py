"""MPPS (PS3.4 F.7) end to end: `pacs mwl-scp` as the SCP, `pacs mpps-scu` and a plain pynetdicom SCU as the
senders; the statuses on the wire and the state stored afterwards. Also the state machine on its own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from conftest import Peer
from pacs_cli.cli import cli
from pacs_cli.worklist import mpps as rules
from pacs_cli.worklist.db import WorklistDB

ITEM = {
    "patient": {"PatientID": "PAT001", "PatientName": "Doe^Jane", "PatientBirthDate": "19800101", "PatientSex": "F"},
    "request": {"AccessionNumber": "ACC001"},
    "procedure": {"RequestedProcedureID": "RP001", "RequestedProcedureDescription": "CT head"},
    "steps": [
        {"ScheduledStationAETitle": "CT1", "Modality": "CT", "ScheduledProcedureStepStartDate": "20250102",
         "ScheduledProcedureStepStartTime": "0900", "ScheduledProcedureStepID": "SPS001"},
        {"ScheduledStationAETitle": "MR1", "Modality": "MR", "ScheduledProcedureStepStartDate": "20250103",
         "ScheduledProcedureStepStartTime": "1400", "ScheduledProcedureStepID": "SPS002"},
    ],
}


class MwlSCP:
    """A running `pacs mwl-scp` subprocess over a worklist directory."""

    def __init__(self, root: Path, *options: str):
        self.dir = root / "worklist"
        self.dir.mkdir(exist_ok=True)
        self.events = root / "events.jsonl"
        ready = root / "ready"
        self.proc = Peer([sys.executable, "-m", "pacs_cli", "mwl-scp", "--port", "0", "--ready-file", str(ready),
                          "--dir", str(self.dir), "--events", str(self.events), *options],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.stop()
                raise RuntimeError(f"mwl-scp did not start: {self.proc.stderr.read()}")
            time.sleep(0.02)
        self.port = int(ready.read_text().strip().rsplit(":", 1)[1])

    def stop(self) -> tuple[str, str]:
        self.proc.terminate()
        return self.proc.communicate(timeout=30)

    def store(self) -> WorklistDB:
        return WorklistDB.open(self.dir / "worklist.sqlite")

    def mpps_status(self, uid: str) -> str | None:
        store = self.store()
        try:
            found = store.mpps(uid)
            return found[0] if found else None
        finally:
            store.close()

    def step_statuses(self) -> dict[str, str]:
        store = self.store()
        try:
            return {row["scheduled_procedure_step_id"]: row["scheduled_procedure_step_status"] for row in store.steps()}
        finally:
            store.close()

    def event_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.events.read_text().splitlines()]


@pytest.fixture
def mwl_scp(tmp_path):
    (tmp_path / "worklist").mkdir()
    (tmp_path / "worklist" / "acc001.json").write_text(json.dumps(ITEM))
    scp = MwlSCP(tmp_path)
    yield scp
    scp.proc.stop()


def create_dataset(**changes) -> Dataset:
    ds = Dataset()
    item = Dataset()
    item.StudyInstanceUID = "1.2.3.4"
    item.AccessionNumber, item.RequestedProcedureID, item.ScheduledProcedureStepID = "ACC001", "RP001", "SPS001"
    ds.ScheduledStepAttributesSequence = Sequence([item])
    ds.PatientName, ds.PatientID = "Doe^Jane", "PAT001"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20250102", "091500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = Sequence()
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def final_dataset(status="COMPLETED", series=True) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = "20250102", "093000"
    item = Dataset()
    item.SeriesInstanceUID, item.ProtocolName, item.RetrieveAETitle = "1.2.3.4.5", "HEAD", ""
    item.ReferencedImageSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence([item] if series else [])
    return ds


class Scu:
    """A plain pynetdicom SCU on one association."""

    def __init__(self, port: int):
        self.ae = AE(ae_title="MODALITY")
        self.ae.add_requested_context(ModalityPerformedProcedureStep)
        self.assoc = self.ae.associate("127.0.0.1", port)
        assert self.assoc.is_established

    def create(self, ds: Dataset, uid: str) -> Dataset:
        status, _ = self.assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        return status

    def set(self, ds: Dataset, uid: str) -> Dataset:
        status, _ = self.assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        return status

    def close(self) -> None:
        self.assoc.release()
        self.ae.shutdown()


@pytest.fixture
def scu(mwl_scp):
    client = Scu(mwl_scp.port)
    yield client
    client.close()


# --- the state machine on its own -------------------------------------------------------------------

def test_rules_create_wants_in_progress_and_the_type_1_attributes():
    assert rules.check_create(create_dataset()) == "IN PROGRESS"
    with pytest.raises(rules.Refusal) as info:
        rules.check_create(create_dataset(PerformedProcedureStepStatus="COMPLETED"))
    assert (info.value.status, info.value.tag) == (0x0106, 0x00400252)
    with pytest.raises(rules.Refusal) as info:
        rules.check_create(create_dataset(PerformedProcedureStepID=None))
    assert (info.value.status, info.value.tag) == (0x0120, 0x00400253)
    assert "PerformedProcedureStepID" in info.value.comment
    with pytest.raises(rules.Refusal) as info:
        rules.check_create(create_dataset(Modality=""))
    assert (info.value.status, info.value.tag) == (0x0121, 0x00080060)


def test_rules_set_only_from_in_progress_and_final_needs_end_and_series():
    stored = create_dataset()
    assert rules.status_of(rules.check_set(stored, final_dataset("IN PROGRESS"))) == "IN PROGRESS"
    done = rules.check_set(stored, final_dataset("COMPLETED"))
    assert rules.status_of(done) == "COMPLETED" and done.PerformedProcedureStepEndTime == "093000"
    for later in ("COMPLETED", "DISCONTINUED", "IN PROGRESS"):
        with pytest.raises(rules.Refusal) as info:
            rules.check_set(done, final_dataset(later))
        assert (info.value.status, info.value.error_id) == (0x0110, 0xA710)
    with pytest.raises(rules.Refusal) as info:
        rules.check_set(stored, final_dataset("FINISHED"))
    assert info.value.status == 0x0106
    with pytest.raises(rules.Refusal) as info:
        rules.check_set(stored, final_dataset("COMPLETED", series=False))
    assert (info.value.status, info.value.tag) == (0x0121, 0x00400340)
    no_end = final_dataset("DISCONTINUED", series=False)
    del no_end.PerformedProcedureStepEndTime
    with pytest.raises(rules.Refusal) as info:
        rules.check_set(stored, no_end)
    assert (info.value.status, info.value.tag) == (0x0120, 0x00400251)


# --- a plain pynetdicom SCU ------------------------------------------------------------------------

def test_pynetdicom_create_then_complete_and_the_worklist_follows(mwl_scp, scu):
    uid = generate_uid()
    assert scu.create(create_dataset(), uid).Status == 0x0000
    assert mwl_scp.mpps_status(uid) == "IN PROGRESS"
    assert mwl_scp.step_statuses() == {"SPS001": "IN PROGRESS", "SPS002": "SCHEDULED"}
    progress = Dataset()
    progress.PerformedProcedureStepStatus = "IN PROGRESS"
    progress.PerformedProcedureStepDescription = "half way"
    assert scu.set(progress, uid).Status == 0x0000
    assert scu.set(final_dataset("COMPLETED"), uid).Status == 0x0000
    assert mwl_scp.mpps_status(uid) == "COMPLETED"
    assert mwl_scp.step_statuses() == {"SPS001": "COMPLETED", "SPS002": "SCHEDULED"}
    store = mwl_scp.store()
    try:
        _, stored = store.mpps(uid)
    finally:
        store.close()
    assert stored.PerformedProcedureStepDescription == "half way"
    assert stored.PerformedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4.5"
    assert stored.SOPInstanceUID == uid and stored.SOPClassUID == ModalityPerformedProcedureStep
    events = [e for e in mwl_scp.event_lines() if e["event"].startswith("mpps-")]
    assert [(e["event"], e["status"], e["pps_status"]) for e in events] == [
        ("mpps-create", "0x0000", "IN PROGRESS"), ("mpps-set", "0x0000", "IN PROGRESS"),
        ("mpps-set", "0x0000", "COMPLETED")]
    assert all(e["sop_instance_uid"] == uid and e["calling_aet"] == "MODALITY" for e in events)


def test_pynetdicom_no_change_after_a_final_state(mwl_scp, scu):
    uid = generate_uid()
    assert scu.create(create_dataset(), uid).Status == 0x0000
    assert scu.set(final_dataset("DISCONTINUED", series=False), uid).Status == 0x0000
    for again in ("COMPLETED", "IN PROGRESS", "DISCONTINUED"):
        status = scu.set(final_dataset(again), uid)
        assert status.Status == 0x0110
        assert status.ErrorID == 0xA710
        assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert mwl_scp.mpps_status(uid) == "DISCONTINUED"
    assert mwl_scp.step_statuses()["SPS001"] == "DISCONTINUED"


def test_pynetdicom_duplicate_unknown_invalid_and_missing(mwl_scp, scu):
    uid = generate_uid()
    assert scu.create(create_dataset(), uid).Status == 0x0000
    assert scu.create(create_dataset(), uid).Status == 0x0111  # duplicate SOP instance

    assert scu.set(final_dataset(), generate_uid()).Status == 0x0112  # no such instance

    other = generate_uid()
    status = scu.create(create_dataset(PerformedProcedureStepStatus="COMPLETED"), other)
    assert status.Status == 0x0106 and "PerformedProcedureStepStatus" in status.ErrorComment
    status = scu.create(create_dataset(PerformedStationAETitle=None), other)
    assert status.Status == 0x0120 and "(0040,0241)" in status.ErrorComment
    assert mwl_scp.mpps_status(other) is None  # nothing stored by a refused N-CREATE

    bogus = Dataset()
    bogus.PerformedProcedureStepStatus = "FINISHED"
    status = scu.set(bogus, uid)
    assert status.Status == 0x0106 and status.AttributeIdentifierList == 0x00400252
    status = scu.set(final_dataset("COMPLETED", series=False), uid)
    assert status.Status == 0x0121 and status.AttributeIdentifierList == 0x00400340
    assert mwl_scp.mpps_status(uid) == "IN PROGRESS"  # refused N-SETs change nothing
    assert mwl_scp.step_statuses()["SPS001"] == "IN PROGRESS"


# --- pacs mpps-scu ---------------------------------------------------------------------------------

def run(*args: str):
    return CliRunner().invoke(cli, [*map(str, args)])


def test_pacs_mpps_scu_from_worklist_then_completed_with_series_from_files(mwl_scp, tmp_path):
    from test_storescp import make_file

    sent = tmp_path / "sent"
    sent.mkdir()
    series = generate_uid()
    for n in range(3):
        make_file(sent / f"{n}.dcm", series=series)
    (sent / "notes.txt").write_text("not DICOM")

    result = run("mpps-scu", "create", "127.0.0.1", mwl_scp.port, "--from-worklist", "-k", "AccessionNumber=ACC001",
                 "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID=SPS002", "-q")
    assert result.exit_code == 0, result.output
    uid = result.stdout.strip()
    assert result.stdout == uid + "\n" and result.stderr == ""
    assert mwl_scp.step_statuses() == {"SPS001": "SCHEDULED", "SPS002": "IN PROGRESS"}
    store = mwl_scp.store()
    try:
        _, stored = store.mpps(uid)
    finally:
        store.close()
    assert stored.Modality == "MR" and stored.PerformedStationAETitle == "MR1" and stored.PatientID == "PAT001"
    assert stored.ScheduledStepAttributesSequence[0].ScheduledProcedureStepID == "SPS002"

    result = run("mpps-scu", "set", uid, "127.0.0.1", mwl_scp.port, "--status", "COMPLETED", "--series-from", sent)
    assert result.exit_code == 0, result.output
    assert "COMPLETED" in result.stderr and result.stdout == ""
    assert mwl_scp.mpps_status(uid) == "COMPLETED"
    assert mwl_scp.step_statuses()["SPS002"] == "COMPLETED"
    store = mwl_scp.store()
    try:
        _, stored = store.mpps(uid)
    finally:
        store.close()
    (item,) = stored.PerformedSeriesSequence
    assert item.SeriesInstanceUID == series and len(item.ReferencedImageSequence) == 3

    result = run("mpps-scu", "set", uid, "127.0.0.1", mwl_scp.port, "--status", "DISCONTINUED")
    assert result.exit_code == 1
    assert "0x0110" in result.stderr and "0xA710" in result.stderr


def test_pacs_mpps_scu_options_duplicate_unknown_and_discontinued(mwl_scp):
    uid = generate_uid()
    args = ("--patient-id", "PAT001", "--accession", "ACC001", "--requested-procedure-id", "RP001",
            "--step-id", "SPS001", "-m", "CT", "--station-aet", "CT1")
    result = run("mpps-scu", "create", "127.0.0.1", mwl_scp.port, *args, "--uid", uid)
    assert result.exit_code == 0, result.output
    assert result.stdout == uid + "\n"
    assert mwl_scp.step_statuses()["SPS001"] == "IN PROGRESS"

    result = run("mpps-scu", "create", "127.0.0.1", mwl_scp.port, *args, "--uid", uid)
    assert result.exit_code == 1 and "0x0111" in result.stderr

    result = run("mpps-scu", "set", generate_uid(), "127.0.0.1", mwl_scp.port, "--status", "COMPLETED",
                 "--series", "1.2.3")
    assert result.exit_code == 1 and "0x0112" in result.stderr

    result = run("mpps-scu", "set", uid, "127.0.0.1", mwl_scp.port, "--status", "DISCONTINUED", "--reason", "110514")
    assert result.exit_code == 0, result.output
    assert mwl_scp.mpps_status(uid) == "DISCONTINUED"
    assert mwl_scp.step_statuses()["SPS001"] == "DISCONTINUED"
    store = mwl_scp.store()
    try:
        _, stored = store.mpps(uid)
    finally:
        store.close()
    assert stored.PerformedProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue == "110514"


def test_pacs_mpps_scu_usage_errors(mwl_scp):
    result = run("mpps-scu", "create", "127.0.0.1", mwl_scp.port, "--station-aet", "CT1")
    assert result.exit_code == 2 and "modality" in result.stderr
    result = run("mpps-scu", "set", "1.2.3", "127.0.0.1", mwl_scp.port, "--status", "COMPLETED", "--reason", "110501")
    assert result.exit_code == 2 and "--reason" in result.stderr
    result = run("mpps-scu", "create", "127.0.0.1", mwl_scp.port, "--from-worklist", "-k", "AccessionNumber=NONE")
    assert result.exit_code == 1 and "0 worklist steps match" in result.stderr


@pytest.mark.script_launch_mode("subprocess")
def test_console_script_uid_alone_on_stdout_with_q(mwl_scp, script_runner):
    result = script_runner.run(["pacs", "mpps-scu", "create", "127.0.0.1", str(mwl_scp.port), "--from-worklist",
                                "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID=SPS001", "-q"])
    assert result.returncode == 0, result.stderr
    uid = result.stdout.strip()
    assert result.stdout == uid + "\n" and uid.startswith("1.2.")
    assert mwl_scp.mpps_status(uid) == "IN PROGRESS"
    out, _ = mwl_scp.stop()
    assert out.splitlines()[-1] == "pacs mwl-scp: 2 association(s), 1 MPPS message(s) answered, 0 refused"
