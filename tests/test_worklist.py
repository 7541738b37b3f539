"""Modality Worklist: DCMTK's `findscu -W` against `pacs mwl-scp` returns exactly the matching steps (ranges and
sequence keys included), from JSON items and DCMTK .wl files; files are reread when they change; the item
management options; C-CANCEL; and the item format on its own."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from conftest import dcmtk_binary
from pacs_cli.cli import cli
from pacs_cli.worklist import items
from test_mpps import MwlSCP

SPS = "ScheduledProcedureStepSequence[0]"


def item(patient_id, name, accession, *steps, **extra) -> dict:
    return {"patient": {"PatientID": patient_id, "PatientName": name},
            "request": {"AccessionNumber": accession},
            "procedure": {"RequestedProcedureID": f"RP-{accession}"},
            "steps": [{"ScheduledProcedureStepID": sps, "ScheduledStationAETitle": aet, "Modality": modality,
                       "ScheduledProcedureStepStartDate": date, "ScheduledProcedureStepStartTime": time}
                      for sps, aet, modality, date, time in steps], **extra}


def wl_file(path: Path) -> Path:
    """A worklist file as DCMTK's wlmscpfs reads them: a bare dataset, Little Endian Explicit, no File Meta."""
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "Brown^Bob", "PAT003", "ACC003"
    ds.RequestedProcedureID, ds.StudyInstanceUID = "RP-ACC003", "1.2.826.0.1.3680043.10.543.3"
    step = Dataset()
    step.ScheduledStationAETitle, step.Modality = "CT2", "CT"
    step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime = "20250102", "160000"
    step.ScheduledProcedureStepID = "SPS004"
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return path


@pytest.fixture(scope="module")
def worklist_scp(tmp_path_factory):
    root = tmp_path_factory.mktemp("mwl")
    directory = root / "worklist"
    directory.mkdir()
    (directory / "a.json").write_text(json.dumps(item("PAT001", "Doe^Jane", "ACC001",
                                                      ("SPS001", "CT1", "CT", "20250102", "0900"),
                                                      ("SPS002", "MR1", "MR", "20250103", "1400"))))
    (directory / "b.json").write_text(json.dumps([item("PAT002", "Smith^John", "ACC002",
                                                       ("SPS003", "CT1", "CT", "20250105", "113000"))]))
    (directory / "CT2").mkdir()
    wl_file(directory / "CT2" / "acc003.wl")
    scp = MwlSCP(root)
    yield scp
    scp.proc.stop()


def dcmtk_worklist(port: int, keys: list[str], out: Path):
    out.mkdir(parents=True, exist_ok=True)
    args = [dcmtk_binary("findscu"), "-v", "-W", "-aec", "WORKLIST", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], result


RETURN_KEYS = ["PatientName", "PatientID", "AccessionNumber", f"{SPS}.ScheduledProcedureStepID",
               f"{SPS}.ScheduledStationAETitle", f"{SPS}.ScheduledProcedureStepStatus"]
