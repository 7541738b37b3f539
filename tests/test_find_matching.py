"""C-FIND matching (PS3.4 C.2.2.2) as the index runs it: every matching type, the case rules, the
hierarchy check, and values that SQL would misread (quotes, %, _, comments) matching literally.

Rows are written straight through the index's writer, so each test states exactly what is stored;
queries go through :func:`matching.build_query` and :meth:`Index.find`, the path the SCP takes.
"""

from __future__ import annotations

import json

import pytest

from pacs_cli.archive import matching
from pacs_cli.archive.index import FileInfo, Index
from pacs_cli.archive.schema import Column, STUDY

HOSTILE = ["O'Brien", "100%", "a_b", 'Say "Hi"', "x;--", "[abc]", "x' OR '1'='1", "%", "_"]


@pytest.fixture
def index(tmp_path):
    index = Index.open(tmp_path / "index.sqlite")
    yield index
    index.close()


def put(index: Index, *rows: dict) -> None:
    """Store rows (keyword -> value); every row gets its own patient/study/series/instance unless given."""
    with index.write() as tx:
        for number, row in enumerate(rows):
            values = {"PatientID": f"P{number}", "StudyInstanceUID": f"1.{number}",
                      "SeriesInstanceUID": f"1.{number}.1", "SOPInstanceUID": f"1.{number}.1.1", **row}
            tx.put(values, FileInfo(f"f/{values['SOPInstanceUID']}", 1, 1))


def found(index: Index, level: str = STUDY, combined: bool = False, **keys) -> list[str]:
    """The unique keys of the level that match ``keys``, in index order."""
    unique = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
              "IMAGE": "SOPInstanceUID"}[level]
    return [row[unique] for row in index.find(matching.build_query(level, keys, combined))]


# --- universal and single value ------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "*", "**", "  "])
def test_universal_matching_adds_no_condition(index, value):
    put(index, {"StudyDescription": "A"}, {"StudyDescription": ""})
    query = matching.build_query(STUDY, {"StudyDescription": value})
    assert query.conditions == () and query.where == "1"
    assert found(index, StudyDescription=value) == ["1.0", "1.1"]


def test_single_value_matching_is_exact_and_case_sensitive_for_text(index):
    put(index, {"StudyDescription": "Chest CT"}, {"StudyDescription": "chest ct"}, {"StudyDescription": "Chest CTA"})
    assert found(index, StudyDescription="Chest CT") == ["1.0"]
    assert found(index, StudyDescription="CHEST CT") == []
    assert found(index, AccessionNumber="A1") == []


def test_padding_spaces_are_not_significant(index):
    put(index, {"AccessionNumber": "A1"})
    assert found(index, AccessionNumber=" A1  ") == ["1.0"]


def test_empty_stored_value_does_not_match_a_value(index):
    """PS3.4 C.2.2.1.2's zero-length Required Key rule is about the request (dcm4chee-arc-light#100)."""
    put(index, {"StudyDate": "", "AccessionNumber": ""}, {"StudyDate": "20250101", "AccessionNumber": "A"})
    assert found(index, StudyDate="20250101") == ["1.1"]
    assert found(index, StudyDate="-20251231") == ["1.1"]
    assert found(index, AccessionNumber="*") == ["1.0", "1.1"]  # universal still matches everything
    assert found(index, AccessionNumber="?*") == ["1.1"]


# --- wild cards and escaping -----------------------------------------------------------------------

def test_wildcards_star_and_question_mark_are_case_sensitive_outside_pn(index):
    put(index, {"StudyDescription": "Chest CT"}, {"StudyDescription": "chest ct"}, {"StudyDescription": "Head"})
    assert found(index, StudyDescription="Chest*") == ["1.0"]
    assert found(index, StudyDescription="*ct") == ["1.1"]
    assert found(index, StudyDescription="He?d") == ["1.2"]
    assert found(index, StudyDescription="He?") == []
    assert found(index, StudyDescription="*e*") == ["1.0", "1.1", "1.2"]


@pytest.mark.parametrize("value", HOSTILE)
def test_sql_special_characters_match_literally_and_nothing_else(index, value):
    decoys = ["O-Brien", "100X", "aXb", "Say Hi", "x", "a", "abc", "xOR1=1", "", "b"]
    put(index, *({"StudyDescription": v, "PatientName": v, "AccessionNumber": v[:16]}
                 for v in [value, *decoys]))
    assert found(index, StudyDescription=value) == ["1.0"]
    assert found(index, PatientName=value) == ["1.0"]
    assert found(index, StudyDescription=value + "*") == ["1.0"]
    def sql(v):
        return matching.build_query(STUDY, {"StudyDescription": v, "PatientName": v}).where

    assert sql(value) == sql("plain")  # the SQL text never depends on a value: values are parameters


