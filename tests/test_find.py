"""C-FIND end to end: DCMTK's findscu against `pacs storescp`, `pacs findscu` against DCMTK's dcmqrscp
and wlmscpfs, and `pacs find --dir` against the same index, all checked against what the stored files say.

One corpus of generated files (varied names, dates, times, modalities, and names holding ', %, _, " and
;--) is stored into a running `pacs storescp` with DCMTK's storescu and indexed into a dcmqrscp with
dcmqridx. Every query case has its expected matches computed in Python from the corpus itself, and
each of the four paths must return exactly those, one response per entity.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import Peer, dcmtk_binary, free_port, wait_for_port
from test_storescp import StoreSCP, dcmtk_send

ROOT = "1.2.826.0.1.3680043.10.543"
SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
               "PT": "1.2.840.10008.5.1.4.1.1.128", "CR": "1.2.840.10008.5.1.4.1.1.1"}


@dataclass(frozen=True)
class Series:
    uid: str
    modality: str
    number: str
    images: int


@dataclass(frozen=True)
class Study:
    patient: str
    uid: str
    date: str
    time: str
    accession: str
    description: str
    series: tuple[Series, ...]


PATIENTS = {  # id: (name, birth date, sex)
    "P001": ("Doe^Jane", "19700101", "F"),
    "P002": ("Doe^John", "19651231", "M"),
    "P003": ("Smith^Anna", "19800515", "F"),
    "P004": ("Müller^Jürgen", "19501010", "M"),
    "P005": ("O'Brien^Pat", "19900202", "O"),
    "P006": ("100%^Sure", "19850303", "F"),
    "P007": ("100X^Sure", "19850303", "F"),
    "P008": ("a_b^c", "19750404", "M"),
    "P009": ("aXb^c", "19750404", "M"),
    "P010": ('Say "Hi"', "19600606", "F"),
    "P011": ("x;--", "19600606", "M"),
    "P012": ("x", "19600606", "M"),
}


def _study(number: int, patient: str, date: str, time_: str, accession: str, description: str, *series):
    uid = f"{ROOT}.{number}"
    return Study(patient, uid, date, time_, accession, description,
                 tuple(Series(f"{uid}.{i}", m, n, k) for i, (m, n, k) in enumerate(series, 1)))


STUDIES = [
    _study(1, "P001", "20240115", "083000", "ACC001", "Chest CT", ("CT", "1", 2), ("CT", "2", 1)),
    _study(2, "P001", "20250102", "101500", "ACC002", "Brain MR", ("MR", "1", 2)),
    _study(3, "P002", "20250310", "073000", "ACC003", "chest ct", ("CT", "1", 1), ("MR", "007", 1)),
    _study(4, "P003", "20251231", "235959", "ACC004", "PET", ("PT", "1", 1)),
    _study(5, "P004", "20250615", "140000", "ACC005", "Knie", ("MR", "1", 1)),
    _study(6, "P005", "20250102", "090000", "ACC006", "Chest CT", ("CR", "1", 1)),
    *(_study(6 + i, p, "20230101", "120000", f"H{i:02d}", PATIENTS[p][0], ("CT", "1", 1))
      for i, p in enumerate(["P006", "P007", "P008", "P009", "P010", "P011", "P012"], 1)),
]
S = {int(s.uid.rsplit(".", 1)[1]): s for s in STUDIES}  # S[1] is study 1


def instances():
    for study in STUDIES:
        for series in study.series:
            for n in range(1, series.images + 1):
                yield study, series, f"{series.uid}.{n}", str(n)


def write_corpus(folder: Path) -> list[Path]:
    paths = []
    for number, (study, series, sop_uid, instance_number) in enumerate(instances()):
        name, birth, sex = PATIENTS[study.patient]
        ds = Dataset()
        if not name.isascii():
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASSES[series.modality], sop_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, study.patient, birth, sex
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study.uid, study.date, study.time
        ds.AccessionNumber, ds.StudyDescription, ds.StudyID = study.accession, study.description, "1"
        ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = series.uid, series.modality, series.number
        ds.InstanceNumber = instance_number
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = bytes(32)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, sop_uid
        path = folder / f"{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# --- expected results, from the corpus -----------------------------------------------------------

def patients(pred=lambda pid, p: True) -> list[str]:
    return sorted(pid for pid, p in PATIENTS.items() if pred(pid, p))


def studies(pred=lambda s: True) -> list[str]:
    return sorted(s.uid for s in STUDIES if pred(s))


def series_of(pred=lambda s, se: True) -> list[str]:
    return sorted(se.uid for s in STUDIES for se in s.series if pred(s, se))


def images(pred=lambda s, se: True) -> list[str]:
    return sorted(uid for s, se, uid, _ in instances() if pred(s, se))


def name(s):
    return PATIENTS[s.patient][0]


UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}

# (id, model, level, keys, expected unique keys). Every case holds for DCMTK's dcmqrscp too, so none
# depends on pacs's case-insensitive names or ModalitiesInStudy (see PACS_ONLY).
CASES = [
    ("study-all", "study", "STUDY", [], studies()),
    ("study-name-wildcard", "study", "STUDY", ["PatientName=Doe*"], studies(lambda s: name(s).startswith("Doe"))),
    ("study-name-question-mark", "study", "STUDY", ["PatientName=Doe^J?ne"], studies(lambda s: s.patient == "P001")),
    ("study-date-range", "study", "STUDY", ["StudyDate=20250101-20251231"],
     studies(lambda s: "20250101" <= s.date <= "20251231")),
    ("study-date-from", "study", "STUDY", ["StudyDate=20250601-"], studies(lambda s: s.date >= "20250601")),
    ("study-date-until", "study", "STUDY", ["StudyDate=-20241231"], studies(lambda s: s.date <= "20241231")),
    ("study-date-single", "study", "STUDY", ["StudyDate=20250102"], studies(lambda s: s.date == "20250102")),
    ("study-time-range", "study", "STUDY", ["StudyTime=0800-1030"], studies(lambda s: "080000" <= s.time <= "103059")),
    ("study-uid-list", "study", "STUDY", [f"StudyInstanceUID={S[1].uid}\\{S[4].uid}\\9.9.9"], studies(
        lambda s: s in (S[1], S[4]))),
    ("study-accession-wildcard", "study", "STUDY", ["AccessionNumber=ACC00?"],
     studies(lambda s: s.accession.startswith("ACC00"))),
    ("study-description-case-sensitive", "study", "STUDY", ["StudyDescription=Chest*"],
     studies(lambda s: s.description.startswith("Chest"))),
    ("literal-percent", "study", "STUDY", ["PatientName=100%^Sure"], studies(lambda s: s.patient == "P006")),
    ("literal-underscore", "study", "STUDY", ["PatientName=a_b^c"], studies(lambda s: s.patient == "P008")),
    ("literal-quote", "study", "STUDY", ["PatientName=O'Brien^Pat"], studies(lambda s: s.patient == "P005")),
    ("literal-double-quote", "study", "STUDY", ['PatientName=Say "Hi"'], studies(lambda s: s.patient == "P010")),
    ("literal-comment", "study", "STUDY", ["PatientName=x;--"], studies(lambda s: s.patient == "P011")),
    ("literal-in-lo", "study", "STUDY", ["StudyDescription=100%^Sure"], studies(lambda s: s.patient == "P006")),
    ("series-of-a-study", "study", "SERIES", [f"StudyInstanceUID={S[1].uid}"], series_of(lambda s, se: s is S[1])),
    ("series-by-modality", "study", "SERIES", [f"StudyInstanceUID={S[3].uid}", "Modality=MR"],
     series_of(lambda s, se: s is S[3] and se.modality == "MR")),
    ("series-number-list", "study", "SERIES", ["Modality=MR"], series_of(lambda s, se: se.modality == "MR")),
    ("images-of-a-series", "study", "IMAGE", [f"StudyInstanceUID={S[1].uid}", f"SeriesInstanceUID={S[1].uid}.1"],
     images(lambda s, se: se.uid == f"{S[1].uid}.1")),
    ("patient-all", "patient", "PATIENT", [], patients()),
    ("patient-name-start", "patient", "PATIENT", ["PatientName=S*"], patients(lambda pid, p: p[0].startswith("S"))),
    ("patient-id-wildcard", "patient", "PATIENT", ["PatientID=P00?"], patients(lambda pid, p: pid.startswith("P00"))),
    ("patient-birth-date-range", "patient", "PATIENT", ["PatientBirthDate=19700101-19851231"],
     patients(lambda pid, p: "19700101" <= p[1] <= "19851231")),
    ("patient-root-studies", "patient", "STUDY", ["PatientID=P001"], studies(lambda s: s.patient == "P001")),
    ("patient-root-series", "patient", "SERIES", ["PatientID=P002", f"StudyInstanceUID={S[3].uid}"],
     series_of(lambda s, se: s is S[3])),
    ("patient-root-images", "patient", "IMAGE",
     ["PatientID=P001", f"StudyInstanceUID={S[2].uid}", f"SeriesInstanceUID={S[2].uid}.1"],
     images(lambda s, se: se.uid == f"{S[2].uid}.1")),
]
# What only pacs's own index promises: names regardless of case and accents, ModalitiesInStudy.
PACS_ONLY = [
    ("name-case-insensitive", "study", "STUDY", ["PatientName=doe*"], studies(lambda s: name(s).startswith("Doe"))),
    ("name-accent-insensitive", "study", "STUDY", ["PatientName=MULLER*"], studies(lambda s: s.patient == "P004")),
    ("modalities-in-study", "study", "STUDY", ["ModalitiesInStudy=MR"],
     studies(lambda s: any(se.modality == "MR" for se in s.series))),
    ("modalities-in-study-list", "study", "STUDY", ["ModalitiesInStudy=PT\\CR"],
     studies(lambda s: any(se.modality in ("PT", "CR") for se in s.series))),
]
ids = [case[0] for case in CASES]


# --- peers ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("corpus")
    return write_corpus(folder)


@pytest.fixture(scope="module")
def pacs_scp(tmp_path_factory, corpus):
    """A `pacs storescp` holding the corpus (sent by DCMTK's storescu)."""
    scp = StoreSCP(tmp_path_factory.mktemp("pacs"), "-aet", "PACS")
    result = dcmtk_send(scp.port, *corpus)
    assert result.returncode == 0, result.stderr
    yield scp
    scp.proc.stop()


@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory, corpus):
    """DCMTK's Q/R SCP with the corpus registered by dcmqridx; yields its port (AE title QRSCP)."""
    binary, indexer = dcmtk_binary("dcmqrscp"), dcmtk_binary("dcmqridx")
    root = tmp_path_factory.mktemp("dcmqrscp")
    storage = root / "QRSCP"
    storage.mkdir()
    config = root / "dcmqrscp.cfg"
    config.write_text(dcmqrscp_config(storage))
    subprocess.run([indexer, str(storage), *map(str, corpus)], check=True, capture_output=True)
    port = free_port()
    # Fork mode: dcmqrscp 3.6.7's --single-process crashes when the first association is released.
    proc = Peer([binary, "-c", str(config), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.stop()


def dcmqrscp_config(storage: Path) -> str:
    return f"""\
NetworkTCPPort  = 104
MaxPDUSize      = 16384
MaxAssociations = 16

HostTable BEGIN
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
QRSCP   {storage}   RW (1000, 1024mb)   ANY
AETable END
"""


def dcmtk_find(port: int, model: str, level: str, keys: list[str], out: Path, aec: str = "PACS"):
    """DCMTK's findscu with -X: (responses read back from rsp*.dcm, the completed process)."""
    out.mkdir(parents=True)
    unique = UNIQUE[level]
    keys = [f"QueryRetrieveLevel={level}", *keys]
    if not any(k.split("=")[0] == unique for k in keys):
        keys.append(unique)
    args = [dcmtk_binary("findscu"), "-v", "-P" if model == "patient" else "-S", "-aec", aec, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], result


def pacs_find(script_runner, *args: str):
    return script_runner.run(["pacs", "find", *args])


def unique_values(stdout: str, level: str) -> list[str]:
    return sorted(json.loads(line)[UNIQUE[level]] for line in stdout.splitlines())


# --- the four paths, one case at a time -------------------------------------------------------------

@pytest.mark.parametrize("case", CASES + PACS_ONLY, ids=ids + [c[0] for c in PACS_ONLY])
def test_dcmtk_findscu_against_pacs_storescp(pacs_scp, tmp_path, case):
    _, model, level, keys, expected = case
    responses, result = dcmtk_find(pacs_scp.port, model, level, keys, tmp_path / "rsp")
    assert "Received Final Find Response (Success)" in result.stderr, result.stderr
    assert sorted(str(ds[UNIQUE[level]].value) for ds in responses) == expected
    assert all(ds.QueryRetrieveLevel == level for ds in responses)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_pacs_findscu_against_dcmqrscp(dcmqrscp, script_runner, case):
    _, model, level, keys, expected = case
    result = pacs_find(script_runner, "127.0.0.1", str(dcmqrscp), "-aec", "QRSCP", "-m", model, "--level", level,
                       "--format", "ndjson", *(a for k in keys for a in ("-k", k)))
    assert result.returncode == 0, result.stderr
    assert unique_values(result.stdout, level) == expected


@pytest.mark.parametrize("case", CASES + PACS_ONLY, ids=ids + [c[0] for c in PACS_ONLY])
def test_pacs_findscu_against_pacs_storescp_and_its_index(pacs_scp, script_runner, case):
    """The network answer and `pacs find --dir` over the same index print the same bytes."""
    _, model, level, keys, expected = case
    args = ["-m", model, "--level", level, "--format", "ndjson", *(a for k in keys for a in ("-k", k))]
    network = pacs_find(script_runner, "127.0.0.1", str(pacs_scp.port), *args)
    local = pacs_find(script_runner, "--dir", str(pacs_scp.archive), *args)
    assert network.returncode == local.returncode == 0, network.stderr + local.stderr
    assert unique_values(network.stdout, level) == expected
    assert local.stdout == network.stdout


# --- what the responses hold ---------------------------------------------------------------------------

def test_responses_carry_level_requested_keys_and_empty_unknown_keys(pacs_scp, tmp_path):
    responses, result = dcmtk_find(pacs_scp.port, "study", "STUDY",
                                   [f"StudyInstanceUID={S[1].uid}", "PatientName", "PatientComments",
                                    "ReferencedStudySequence", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
                                    "StudyTime"], tmp_path / "rsp")
    [ds] = responses  # one response for a study of three instances
    assert ds.QueryRetrieveLevel == "STUDY" and ds.PatientName == "Doe^Jane" and ds.StudyTime == "083000"
    assert ds.ModalitiesInStudy == "CT" and ds.NumberOfStudyRelatedInstances == 3
    assert ds["PatientComments"].is_empty and len(ds.ReferencedStudySequence) == 0
    assert "SpecificCharacterSet" not in ds  # all ASCII: the default repertoire
    assert "SeriesInstanceUID" not in ds and "StudyDescription" not in ds  # only what was asked


def test_unique_key_of_the_level_is_always_returned(pacs_scp, tmp_path):
    out = tmp_path / "rsp"
    out.mkdir()
    subprocess.run([dcmtk_binary("findscu"), "-S", "-aec", "PACS", "-X", "-od", str(out), "-k",
                    "QueryRetrieveLevel=STUDY", "-k", "PatientID=P003", "127.0.0.1", str(pacs_scp.port)],
                   check=True, capture_output=True)
    [rsp] = out.glob("rsp*.dcm")
    assert pydicom.dcmread(rsp).StudyInstanceUID == S[4].uid


def test_non_ascii_names_come_back_in_utf8(pacs_scp, tmp_path):
    responses, result = dcmtk_find(pacs_scp.port, "patient", "PATIENT",
                                   ["SpecificCharacterSet=ISO_IR 192", "PatientName=Mü*"], tmp_path / "rsp")
    [ds] = responses
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.PatientName == "Müller^Jürgen"


def test_ascii_answers_keep_the_requests_character_set(pacs_scp, tmp_path):
    responses, _ = dcmtk_find(pacs_scp.port, "patient", "PATIENT", ["SpecificCharacterSet=ISO_IR 100",
                                                                    "PatientID=P003", "PatientName"], tmp_path / "rsp")
    [ds] = responses
    assert ds.SpecificCharacterSet == "ISO_IR 100" and ds.PatientName == "Smith^Anna"


def test_pacs_findscu_prints_non_ascii_names(pacs_scp, script_runner):
    result = pacs_find(script_runner, "127.0.0.1", str(pacs_scp.port), "-m", "patient", "-k", "PatientName=*ü*",
                       "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("Müller^Jürgen,P004,19501010,M,1")


# --- refusals and statuses -----------------------------------------------------------------------------

@pytest.mark.parametrize("model, level, keys, words", [
    ("study", "STUDY", ["Modality=CT"], "DataSetDoesNotMatchSOPClass"),
    ("study", "SERIES", ["SOPInstanceUID"], "DataSetDoesNotMatchSOPClass"),
    ("patient", "PATIENT", ["StudyDate=20250101"], "DataSetDoesNotMatchSOPClass"),
    ("study", "PATIENT", [], "DataSetDoesNotMatchSOPClass"),  # Study Root has no PATIENT level
    ("study", "STUDY", ["StudyDate=2025-01"], "UnableToProcess"),
])
def test_identifiers_the_scp_refuses(pacs_scp, tmp_path, model, level, keys, words):
    responses, result = dcmtk_find(pacs_scp.port, model, level, keys, tmp_path / "rsp")
    assert responses == []
    assert "Received Final Find Response (" in result.stderr and words in result.stderr, result.stderr


def test_identifier_without_a_level_is_refused(pacs_scp):
    from pynetdicom import AE
    from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind as PATIENT_ROOT

    ae = AE(ae_title="NOLEVEL")
    ae.add_requested_context(PATIENT_ROOT)
    assoc = ae.associate("127.0.0.1", pacs_scp.port, ae_title="PACS")
    try:
        query = Dataset()
        query.PatientID = "P001"
        [(status, identifier)] = list(assoc.send_c_find(query, PATIENT_ROOT))
    finally:
        assoc.release()
        ae.shutdown()
    assert status.Status == 0xA900 and identifier is None
    assert status.ErrorComment == "no Query/Retrieve Level (0008,0052) in the identifier"


def test_pacs_findscu_exit_codes(pacs_scp, script_runner):
    port = str(pacs_scp.port)
    none = pacs_find(script_runner, "127.0.0.1", port, "-k", "PatientName=Nobody*", "--format", "ndjson")
    assert (none.returncode, none.stdout) == (0, "")
    assert none.stderr == f"0 match(es) on ANY-SCP@127.0.0.1:{port}\n"
    refused = pacs_find(script_runner, "127.0.0.1", port, "-k", "Modality=CT")
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1].startswith(
        f"Error: C-FIND on ANY-SCP@127.0.0.1:{port} failed after 0 match(es): 0xA900 Failure: Identifier Does Not "
        "Match SOP Class (Modality is a key below the STUDY level) (check --model and --level")
    usage = pacs_find(script_runner, "127.0.0.1", port, "-k", "StudyDate=2025-01-01")
    assert usage.returncode == 2 and usage.stderr.startswith(
        "Error: -k 'StudyDate=2025-01-01': StudyDate: '2025-01-01' is not a date or date range (dates are YYYYMMDD")
    closed = pacs_find(script_runner, "127.0.0.1", str(free_port()), "-to", "2")
    assert closed.returncode == 3 and "connection refused" in closed.stderr


def test_usage_errors_about_where_to_query(script_runner, tmp_path):
    nowhere = pacs_find(script_runner)
    assert nowhere.returncode == 2 and "missing HOST and PORT" in nowhere.stderr
    both = pacs_find(script_runner, "127.0.0.1", "104", "--db", str(tmp_path / "x.sqlite"))
    assert both.returncode == 2 and "not both" in both.stderr
    missing = pacs_find(script_runner, "--db", str(tmp_path / "x.sqlite"))
    assert missing.returncode == 2 and f"no index at {tmp_path / 'x.sqlite'}" in missing.stderr
    worklist = pacs_find(script_runner, "--dir", str(tmp_path), "-W")
    assert worklist.returncode == 2 and "not Modality Worklist" in worklist.stderr
    models = pacs_find(script_runner, "--dir", str(tmp_path), "-P", "-S")
    assert models.returncode == 2 and "one information model" in models.stderr


def test_combined_date_time_matching_is_negotiated(pacs_scp, dcmqrscp, script_runner):
    keys = ["-k", "StudyDate=20250102-20250615", "-k", "StudyTime=1000-1300", "--format", "ndjson"]
    separate = pacs_find(script_runner, "127.0.0.1", str(pacs_scp.port), *keys)
    combined = pacs_find(script_runner, "127.0.0.1", str(pacs_scp.port), *keys, "--combined-datetime")
    local = pacs_find(script_runner, "--dir", str(pacs_scp.archive), *keys, "--combined-datetime")
    assert unique_values(separate.stdout, "STUDY") == [S[2].uid]
    # 2 Jan 10:00 to 15 June 13:00: study 3 (10 March, 07:30) is inside, study 5 (15 June, 14:00) not.
    assert unique_values(combined.stdout, "STUDY") == sorted([S[2].uid, S[3].uid])
    assert local.stdout == combined.stdout
    declined = pacs_find(script_runner, "127.0.0.1", str(dcmqrscp), "-aec", "QRSCP", *keys, "--combined-datetime")
    assert declined.returncode == 0
    assert "the peer did not agree to combined date-time matching" in declined.stderr
    assert unique_values(declined.stdout, "STUDY") == [S[2].uid]


def test_query_events_are_recorded(pacs_scp, script_runner):
    pacs_find(script_runner, "127.0.0.1", str(pacs_scp.port), "-k", "PatientID=P005", "-aet", "EVENTS")
    [event] = [e for e in pacs_scp.event_lines() if e["event"] == "query" and e["calling_aet"] == "EVENTS"]
    assert (event["model"], event["level"], event["matches"], event["status"]) == ("study", "STUDY", 1, "0x0000")


# --- output --------------------------------------------------------------------------------------------

def test_output_formats(pacs_scp, script_runner):
    base = ["127.0.0.1", str(pacs_scp.port), "-k", "PatientID=P001", "-k", "StudyDate=20250102"]
    csv_out = pacs_find(script_runner, *base, "--format", "csv")
    assert csv_out.stdout.splitlines() == [
        "PatientName,PatientID,StudyInstanceUID,StudyDate,StudyTime,AccessionNumber,StudyDescription,"
        "ModalitiesInStudy,NumberOfStudyRelatedInstances",
        f"Doe^Jane,P001,{S[2].uid},20250102,101500,ACC002,Brain MR,MR,2"]
    dicom_json = json.loads(pacs_find(script_runner, *base, "--format", "json").stdout)
    assert [obj["00100010"] for obj in dicom_json] == [{"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}]
    assert dicom_json[0]["00080052"] == {"vr": "CS", "Value": ["STUDY"]}
    table = script_runner.run(["pacs", "find", *base, "--format", "table"], env={**os.environ, "COLUMNS": "250"})
    header, row = table.stdout.splitlines()
    assert header.split() == ["PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
                              "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
                              "NumberOfStudyRelatedInstances"]
    assert row.split() == ["Doe^Jane", "P001", S[2].uid, "20250102", "101500", "ACC002", "Brain", "MR", "MR", "2"]
    series = pacs_find(script_runner, "127.0.0.1", str(pacs_scp.port), "--level", "SERIES", "--format", "ndjson",
                       "-k", f"StudyInstanceUID={S[3].uid}", "-k", "SeriesNumber=7", "--no-default-keys")
    assert [json.loads(line) for line in series.stdout.splitlines()] == [{"StudyInstanceUID": S[3].uid,
                                                                           "SeriesNumber": "007"}]


def test_write_saves_each_response_as_a_dicom_file(pacs_scp, script_runner, tmp_path):
    out = tmp_path / "responses"
    result = pacs_find(script_runner, "127.0.0.1", str(pacs_scp.port), "-k", "PatientName=Doe*", "--write", str(out),
                       "--format", "ndjson")
    assert result.returncode == 0, result.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["rsp0001.dcm", "rsp0002.dcm", "rsp0003.dcm"]
    saved = sorted(pydicom.dcmread(f).StudyInstanceUID for f in files)
    assert saved == unique_values(result.stdout, "STUDY") == studies(lambda s: name(s).startswith("Doe"))
    assert all(pydicom.dcmread(f).QueryRetrieveLevel == "STUDY" for f in files)


def test_keys_file(pacs_scp, script_runner, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# Doe's studies this year\nPatientName=Doe*\nStudyDate=20250101-\n")
    result = pacs_find(script_runner, "127.0.0.1", str(pacs_scp.port), "--keys-file", str(keys), "--format", "ndjson",
                       "-k", "StudyDate=20240101-")  # -k overrides the file
    assert unique_values(result.stdout, "STUDY") == studies(
        lambda s: name(s).startswith("Doe") and s.date >= "20240101")


# --- storescp's query options -------------------------------------------------------------------------

def test_max_results_sends_the_first_ones_then_a700(tmp_path, corpus, script_runner):
    scp = StoreSCP(tmp_path, "--max-results", "3")
    try:
        assert dcmtk_send(scp.port, *corpus).returncode == 0
        result = pacs_find(script_runner, "127.0.0.1", str(scp.port), "--format", "ndjson")
        assert result.returncode == 1
        assert len(result.stdout.splitlines()) == 3
        assert "failed after 3 match(es): 0xA700 Failure: Refused: Out of Resources (more than 3 matches: narrow " \
               "the query)" in result.stderr
        few = pacs_find(script_runner, "127.0.0.1", str(scp.port), "-k", "PatientID=P001", "--format", "ndjson")
        assert few.returncode == 0 and len(few.stdout.splitlines()) == 2
    finally:
        scp.proc.stop()


def test_no_query_offers_no_find(tmp_path, script_runner):
    scp = StoreSCP(tmp_path, "--no-query")
    try:
        result = pacs_find(script_runner, "127.0.0.1", str(scp.port))
        assert result.returncode == 3
        assert "accepted none of the proposed presentation contexts (Study Root Query/Retrieve Information " \
               "Model - FIND)" in result.stderr
    finally:
        scp.proc.stop()


def build_index(archive: Path, count: int, study: str = "1.9", series: str = "1.9.1") -> None:
    """`count` instance rows straight through the archive library: no files needed to query them."""
    from pacs_cli.archive.index import FileInfo, Index

    archive.mkdir(parents=True)
    index = Index.open(archive / "index.sqlite")
    try:
        with index.write() as tx:
            for number in range(count):
                uid = f"{series}.{number}"
                tx.put({"PatientID": "BIG", "PatientName": "Big^Study", "StudyInstanceUID": study,
                        "SeriesInstanceUID": series, "SOPInstanceUID": uid, "Modality": "CT",
                        "SOPClassUID": SOP_CLASSES["CT"], "InstanceNumber": str(number)},
                       FileInfo(f"BIG/{uid}.dcm", 1, 1))
    finally:
        index.close()


def test_c_cancel_during_a_10000_instance_query_ends_it_with_fe00_soon(tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT

    build_index(tmp_path / "archive", 10_000)
    scp = StoreSCP(tmp_path)
    ae = AE(ae_title="CANCELLER")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PACS")
    try:
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID, query.SOPInstanceUID = "IMAGE", "1.9", ""
        pending, final, cancelled_at = 0, None, None
        for status, _ in assoc.send_c_find(query, STUDY_ROOT, msg_id=7):
            if status.Status in (0xFF00, 0xFF01):
                pending += 1
                if pending == 20:
                    assoc.send_c_cancel(7, query_model=STUDY_ROOT)
                    cancelled_at = time.monotonic()
                continue
            final = status.Status
        answered = time.monotonic() - cancelled_at
    finally:
        assoc.release()
        ae.shutdown()
        _, err = scp.stop()
    assert final == 0xFE00
    # The time includes the responses pynetdicom's DUL thread had read ahead, unasked, before the
    # C-CANCEL went out: against an SCP this fast, about a thousand, taking its main thread a second.
    assert answered < 2.0, (answered, pending)
    assert 20 <= pending < 5_000
    assert "Traceback" not in err


def test_dcmtk_findscu_cancel(tmp_path):
    build_index(tmp_path / "archive", 10_000)
    scp = StoreSCP(tmp_path)
    try:
        started = time.monotonic()
        result = subprocess.run([dcmtk_binary("findscu"), "-v", "-S", "-aec", "PACS", "--cancel", "10", "-k",
                                 "QueryRetrieveLevel=IMAGE", "-k", "StudyInstanceUID=1.9", "-k", "SOPInstanceUID",
                                 "127.0.0.1", str(scp.port)], capture_output=True, text=True, timeout=60)
        seconds = time.monotonic() - started
    finally:
        scp.stop()
    assert "Received Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in result.stderr, \
        result.stderr[-2000:]
    assert result.stderr.count("Received Find Response") < 10_000 and seconds < 5


def test_responses_are_streamed_not_collected_first(tmp_path, script_runner):
    """The first of 8,000 matches arrives long before the last (the SCP does not read them all first).

    Times run from the process start: enough matches that sending them outlasts the start-up."""
    build_index(tmp_path / "archive", 8_000)
    scp = StoreSCP(tmp_path)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pacs_cli", "find", "127.0.0.1", str(scp.port), "--level",
                                 "IMAGE", "--no-default-keys", "-k", "SOPInstanceUID", "--format", "ndjson"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        first = proc.stdout.readline()
        first_after = time.monotonic() - started
        rest = proc.stdout.read()
        total = time.monotonic() - started
        assert proc.wait(30) == 0
    finally:
        scp.stop()
    assert json.loads(first)["SOPInstanceUID"] == "1.9.1.0"
    assert len(rest.splitlines()) == 7_999
    assert first_after < total / 2, (first_after, total)


# --- worklist: just the SCU side, against DCMTK's wlmscpfs ---------------------------------------------

WORKLIST = [("W1", "CT", "CT01", "20250102"), ("W2", "MR", "MR01", "20250103"), ("W3", "CT", "CT02", "20250103")]


@pytest.fixture
def wlmscpfs(tmp_path):
    root = tmp_path / "worklists"
    (root / "WLSCP").mkdir(parents=True)
    (root / "WLSCP" / "lockfile").touch()  # wlmscpfs wants it
    for pid, modality, station, date in WORKLIST:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Work^{pid}", pid, "19700101", "F"
        ds.AccessionNumber, ds.StudyInstanceUID, ds.RequestedProcedureID = f"A{pid}", generate_uid(), f"RP{pid}"
        ds.RequestedProcedureDescription = "Scheduled exam"
        step = Dataset()
        step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate = modality, station, date
        step.ScheduledProcedureStepStartTime, step.ScheduledProcedureStepID = "0800", f"S{pid}"
        step.ScheduledProcedureStepDescription, step.ScheduledPerformingPhysicianName = "Step", ""
        ds.ScheduledProcedureStepSequence = [step]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(root / "WLSCP" / f"{pid}.wl", enforce_file_format=True)
    port = free_port()
    proc = Peer([dcmtk_binary("wlmscpfs"), "-dfp", str(root), str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.stop()


def test_worklist_query_against_wlmscpfs(wlmscpfs, script_runner):
    result = pacs_find(script_runner, "127.0.0.1", str(wlmscpfs), "-aec", "WLSCP", "-W", "--format", "ndjson",
                       "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
                       "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20250101-20250131")
    assert result.returncode == 0, result.stderr
    rows = sorted((json.loads(line) for line in result.stdout.splitlines()), key=lambda r: r["PatientID"])
    assert [r["PatientID"] for r in rows] == ["W1", "W3"]
    assert rows[1]["ScheduledProcedureStepSequence[0].ScheduledStationAETitle"] == "CT02"
    assert rows[0]["RequestedProcedureDescription"] == "Scheduled exam"
    by_station = pacs_find(script_runner, "127.0.0.1", str(wlmscpfs), "-aec", "WLSCP", "--model", "worklist",
                           "--format", "ndjson", "-k", "ScheduledProcedureStepSequence.ScheduledStationAETitle=MR01")
    assert [json.loads(line)["PatientID"] for line in by_station.stdout.splitlines()] == ["W2"]