CASES = [  # (id, keys, the steps that match)
    ("universal", ["PatientName=*"], ["SPS001", "SPS002", "SPS003", "SPS004"]),
    ("modality in the sequence", [f"{SPS}.Modality=CT"], ["SPS001", "SPS003", "SPS004"]),
    ("station and date range", [f"{SPS}.ScheduledStationAETitle=CT1",
                                f"{SPS}.ScheduledProcedureStepStartDate=20250101-20250102"], ["SPS001"]),
    ("date range", [f"{SPS}.ScheduledProcedureStepStartDate=20250102-20250103"], ["SPS001", "SPS002", "SPS004"]),
    ("open date range", [f"{SPS}.ScheduledProcedureStepStartDate=20250104-"], ["SPS003"]),
    ("time range", [f"{SPS}.ScheduledProcedureStepStartTime=1000-1700"], ["SPS002", "SPS003", "SPS004"]),
    ("date and time", [f"{SPS}.ScheduledProcedureStepStartDate=20250102",
                       f"{SPS}.ScheduledProcedureStepStartTime=-1200"], ["SPS001"]),
    ("wild card name", ["PatientName=Doe*"], ["SPS001", "SPS002"]),
    ("single value", ["AccessionNumber=ACC003"], ["SPS004"]),
    ("station wild card", [f"{SPS}.ScheduledStationAETitle=CT?"], ["SPS001", "SPS003", "SPS004"]),
    ("no match", [f"{SPS}.Modality=US"], []),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dcmtk_findscu_worklist(worklist_scp, tmp_path, case):
    _, keys, expected = case
    responses, result = dcmtk_worklist(worklist_scp.port, RETURN_KEYS + keys, tmp_path / "rsp")
    assert "Received Final Find Response (Success)" in result.stderr, result.stderr
    steps = sorted(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for ds in responses)
    assert steps == expected
    for ds in responses:  # one step per response, with the requested keys filled
        (step,) = ds.ScheduledProcedureStepSequence
        assert step.ScheduledStationAETitle and step.ScheduledProcedureStepStatus == "SCHEDULED"
        assert ds.PatientID and ds.AccessionNumber


def test_response_carries_requested_keys_only_and_empty_ones_zero_length(worklist_scp, tmp_path):
    responses, _ = dcmtk_worklist(worklist_scp.port, ["AccessionNumber=ACC001", "PatientBirthDate",
                                                      "StudyInstanceUID", f"{SPS}.Modality=MR"], tmp_path)
    (ds,) = responses
    assert ds.PatientBirthDate == "" and ds.StudyInstanceUID  # derived from the file when not given
    assert set(ds.dir()) == {"AccessionNumber", "PatientBirthDate", "ScheduledProcedureStepSequence",
                             "StudyInstanceUID"}
    assert ds.ScheduledProcedureStepSequence[0].dir() == ["Modality"]


def test_malformed_range_is_unable_to_process(worklist_scp, tmp_path):
    _, result = dcmtk_worklist(worklist_scp.port, [f"{SPS}.ScheduledProcedureStepStartDate=2025-01"], tmp_path)
    assert "Received Final Find Response (Failed: UnableToProcess)" in result.stderr, result.stderr


def test_c_cancel_is_honoured(tmp_path):
    directory = tmp_path / "worklist"
    directory.mkdir()
    steps = [(f"S{n:03d}", "CT1", "CT", "20250102", "0900") for n in range(200)]
    (directory / "many.json").write_text(json.dumps(item("PAT9", "Many^Steps", "ACC9", *steps)))
    scp = MwlSCP(tmp_path)
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ModalityWorklistInformationFind)
        assoc = ae.associate("127.0.0.1", scp.port)
        identifier = Dataset()
        identifier.PatientName = ""
        identifier.ScheduledProcedureStepSequence = Sequence([Dataset()])
        statuses = []
        for status, _ in assoc.send_c_find(identifier, ModalityWorklistInformationFind, msg_id=7):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, assoc.accepted_contexts[0].context_id)
        assoc.release()
        ae.shutdown()
        assert statuses[-1] == 0xFE00 and len(statuses) < 200
    finally:
        scp.proc.stop()


def test_files_are_reread_when_they_change(tmp_path):
    directory = tmp_path / "worklist"
    directory.mkdir()
    path = directory / "one.json"
    path.write_text(json.dumps(item("PAT1", "Doe^Jane", "ACC1", ("S1", "CT1", "CT", "20250102", "0900"))))
    scp = MwlSCP(tmp_path)
    try:
        responses, _ = dcmtk_worklist(scp.port, RETURN_KEYS, tmp_path / "r1")
        assert [ds.PatientName for ds in responses] == ["Doe^Jane"]
        path.write_text(json.dumps(item("PAT1", "Roe^Jane", "ACC1", ("S1", "CT1", "CT", "20250102", "0900"))))
        os.utime(path, ns=(1, 1))  # a changed mtime even on a coarse clock
        (directory / "two.json").write_text(json.dumps(item("PAT2", "New^Item", "ACC2",
                                                            ("S2", "CT1", "CT", "20250102", "1000"))))
        responses, _ = dcmtk_worklist(scp.port, RETURN_KEYS, tmp_path / "r2")
        assert sorted(str(ds.PatientName) for ds in responses) == ["New^Item", "Roe^Jane"]
        path.unlink()
        responses, _ = dcmtk_worklist(scp.port, RETURN_KEYS, tmp_path / "r3")
        assert [str(ds.PatientName) for ds in responses] == ["New^Item"]
    finally:
        scp.proc.stop()


def test_add_list_remove(tmp_path):
    directory = tmp_path / "worklist"
    source = tmp_path / "ct-head.json"
    source.write_text(json.dumps(item("PAT1", "Doe^Jane", "ACC1", ("S1", "CT1", "CT", "20250102", "0900"),
                                      ("S2", "CT1", "CT", "20250102", "1000"))))
    runner = CliRunner()
    result = runner.invoke(cli, ["mwl-scp", "--dir", str(directory), "--add", str(source)])
    assert result.exit_code == 0, result.output
    assert (directory / "ct-head.json").is_file() and "added 1 item(s)" in result.stderr
    result = runner.invoke(cli, ["mwl-scp", "--dir", str(directory), "--add", str(source)])
    assert result.exit_code == 2 and "already exists" in result.stderr

    result = runner.invoke(cli, ["mwl-scp", "--dir", str(directory), "--list"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["accession_number"], r["scheduled_procedure_step_id"], r["scheduled_procedure_step_status"])
            for r in rows] == [("ACC1", "S1", "SCHEDULED"), ("ACC1", "S2", "SCHEDULED")]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"PatientID": "X", "NotAKeyword": "1", "steps": [{}]}))
    result = runner.invoke(cli, ["mwl-scp", "--dir", str(directory), "--add", str(bad)])
    assert result.exit_code == 2 and "'NotAKeyword' is not a DICOM keyword" in result.stderr

    result = runner.invoke(cli, ["mwl-scp", "--dir", str(directory), "--remove", "ACC1", "--list"])
    assert result.exit_code == 0, result.output
    assert not (directory / "ct-head.json").exists() and result.stdout == ""
    result = runner.invoke(cli, ["mwl-scp", "--dir", str(directory), "--remove", "ACC1"])
    assert result.exit_code == 2 and "no item with accession number" in result.stderr


