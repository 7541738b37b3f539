"""``-k`` keys into identifiers and back, the default keys per level, and the output formatters."""

from __future__ import annotations

import csv
import io
import json

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from pacs_cli import output
from pacs_cli.dimse import find, identifiers
from pacs_cli.dimse.identifiers import build_identifier, flatten, key_texts, parse_key, parse_keys
from pacs_cli.errors import UsageError


def identifier(*texts: str) -> Dataset:
    return build_identifier(parse_keys((t, "-k") for t in texts))


# --- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, path, value", [
    ("PatientName=Doe^J*", "PatientName", "Doe^J*"),
    ("PatientName", "PatientName", ""),
    ("PatientName=", "PatientName", ""),
    ("(0010,0020)=007", "PatientID", "007"),
    ("0010,0020=007", "PatientID", "007"),
    ("00100020=007", "PatientID", "007"),
    ("(0008,0052)=series", "QueryRetrieveLevel", "SERIES"),
    ("StudyDescription= two  spaces ", "StudyDescription", " two  spaces "),
    ("AccessionNumber=a=b", "AccessionNumber", "a=b"),
    ("ScheduledProcedureStepSequence[0].Modality=CT", "ScheduledProcedureStepSequence[0].Modality", "CT"),
    ("ScheduledProcedureStepSequence.Modality=CT", "ScheduledProcedureStepSequence[0].Modality", "CT"),
    ("(0040,0100)[1].(0008,0060)=MR", "ScheduledProcedureStepSequence[1].Modality", "MR"),
    ("ReferencedStudySequence", "ReferencedStudySequence", ""),
    ("StudyDate=20250101-", "StudyDate", "20250101-"),
    ("StudyTime=-1200", "StudyTime", "-1200"),
    ("StudyInstanceUID=1.2.3\\1.2.4", "StudyInstanceUID", "1.2.3\\1.2.4"),
])
def test_keys_parse(text, path, value):
    key = parse_key(text)
    assert (key.name, key.value) == (path, value)


@pytest.mark.parametrize("text, message, hint", [
    ("PatientNam=Doe", "unknown DICOM keyword 'PatientNam'", "did you mean PatientName?"),
    ("patientname=Doe", "unknown DICOM keyword 'patientname'", "did you mean PatientName?"),
    ("(0010,001)=x", "bad tag '(0010,001)'", "(gggg,eeee)"),
    ("(0009,1001)=x", "not in the DICOM dictionary", "private attributes"),
    ("(0002,0010)=x", "command or file meta element", None),
    ("=x", "no attribute before '='", "PatientName=Doe*"),
    ("PatientName[0].PatientID=x", "PatientName is not a sequence (PN)", None),
    ("PatientName[0]=x", "PatientName is not a sequence (PN), so no [N]", None),
    ("ScheduledProcedureStepSequence=CT", "is a sequence and takes no value",
     "ScheduledProcedureStepSequence[0].Keyword=VALUE"),
    ("ScheduledProcedureStepSequence[x].Modality=CT", "item number [x] is not a number", None),
    ("StudyDate=2025-01-01", "StudyDate: '2025-01-01' is not a date or date range", "YYYYMMDD"),
    ("StudyDate=*", "StudyDate: '*' is not a date or date range", "YYYYMMDD"),
    ("StudyTime=25", "StudyTime: '25' is not a time or time range", "HHMMSS"),
    ("StudyInstanceUID=1.2.*", "StudyInstanceUID: '1.2.*' is not a UID", "no wildcards"),
    ("SeriesNumber=seven", "SeriesNumber: 'seven' is not an integer", None),
    ("QueryRetrieveLevel=FRAME", "QueryRetrieveLevel must be one of PATIENT, STUDY, SERIES, IMAGE", None),
    ("PatientID=a\nb", "control character", None),
    ("PixelData", "has VR OB", None),
])
def test_bad_keys_say_what_and_how(text, message, hint):
    with pytest.raises(UsageError) as raised:
        parse_key(text)
    assert message in raised.value.message
    assert raised.value.message.startswith(f"-k {text!r}: ")
    if hint:
        assert hint in raised.value.hint


