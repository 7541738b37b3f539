"""Identifiers and command elements encoded without pydicom must be byte for byte what pydicom writes."""

from __future__ import annotations

import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from pacs_cli.archive.index import FileInfo, Index
from pacs_cli.dimse import find
from pacs_cli.dimse.encoding import FlatEncoder

ELEMENTS = [
    (0x00080005, "CS", "ISO_IR 192"),
    (0x00080020, "DA", "20250101"),
    (0x00080030, "TM", "101112.5"),
    (0x00080052, "CS", "STUDY"),
    (0x00080061, "CS", "CT\\MR"),
    (0x00081110, "SQ", ""),
    (0x00100010, "PN", "Müller^Jürgen=ミュラー"),
    (0x00100020, "LO", "P1"),
    (0x00101010, "AS", "042Y"),
    (0x00181030, "LO", ""),
    (0x0020000D, "UI", "1.2.3.45"),
    (0x00200010, "SH", "odd"),
    (0x00201208, "IS", "007"),
    (0x00280010, "US", ""),
    (0x00321060, "LO", "x" * 64),
    (0x00400254, "LO", "é"),
]


def flat_dataset(elements, implicit: bool, codec: str) -> bytes | None:
    return FlatEncoder([(tag, vr) for tag, vr, _ in elements], implicit, codec).encode([text for *_, text in elements])


def pydicom_bytes(elements, implicit: bool) -> bytes:
    ds = Dataset()
    for tag, vr, text in elements:
        value = Sequence() if vr == "SQ" else None if vr == "US" else text
        ds.add(DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE))
    return encode(ds, implicit, True)


@pytest.mark.parametrize("implicit", [True, False])
def test_flat_dataset_matches_pydicom(implicit):
    assert flat_dataset(ELEMENTS, implicit, "utf-8") == pydicom_bytes(ELEMENTS, implicit)


@pytest.mark.parametrize("element", [
    (0x00280010, "US", "512"),         # a binary number given as text: pydicom converts it
    (0x00080060, "CS", "ÇT"),          # a CS beyond ASCII: not text of the character set
    (0x00100010, "PN", "Müller"),      # beyond ASCII in an ASCII repertoire
    (0x7FE00010, "OB", "\x00\x01"),    # binary data
    (0x00081030, "LO", "x" * 70000),   # too long for a 2-byte length
])
def test_what_only_pydicom_can_encode_is_refused(element):
    assert flat_dataset([element], False, "ascii") is None


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    index = Index.open(tmp_path_factory.mktemp("index") / "index.sqlite")
    with index.write() as tx:
        for number, name in enumerate(["Doe^John", "Müller^Jürgen", "Odd^Name"]):
            values = {"PatientName": name, "PatientID": f"P{number}", "PatientSex": "M",
                      "StudyInstanceUID": f"1.2.3.{number}", "StudyDate": "20250101", "StudyID": "7",
                      "SeriesInstanceUID": f"1.2.3.{number}.1", "Modality": "CT", "SeriesNumber": "1",
                      "SOPInstanceUID": f"1.2.3.{number}.1.1", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                      "InstanceNumber": str(number + 1)}
            tx.put(values, FileInfo(f"{number}.dcm", 100, 0, "TEST", "index"))
    yield index
    index.close()


@pytest.mark.parametrize("level,keys", [
    ("STUDY", {"PatientName": "", "StudyDate": "", "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": "",
               "ReferencedStudySequence": Sequence(), "StudyID": ""}),
    ("STUDY", {"SpecificCharacterSet": "ISO_IR 100", "PatientID": "", "Rows": None}),
    ("SERIES", {"StudyInstanceUID": "", "SeriesNumber": "", "NumberOfSeriesRelatedInstances": ""}),
    ("IMAGE", {"StudyInstanceUID": "", "SeriesInstanceUID": "", "InstanceNumber": "", "SOPClassUID": ""}),
])
@pytest.mark.parametrize("implicit", [True, False])
def test_encoded_responses_match_pynetdicoms_encoding_of_the_dataset(index, level, keys, implicit):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    request = find.check_request(identifier, find.MODELS["study"])
    rows = list(index.find(request.query))
    assert len(rows) == 3
    for row in rows:
        assert find.encoded_response(request, row, implicit) == encode(find.response(request, row), implicit, True)