def test_item_format(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"patient": {"PatientName": "Doe^Jane", "OtherPatientIDs": ["A", "B"]},
                                "visit": {"AdmissionID": "ADM1"}, "AccessionNumber": "A1",
                                "steps": [{"Modality": "CT", "ScheduledProtocolCodeSequence": [
                                    {"CodeValue": "P1", "CodingSchemeDesignator": "99X", "CodeMeaning": "x"}]}]}))
    (ds,) = items.read_items(path)
    assert ds.AdmissionID == "ADM1" and list(ds.OtherPatientIDs) == ["A", "B"]
    step = ds.ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepStatus == "SCHEDULED" and step.ScheduledProtocolCodeSequence[0].CodeValue == "P1"
    assert ds.StudyInstanceUID == items.read_items(path)[0].StudyInstanceUID  # stable across reads
    path.write_text(json.dumps({"PatientName": "No^Steps"}))
    with pytest.raises(items.ItemError, match="no ScheduledProcedureStepSequence"):
        items.read_items(path)
    path.write_text("{not json")
    with pytest.raises(items.ItemError, match="not valid JSON"):
        items.read_items(path)


def test_mpps_status_shows_in_worklist_queries(tmp_path):
    from pydicom.uid import generate_uid

    from test_mpps import ITEM, Scu, create_dataset

    directory = tmp_path / "worklist"
    directory.mkdir()
    (directory / "acc001.json").write_text(json.dumps(ITEM))
    scp = MwlSCP(tmp_path)
    try:
        scu = Scu(scp.port)
        assert scu.create(create_dataset(), generate_uid()).Status == 0
        scu.close()
        responses, _ = dcmtk_worklist(scp.port, RETURN_KEYS + [f"{SPS}.ScheduledProcedureStepStatus=IN PROGRESS"],
                                      tmp_path / "rsp")
        assert [ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for ds in responses] == ["SPS001"]
        responses, _ = dcmtk_worklist(scp.port, RETURN_KEYS + [f"{SPS}.ScheduledProcedureStepStatus=SCHEDULED"],
                                      tmp_path / "rsp2")
        assert [ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for ds in responses] == ["SPS002"]
        # The status outlives a reread of the item file.
        (directory / "acc001.json").write_text(json.dumps({**ITEM, "visit": {"AdmissionID": "ADM2"}}))
        os.utime(directory / "acc001.json", ns=(2, 2))
        responses, _ = dcmtk_worklist(scp.port, RETURN_KEYS + ["AdmissionID"], tmp_path / "rsp3")
        assert {ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID:
                (ds.AdmissionID, ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus)
                for ds in responses} == {"SPS001": ("ADM2", "IN PROGRESS"), "SPS002": ("ADM2", "SCHEDULED")}
    finally:
        scp.proc.stop()


def test_library_modules_import_neither_click_nor_rich_and_sql_lives_in_db_py():
    import ast
    import re

    import pacs_cli

    package = Path(pacs_cli.__file__).parent
    modules = [*sorted((package / "worklist").glob("*.py")), package / "dimse" / "mpps.py",
               package / "dimse" / "worklist.py"]
    for path in modules:
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in ("click", "rich")], (path.name, names)
    statement = re.compile(r"""["'](?:SELECT|INSERT|UPDATE|DELETE|CREATE|PRAGMA|BEGIN|COMMIT|ROLLBACK)\b""")
    assert [p.name for p in modules if p.name != "db.py" and statement.search(p.read_text())] == []


@pytest.mark.parametrize("options, expected", [
    (["--station", "CT1"], ["SPS001", "SPS003"]),
    (["--modality", "MR"], ["SPS002"]),
    (["--station", "CT?", "--date", "20250102-20250104"], ["SPS001", "SPS004"]),
    (["--date", "today"], []),
])
def test_pacs_find_worklist_shortcuts(worklist_scp, script_runner, options, expected):
    result = script_runner.run(["pacs", "find", "127.0.0.1", str(worklist_scp.port), "-aec", "WORKLIST", "-W",
                                "-k", f"{SPS}.ScheduledProcedureStepID", *options, "--format", "ndjson"])
    assert result.returncode == 0, result.stderr
    steps = sorted(json.loads(line)[f"{SPS}.ScheduledProcedureStepID"] for line in result.stdout.splitlines())
    assert steps == expected


def test_worklist_shortcuts_need_the_worklist_model(script_runner):
    result = script_runner.run(["pacs", "find", "127.0.0.1", "104", "--station", "CT1"])
    assert result.returncode == 2
    assert "add -W" in result.stderr