def test_keys_file_lines_carry_their_place(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# a study query\nPatientName=Doe*\n\n  StudyDate=20250101-  \nStudyDate=bad\n")
    items = identifiers.read_keys_file(path)
    assert items[:2] == [("PatientName=Doe*", f"{path}:2"), ("StudyDate=20250101-", f"{path}:4")]
    with pytest.raises(UsageError, match=rf"^{path}:5 'StudyDate=bad': "):
        parse_keys(items)


def test_identifier_with_nested_sequences_and_later_keys_winning():
    ds = identifier("PatientName=A*", "ScheduledProcedureStepSequence[1].Modality=CT",
                    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT01", "PatientName=B*",
                    "ReferencedStudySequence", "PatientID=007")
    assert ds.PatientName == "B*" and ds.PatientID == "007"
    sps = ds.ScheduledProcedureStepSequence
    assert len(sps) == 2 and sps[0].ScheduledStationAETitle == "CT01" and sps[1].Modality == "CT"
    assert "Modality" not in sps[0]
    assert len(ds.ReferencedStudySequence) == 0
    encode(ds, False, True)  # encodes as a real identifier


def test_default_keys_and_columns():
    keys = parse_keys([("PatientName=Doe*", "-k"), ("StudyComments", "-k")])
    ds, columns = find.make_identifier(find.MODELS["study"], None, keys)
    assert ds.QueryRetrieveLevel == "STUDY" and ds.PatientName == "Doe*"
    assert columns[:3] == ["PatientName", "PatientID", "StudyInstanceUID"] and columns[-1] == "StudyComments"
    _, columns = find.make_identifier(find.MODELS["patient"], "series", [], defaults=True)
    assert columns[0] == "PatientID" and "SeriesInstanceUID" in columns
    ds, columns = find.make_identifier(find.MODELS["study"], "IMAGE", keys, defaults=False)
    assert columns == ["PatientName", "StudyComments"] and ds.QueryRetrieveLevel == "IMAGE"
    ds, columns = find.make_identifier(find.MODELS["worklist"], None, [])
    assert "QueryRetrieveLevel" not in ds
    assert "ScheduledProcedureStepSequence[0].Modality" in columns and "ScheduledProcedureStepSequence" not in columns


@pytest.mark.parametrize("model, level, keys, message", [
    ("study", "PATIENT", [], "the Study Root model has no PATIENT level"),
    ("worklist", "STUDY", [], "Modality Worklist queries have no level"),
    ("study", "SERIES", ["QueryRetrieveLevel=IMAGE"], "--level SERIES and -k QueryRetrieveLevel=IMAGE disagree"),
])
def test_level_problems_are_usage_errors(model, level, keys, message):
    with pytest.raises(UsageError, match=message):
        find.make_identifier(find.MODELS[model], level, parse_keys((k, "-k") for k in keys))


# --- reading back --------------------------------------------------------------------------------

def test_key_texts_read_raw_values_without_validation(recwarn):
    ds = identifier("Modality=c*", "PatientName=Müller^J*", "StudyDate=20250101-", "SeriesNumber=007",
                    "ReferencedStudySequence")
    ds.SpecificCharacterSet = "ISO_IR 192"
    received = decode(io.BytesIO(encode(ds, False, True)), False, True)
    texts = {t.keyword: (t.vr, t.text) for t in key_texts(received)}
    assert texts["Modality"] == ("CS", "c*")
    assert texts["PatientName"] == ("PN", "Müller^J*")
    assert texts["StudyDate"] == ("DA", "20250101-")
    assert texts["SeriesNumber"] == ("IS", "007")
    assert texts["ReferencedStudySequence"] == ("SQ", "")
    assert [w for w in recwarn if "pydicom" in str(w.filename)] == []


def test_flatten_gives_strings_and_paths():
    ds = identifier("PatientID=007", "ScheduledProcedureStepSequence[0].Modality=CT",
                    "ScheduledProcedureStepSequence[1].Modality=MR", "ReferencedStudySequence")
    ds.ModalitiesInStudy = ["CT", "MR"]
    received = decode(io.BytesIO(encode(ds, True, True)), True, True)
    assert flatten(received) == {
        "ModalitiesInStudy": "CT\\MR", "PatientID": "007", "ReferencedStudySequence": "",
        "ScheduledProcedureStepSequence": "2", "ScheduledProcedureStepSequence[0].Modality": "CT",
        "ScheduledProcedureStepSequence[1].Modality": "MR"}


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("keys", [
    ("PatientName=Müller^J*", "PatientID=007", "StudyDate", "QueryRetrieveLevel=STUDY", "Rows=512"),
    ("ReferencedStudySequence", "NumberOfStudyRelatedInstances=12"),  # an empty sequence: flat
    ("ScheduledProcedureStepSequence[0].Modality=CT", "PatientID=1"),  # an item: pydicom's reader
    (),
])
def test_decoded_identifiers_are_the_datasets_pydicom_reads(keys, implicit):
    ds = identifier(*keys) if keys else Dataset()
    if keys:
        ds.SpecificCharacterSet = "ISO_IR 192"
    data = encode(ds, implicit, True)
    ours, pydicoms = identifiers.decode_identifier(data, implicit), decode(io.BytesIO(data), implicit, True)
    assert ours._dict == pydicoms._dict  # the same raw elements, values converted only when read
    assert ours == pydicoms
    assert (ours.original_encoding, ours.original_character_set) == (pydicoms.original_encoding,
                                                                      pydicoms.original_character_set)
    assert flatten(ours) == flatten(pydicoms)
    state = {name: value for name, value in vars(ours).items() if name != "_dict"}
    assert state == {name: value for name, value in vars(pydicoms).items() if name != "_dict"}


def test_decoded_identifiers_share_no_state():
    data = encode(identifier("PatientID=1"), True, True)
    first, second = identifiers.decode_identifier(data, True), identifiers.decode_identifier(data, True)
    first.PatientID = "2"
    first.private_block(0x0009, "ME", create=True)
    assert second.PatientID == "1" and second._private_blocks == {} and first._private_blocks


@pytest.mark.parametrize("data", [
    b"\x10\x00\x10\x00PN\x08\x00Doe",  # a value past the end
    b"\x10\x00\x10\x00",  # a header cut short
    b"\x10\x00\x10\x00\x00\x00\x04\x00ABCD",  # no valid VR where an explicit one belongs
])
def test_malformed_identifiers_fail_as_pydicom_fails(data):
    try:
        expected = decode(io.BytesIO(data), False, True)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, ours must raise the same
        with pytest.raises(type(exc)):
            identifiers.decode_identifier(data, False)
    else:
        assert identifiers.decode_identifier(data, False) == expected


# --- formatters ----------------------------------------------------------------------------------

def test_auto_format_is_a_table_on_a_terminal_and_json_lines_otherwise():
    assert output.resolve_format("auto", True) == "table"
    assert output.resolve_format("auto", False) == "ndjson"
    assert output.resolve_format("csv", True) == "csv"
    with pytest.raises(ValueError):
        output.resolve_format("xml", False)


ROWS = [{"PatientID": "007", "PatientName": 'Doe^"J", Jr', "Extra": "x"}, {"PatientID": "", "PatientName": "Ünal"}]


def test_ndjson_and_csv_keep_strings():
    rows = list(output.select(ROWS, ["PatientID", "PatientName"]))
    lines = list(output.ndjson_lines(rows))
    assert [json.loads(line) for line in lines] == [{"PatientID": "007", "PatientName": 'Doe^"J", Jr'},
                                                    {"PatientID": "", "PatientName": "Ünal"}]
    assert "Ünal" in lines[1]
    text = "".join(output.csv_lines(["PatientID", "PatientName"], rows))
    assert list(csv.reader(io.StringIO(text))) == [["PatientID", "PatientName"], ["007", 'Doe^"J", Jr'], ["", "Ünal"]]


def test_dicom_json_is_one_array():
    ds = identifier("PatientID=007", "PatientName=Doe^Jane", "StudyDate")
    assert json.loads("".join(output.dicom_json([ds, ds]))) == [ds.to_json_dict()] * 2
    assert json.loads("".join(output.dicom_json([]))) == []
    [obj] = json.loads("".join(output.dicom_json([ds])))
    assert obj["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}


def test_table_headers_are_short_when_unique():
    assert output.headers(["A[0].Modality", "PatientID", "A[0].X", "B[0].X"]) == \
        ["Modality", "PatientID", "A[0].X", "B[0].X"]
    table = output.table(["PatientID"], [{"PatientID": "007"}])
    assert table.row_count == 1
