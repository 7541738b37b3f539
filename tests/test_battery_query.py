"""Issue 8, C-FIND injection and wildcard abuse: every key the archive matches, hostile values.

An archive holds instances whose values are full of SQL and wildcard metacharacters (``A%B``, ``A_B``,
``O'Brien``, ``50% off; DROP TABLE``...). Every key of schema.COLUMNS is then queried at its level with
values such as ``' OR 1=1 --``, ``%``, ``_``, ``\\``, runs of ``*``, ``?``, 10,000 characters, NUL and
quotes, plus each stored value. The answer must be exactly what DICOM matching (PS3.4 C.2.2.2) says:
``%`` and ``_`` are plain characters, ``*`` and ``?`` the only wild cards, values other than PN are
case-sensitive, a key that cannot be matched (a date that is no date) is refused with 0xC000. The
expected rows come from :func:`matches`, written from the standard and the documented choices of
pacs_cli/archive/matching.py (NUL is padding; several values in a key match any of them), applied to
the values the index holds. Afterwards the index is unchanged and the SCP survives.
"""

from __future__ import annotations

import re
import sqlite3
import struct
import unicodedata
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
# pacs's requestor: pynetdicom's own can lose a response to its reactor thread (pacs_cli/dimse/reactor.py)
from pacs_cli.dimse.ae import RequestorAE as AE  # noqa: N814
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from battery import WatchedSCP, nodelay, assert_survives, measure_baseline, store_datasets
from pacs_cli.archive import matching
from pacs_cli.archive.schema import COLUMNS, LEVELS, UNIQUE_KEYS, Column

# pydicom warns about every over-long value it decodes in the responses: those are the point here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CT, SC = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"
REDOS = "*a" * 15 + "*b"  # a backtracking matcher takes hours on 40 'a's

HOSTILE = [
    "' OR 1=1 --", "' OR '1'='1", "1; DROP TABLE instances; --", '" OR ""="', "') OR ('1'='1", "%' --",
    "%", "%%", "_", "__", "A%B", "A_B", "A?B", "A*", "*A*", "a*", "*", "***", "*" * 300, "?", "???",
    "\\", "\\\\", "A%B\\A_B", "\\*", "[", "[A-Z]*", "[]", "x" * 10_000, "*" + "x" * 10_000 + "*",
    "*?" * 5_000, "\x00", "A%\x00B", "'", '"', "''", "^", "=", "O'Brien*", "o'brien^pat", "NULL",
    "1 OR 1", REDOS, "CT\\' OR 1=1 --",
]


def record(n: int, **values) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = values.pop("SOPClassUID", CT)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = str(n)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def stored_records() -> list[Dataset]:
    """Four patients, one study and series each, and a second instance in the first series."""
    s1, se1 = generate_uid(), generate_uid()
    common = dict(PatientBirthDate="19700101", StudyDate="20250102", StudyTime="101500",
                  SeriesDate="20250102", SeriesTime="101600")
    return [
        record(1, PatientID="A%B", PatientName="O'Brien^Pat", IssuerOfPatientID="ISS_1", PatientSex="M",
               StudyInstanceUID=s1, AccessionNumber="ACC%1", StudyID="S_1", ReferringPhysicianName="Dr^Who",
               StudyDescription="50% off; DROP TABLE instances; --", SeriesInstanceUID=se1, Modality="CT",
               SeriesNumber="1", SeriesDescription="a_b[c]", BodyPartExamined="HEAD", **common),
        record(2, PatientID="A_B", PatientName="Smith^John", IssuerOfPatientID="ISS%1", PatientSex="F",
               StudyInstanceUID=generate_uid(), AccessionNumber="ACC_1", StudyID="S%1",
               ReferringPhysicianName="O'Brien^Pat", StudyDescription="' OR 1=1 --",
               SeriesInstanceUID=generate_uid(), Modality="MR", SeriesNumber="2", SeriesDescription="what?",
               BodyPartExamined="KNEE", PatientBirthDate="19800202", StudyDate="20240101", StudyTime="080000",
               SeriesDate="20240101", SeriesTime="080100"),
        record(3, PatientID="AxB", PatientName="o'brien^pat", IssuerOfPatientID="ISSx1", PatientSex="O",
               StudyInstanceUID=generate_uid(), AccessionNumber="ACCx1", StudyID="SxS",
               StudyDescription='say "hi"', SeriesInstanceUID=generate_uid(), Modality="PT", SeriesNumber="10",
               SeriesDescription="axb[c]", BodyPartExamined="CHEST", **common),
        record(4, PatientID='Q"; --', PatientName="a" * 40 + "=" + "a" * 12, IssuerOfPatientID="%_[]^=",
               StudyInstanceUID=generate_uid(), AccessionNumber="", StudyID="",
               ReferringPhysicianName="Ünïcode^Ñame", StudyDescription="a" * 60,
               SeriesInstanceUID=generate_uid(), Modality="a" * 40, SeriesNumber="3", SeriesDescription="a" * 60,
               BodyPartExamined="", SOPClassUID=SC, **common),
        record(5, PatientID="A%B", PatientName="O'Brien^Pat", IssuerOfPatientID="ISS_1", StudyInstanceUID=s1,
               SeriesInstanceUID=se1, Modality="CT", SeriesNumber="1", **common),
    ]