def test_bracket_is_literal_in_wildcard_patterns(index):
    put(index, {"StudyDescription": "[a]x"}, {"StudyDescription": "ax"})
    assert matching.glob_pattern("[a]*") == "[[]a]*"
    assert found(index, StudyDescription="[a]*") == ["1.0"]
    assert found(index, StudyDescription="?a]?") == ["1.0"]


# --- person names ---------------------------------------------------------------------------------

def test_person_names_match_regardless_of_case_and_accents(index):
    put(index, {"PatientName": "Müller^Jürgen"}, {"PatientName": "Muller^Anna"}, {"PatientName": "Doe^Jane"})
    assert found(index, PatientName="MÜLLER^JÜRGEN") == ["1.0"]
    assert found(index, PatientName="muller^jurgen") == ["1.0"]
    assert found(index, PatientName="müll*") == ["1.0", "1.1"]
    assert found(index, PatientName="?oe^*") == ["1.2"]
    assert found(index, ReferringPhysicianName="*") == ["1.0", "1.1", "1.2"]


def test_person_name_component_groups(index):
    put(index, {"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"}, {"PatientName": "Yamada^Hanako"})
    assert found(index, PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう") == ["1.0"]
    assert found(index, PatientName="山田^太郎") == ["1.0"]
    assert found(index, PatientName="yamada^tarou") == ["1.0"]
    assert found(index, PatientName="*太郎") == ["1.0"]
    assert found(index, PatientName="yamada*") == ["1.0", "1.1"]


# --- UIDs -----------------------------------------------------------------------------------------

def test_list_of_uid_matching(index):
    put(index, {}, {}, {})
    assert found(index, StudyInstanceUID="1.1") == ["1.1"]
    assert found(index, StudyInstanceUID="1.0\\1.2\\9.9") == ["1.0", "1.2"]
    assert found(index, StudyInstanceUID=" 1.0 \\1.2\x00") == ["1.0", "1.2"]
    assert found(index, StudyInstanceUID="1.*") == []  # no wild cards in UI (C.2.2.2.4)
    assert found(index, StudyInstanceUID="*") == ["1.0", "1.1", "1.2"]


def test_a_long_uid_list_is_one_parameter(index):
    put(index, {}, {})
    uids = [f"2.{i}" for i in range(5000)] + ["1.1"]
    query = matching.build_query(STUDY, {"StudyInstanceUID": "\\".join(uids)})
    [condition] = query.conditions
    assert json.loads(condition.params[0]) == uids and condition.sql.count("?") == 1
    assert found(index, StudyInstanceUID="\\".join(uids)) == ["1.1"]


def test_stored_value_lists_match_any_value(index):
    put(index, {"Modality": "CT"}, {"Modality": "MR"}, {"Modality": "PT"})
    with index.write() as tx:  # a second series makes study 1.0 CT\MR
        tx.put({"PatientID": "P0", "StudyInstanceUID": "1.0", "SeriesInstanceUID": "1.0.2", "SOPInstanceUID": "1.0.2.1",
                "Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}, FileInfo("f/x", 1, 1))
    assert found(index, ModalitiesInStudy="CT") == ["1.0"]
    assert found(index, ModalitiesInStudy="MR") == ["1.0", "1.1"]
    assert found(index, ModalitiesInStudy="CT\\PT") == ["1.0", "1.2"]  # several values: any (an extension)
    assert found(index, ModalitiesInStudy="M?") == ["1.0", "1.1"]
    assert found(index, ModalitiesInStudy="C*R") == []  # a wild card never spans two stored values
    assert found(index, SOPClassesInStudy="1.2.840.10008.5.1.4.1.1.4") == ["1.0"]
    assert matching.match_any("MR\\PT", "\\", "M*T") is False


# --- numbers ---------------------------------------------------------------------------------------

def test_integer_strings_match_numerically(index):
    put(index, {"SeriesNumber": "007"}, {"SeriesNumber": "7"}, {"SeriesNumber": "70"}, {"SeriesNumber": ""})
    assert found(index, "SERIES", SeriesNumber="7") == ["1.0.1", "1.1.1"]
    assert found(index, "SERIES", SeriesNumber="+007") == ["1.0.1", "1.1.1"]
    assert found(index, NumberOfStudyRelatedInstances="1") == ["1.0", "1.1", "1.2", "1.3"]
    with pytest.raises(matching.BadKeyValue, match="SeriesNumber: 'seven' is not a number"):
        matching.build_query("SERIES", {"SeriesNumber": "seven"})


# --- dates and times -------------------------------------------------------------------------------

DATES = ["20240115", "20250101", "20250615", "20251231", "20260101"]


@pytest.mark.parametrize("value, expected", [
    ("20250615", ["20250615"]),
    ("20250101-20251231", ["20250101", "20250615", "20251231"]),
    ("20250101-", ["20250101", "20250615", "20251231", "20260101"]),
    ("-20250101", ["20240115", "20250101"]),
    ("20251231-20250101", []),  # a range in the wrong order matches nothing
    ("20240115\\20260101", ["20240115", "20260101"]),
])
def test_date_matching(index, value, expected):
    put(index, *({"StudyDate": d} for d in DATES))
    by_uid = {f"1.{i}": d for i, d in enumerate(DATES)}
    assert [by_uid[uid] for uid in found(index, StudyDate=value)] == expected


@pytest.mark.parametrize("value", ["2025-01-01", "202501", "2025010", "a-b", "20250101--20250102", "*"])
def test_malformed_dates_are_refused_naming_the_key(value):
    if value == "*":
        assert matching.build_query(STUDY, {"StudyDate": value}).conditions == ()
        return
    with pytest.raises(matching.BadKeyValue, match=r"^StudyDate: "):
        matching.build_query(STUDY, {"StudyDate": value})


@pytest.mark.parametrize("value, expected", [
    ("10", ["101500", "10", "10:59:59"]),  # a partial key stands for its whole hour
    ("1015", ["101500"]),
    ("1000-1100", ["101500", "10", "10:59:59"]),
    ("-0800", ["000000"]),
    ("2300-", ["235959.999"]),
    ("101500.000-101500.5", ["101500"]),
    ("2300-0100", []),  # never across midnight
])
def test_time_matching(index, value, expected):
    times = ["101500", "10", "10:59:59", "000000", "235959.999", "1200", ""]
    put(index, *({"StudyTime": t} for t in times))
    by_uid = {f"1.{i}": t for i, t in enumerate(times)}
    assert [by_uid[uid] for uid in found(index, StudyTime=value)] == expected


def test_time_and_datetime_normalisation():
    assert matching.time_bounds("10") == ("100000.000000", "105959.999999")
    assert matching.time_bounds("101530.5") == ("101530.500000", "101530.599999")
    assert matching.time_bounds("1.5") is None and matching.time_bounds("2500") is None
    assert matching.time_key("10:15:30") == "101530.000000"
    assert matching.datetime_bounds("2025") == ("20250101000000.000000", "20251231235959.999999")
    assert matching.datetime_bounds("202402") == ("20240201000000.000000", "20240229235959.999999")
    assert matching.datetime_bounds("20250101120000+0100")[0] == "20250101110000.000000"
    assert matching.datetime_bounds("20250101000000-0500")[0] == "20250101050000.000000"
    assert matching.datetime_bounds("2025010112+0100") == ("20250101110000.000000", "20250101115959.999999")
    assert matching.datetime_bounds("20250101T12") is None


@pytest.mark.parametrize("value, expected", [
    ("20250101120000-0500", None),  # one value with a negative UTC offset, not a range
    ("20250101-20250102", ("20250101", "20250102")),
    ("20250101120000-0500-20250102", ("20250101120000-0500", "20250102")),
    ("-20250102120000-0500", (None, "20250102120000-0500")),
    ("20250101120000+0100-", ("20250101120000+0100", None)),
])
def test_datetime_ranges_are_parsed_not_split(value, expected):
    assert matching.split_range(value, matching.datetime_bounds) == expected


def test_datetime_matching_honours_utc_offsets(index):
    """No DT column in the index yet: match a DT key against a text column holding DT values."""
    stored = ["20250101120000+0100", "20250101120000", "20250101120000-0500", "2025"]
    put(index, *({"StudyDescription": v} for v in stored))
    column = Column("AcquisitionDateTime", STUDY, "study_description", "DT")

    def hits(value):
        condition = matching.key_condition(column, value)
        query = matching.Query(STUDY, (condition,))
        return [stored[int(row["StudyInstanceUID"][2:])] for row in index.find(query)]

    assert hits("20250101110000") == ["20250101120000+0100"]  # 12:00 at +01:00 is 11:00 UTC
    assert hits("20250101110000-20250101120000") == ["20250101120000+0100", "20250101120000"]
    assert hits("20250101170000+0000") == ["20250101120000-0500"]
    assert hits("-20250101") == ["20250101120000+0100", "20250101120000", "20250101120000-0500", "2025"]


def test_combined_date_time_matching(index):
    """C.2.2.2.5's example: 20060705-20060707 with 1000-1800 is 5 July 10:00 to 7 July 18:00."""
    stored = [("20060705", "0900"), ("20060705", "1900"), ("20060706", "0300"), ("20060707", "1700"),
              ("20060707", "1900"), ("20060706", "")]
    put(index, *({"StudyDate": d, "StudyTime": t} for d, t in stored))
    keys = {"StudyDate": "20060705-20060707", "StudyTime": "1000-1800"}
    separately = [stored[int(uid[2:])] for uid in found(index, **keys)]
    combined = [stored[int(uid[2:])] for uid in found(index, combined=True, **keys)]
    assert separately == [("20060707", "1700")]
    assert combined == [("20060705", "1900"), ("20060706", "0300"), ("20060707", "1700"), ("20060706", "")]
    # Different forms of range are matched independently even when combined matching is on.
    assert found(index, combined=True, StudyDate="20060705-20060707", StudyTime="1000-") == \
        found(index, StudyDate="20060705-20060707", StudyTime="1000-")


# --- levels and hierarchy --------------------------------------------------------------------------

def test_one_row_per_entity_of_the_level(index):
    with index.write() as tx:
        for series in range(2):
            for number in range(3):
                tx.put({"PatientID": "P", "StudyInstanceUID": "1.1", "SeriesInstanceUID": f"1.1.{series}",
                        "SOPInstanceUID": f"1.1.{series}.{number}", "Modality": "CT"},
                       FileInfo(f"f/{series}.{number}", 1, 1))
    assert found(index, "PATIENT") == ["P"]
    assert found(index, STUDY) == ["1.1"]
    assert found(index, "SERIES", Modality="CT") == ["1.1.0", "1.1.1"]
    assert len(found(index, "IMAGE", StudyInstanceUID="1.1")) == 6


@pytest.mark.parametrize("level, keyword", [
    ("PATIENT", "StudyDate"), ("PATIENT", "StudyInstanceUID"), ("STUDY", "Modality"), ("STUDY", "SeriesInstanceUID"),
    ("SERIES", "SOPInstanceUID"), ("SERIES", "InstanceNumber"), ("STUDY", "AvailableTransferSyntaxUID"),
])
def test_keys_below_the_level_are_refused(level, keyword):
    for value in ("", "X"):
        with pytest.raises(matching.IdentifierError, match=f"{keyword} is a key below the {level} level"):
            matching.build_query(level, {keyword: value})


def test_keys_above_the_level_match_and_unknown_keys_are_ignored(index):
    put(index, {"PatientName": "Doe^Jane", "Modality": "CT"}, {"PatientName": "Roe^Rich", "Modality": "CT"})
    assert found(index, "IMAGE", PatientName="Doe*", Modality="CT") == ["1.0.1.1"]
    assert found(index, STUDY, PatientBirthTime="1200", Laterality="L", OtherPatientIDs="x") == ["1.0", "1.1"]
    never_matched = {"SpecificCharacterSet": "ISO_IR 100", "QueryRetrieveLevel": "X"}
    assert matching.build_query(STUDY, never_matched).conditions == ()


def test_available_transfer_syntax_uid_is_the_file_meta_transfer_syntax(index):
    put(index, {"TransferSyntaxUID": "1.2.840.10008.1.2.1"}, {"TransferSyntaxUID": "1.2.840.10008.1.2.4.50"})
    assert found(index, "IMAGE", AvailableTransferSyntaxUID="1.2.840.10008.1.2.4.50") == ["1.1.1.1"]


def test_unknown_level_is_refused():
    with pytest.raises(matching.IdentifierError):
        matching.build_query("FRAME", {})


def test_rows_stream_from_the_cursor(index):
    put(index, *({} for _ in range(50)))
    rows = index.find(matching.build_query(STUDY, {}))
    assert next(rows)["StudyInstanceUID"] == "1.0"  # the first row before the rest are read
    rows.close()
    assert found(index) == [f"1.{i}" for i in range(50)]