# --- what DICOM matching says (independent of the SQL that pacs builds) -----------------------------

TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
TRAILING_ONLY_VRS = {"LT", "ST", "UT", "UC", "UR"}
MULTI_VALUED = {"ModalitiesInStudy", "SOPClassesInStudy"}  # PS3.6 VM 1-n among the index's columns
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


def unpadded(value: str, vr: str) -> str:
    value = value.replace("\x00", "")
    return value.rstrip(" ") if vr in TRAILING_ONLY_VRS else value.strip(" ")


def universal(value: str) -> bool:
    return not value or set(value) == {"*"}


def wildcard(text: str, pattern: str) -> bool:
    """'*' any run, '?' one character, all else literal: a dynamic programme, linear in each input."""
    row = [True] + [False] * len(text)
    for ch in pattern:
        if ch == "*":
            for i in range(1, len(text) + 1):
                row[i] = row[i] or row[i - 1]
        else:
            row = [False] + [row[i - 1] and (ch == "?" or ch == text[i - 1]) for i in range(1, len(text) + 1)]
    return row[-1]


def folded(name: str) -> str:
    """PS3.4 C.2.2.2.1 lets PN ignore case and accents."""
    return "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)).casefold()


def matches(column: Column, stored: str, value: str) -> bool | None:
    """Whether ``stored`` matches the key ``value``; None when the key cannot be matched (0xC000)."""
    vr = column.vr
    value = unpadded(value, vr)
    if universal(value):
        return True
    if vr == "UI":  # C.2.2.2.2: a list of UIDs; padding is NUL or space
        uids = [u for u in (u.strip(" \x00") for u in value.split("\\")) if u]
        parts = stored.split("\\") if column.keyword in MULTI_VALUED else [stored]
        return any(uid in parts for uid in uids)
    values = [v for v in (unpadded(v, vr) for v in value.split("\\")) if v]
    if not values or any(universal(v) for v in values):
        return True
    results = [_one(column, stored, v) for v in values]
    return None if None in results else any(results)


def _one(column: Column, stored: str, value: str) -> bool | None:
    vr = column.vr
    if vr == "DA":
        return stored == value if re.fullmatch(r"\d{8}", value) else None
    if vr == "TM":
        return stored.startswith(value) if _TIME.fullmatch(value) else None  # a partial time is its span
    if vr in ("IS", "DS"):
        try:
            number = float(value)
        except ValueError:
            return None
        return stored != "" and float(stored) == number
    if not stored:
        return False  # an empty stored value never matches a non-empty key
    if vr == "PN":
        name, key = folded(stored), folded(value)
        return wildcard(name, key) or ("=" in name and any(wildcard(group, key) for group in name.split("=")))
    if column.keyword in MULTI_VALUED:
        return any(wildcard(part, value) for part in stored.split("\\"))
    return wildcard(stored, value) if vr in TEXT_VRS else stored == value


# --- the archive, the queries ----------------------------------------------------------------------

KEYS = [c for c in COLUMNS if c.keyword != "SpecificCharacterSet"]  # never matched (C.2.2.2)
WIRE_KEYWORD = {"TransferSyntaxUID": "AvailableTransferSyntaxUID"}  # (0008,3002) asks for (0002,0010)
_FROM = {
    "PATIENT": "patients p",
    "STUDY": "studies st JOIN patients p ON st.patient_pk = p.pk",
    "SERIES": "series se JOIN studies st ON se.study_pk = st.pk JOIN patients p ON st.patient_pk = p.pk",
    "IMAGE": "instances i JOIN series se ON i.series_pk = se.pk JOIN studies st ON se.study_pk = st.pk "
             "JOIN patients p ON st.patient_pk = p.pk",
}
_ALIAS = {"PATIENT": "p", "STUDY": "st", "SERIES": "se", "IMAGE": "i"}


def entities(db_path, level: str) -> list[dict[str, str]]:
    """Each entity of ``level`` with the values the index holds for it and the levels above."""
    columns = [c for c in COLUMNS if LEVELS.index(c.level) <= LEVELS.index(level)]
    sql = f"SELECT {', '.join(f'{_ALIAS[c.level]}.{c.column}' for c in columns)} FROM {_FROM[level]}"
    db = sqlite3.connect(db_path)
    try:
        return [{c.keyword: "" if v is None else str(v) for c, v in zip(columns, row)} for row in db.execute(sql)]
    finally:
        db.close()


def snapshot(db_path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(db_path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY pk").fetchall()
                for t in ("patients", "studies", "series", "instances")}
    finally:
        db.close()


def element(tag: int, value: bytes) -> bytes:
    """Implicit VR Little Endian: the bytes as given, so no encoder tidies or refuses them."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def identifier(level: str, key: Column, value: str) -> Dataset:
    from pydicom.datadict import tag_for_keyword

    unique = UNIQUE_KEYS[level]
    raw = (element(0x00080005, b"ISO_IR 192") + element(0x00080052, level.encode())
           + element(tag_for_keyword(WIRE_KEYWORD.get(key.keyword, key.keyword)), value.encode("utf-8")))
    if unique.keyword != key.keyword:
        raw += element(tag_for_keyword(unique.keyword), b"")
    return decode(BytesIO(raw), True, True)  # raw elements: sent exactly as built


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("query")
    scp = WatchedSCP(root)
    baseline = measure_baseline(scp)
    datasets = stored_records()
    assert set(store_datasets(scp.port, datasets).values()) == {0x0000}
    yield scp, baseline
    scp.stop()


def run_queries(scp: WatchedSCP, level: str, queries: list[tuple[Column, str]]) -> list[tuple[int | None, set]]:
    """(final status, unique key values returned) for each query, over one association."""
    port = scp.port
    model = (PatientRootQueryRetrieveInformationModelFind if level == "PATIENT"
             else StudyRootQueryRetrieveInformationModelFind)
    ae = AE(ae_title="INJECTOR")
    ae.add_requested_context(model)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    unique = UNIQUE_KEYS[level].keyword
    results = []
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    nodelay(assoc.dul.socket.socket)  # else each query waits out a delayed ACK between its two PDUs
    try:
        for key, value in queries:
            found, final = set(), None
            for status, ds in assoc.send_c_find(identifier(level, key, value), model):
                code = status.get("Status")
                if code in (0xFF00, 0xFF01):
                    found.add(str(ds.get(unique, "")))
                else:
                    final = code
            assert final is not None, (f"no answer to {key.keyword}={value[:40]!r} within {ae.dimse_timeout} s; "
                                       f"the SCP's stderr ends: {scp.stderr()[-1500:]}")
            results.append((final, found))
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return results


@pytest.mark.parametrize("level", LEVELS)
def test_hostile_values_in_every_key_match_only_what_dicom_says(archive, level):
    scp, baseline = archive
    before = snapshot(scp.db_path)
    rows = entities(scp.db_path, level)
    keys = [c for c in KEYS if c.level == level]
    queries = [(key, value) for key in keys
               for value in HOSTILE + sorted({row[key.keyword] for row in rows if row[key.keyword]})]
    unique = UNIQUE_KEYS[level].keyword

    wrong = []
    for (key, value), (status, found) in zip(queries, run_queries(scp, level, queries)):
        verdicts = [matches(key, row[key.keyword], value) for row in rows]
        if None in verdicts:
            if status != 0xC000 or found:
                wrong.append((key.keyword, value[:40], f"0x{status or 0:04X}", found, "want 0xC000"))
            continue
        expected = {row[unique] for row, hit in zip(rows, verdicts) if hit}
        if status != 0x0000 or found != expected:
            wrong.append((key.keyword, value[:40], f"0x{status or 0:04X}", found, expected))
    assert wrong == [], f"{len(wrong)} of {len(queries)} queries answered wrongly: {wrong[:10]}"
    assert snapshot(scp.db_path) == before
    db = sqlite3.connect(scp.db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    assert_survives(scp, baseline, f"{len(queries)} hostile {level} queries")


@settings(derandomize=True, max_examples=1500, deadline=None, database=None)
@given(st.text(alphabet="ab.\\[\n", max_size=16), st.text(alphabet="ab*?.\\[", max_size=16))
def test_wildcard_matching_agrees_with_the_definition(value, pattern):
    """matching.wildcard_match (used for values the index keeps as lists, and for PN component groups)
    against the dynamic programme that defines '*' and '?'."""
    assert matching.wildcard_match(value, pattern) == wildcard(value, pattern)


def test_wildcard_matching_does_not_backtrack():
    """'*a*a*...*b' over forty 'a's: hours for a backtracking regex, microseconds here."""
    import time

    start = time.monotonic()
    assert not matching.match_any("a" * 40 + "\\" + "a" * 10_000, "\\", REDOS)
    assert not matching.match_any("a" * 10_000, "\\", "*a" * 5_000 + "*b")
    assert time.monotonic() - start < 1.0
