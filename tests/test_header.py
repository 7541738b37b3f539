"""The header read behind every C-STORE and every indexed file: the fast scan against pydicom's answer.

The scan handles the common case by itself and hands everything else to pydicom; both must give the
index the same strings, and a hostile header must be refused with a reason, not a RecursionError.
"""

from __future__ import annotations

import struct
import warnings

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from pacs_cli.archive.header import (
    MAX_NESTING,
    SCAN_BYTES,
    BadHeader,
    HeaderError,
    NotDicom,
    _read_with_pydicom,
    read_header,
    scan_header,
)
from pacs_cli.archive.schema import READ_KEYWORDS


def pydicom_files():
    files = get_testdata_files("*") + get_charset_files("*")
    return [f for f in files if not f.endswith(("dicomdirtests", ".py"))]


def test_the_scan_agrees_with_pydicom_on_every_pydicom_test_file():
    scanned = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in pydicom_files():
            try:
                fast = scan_header(path, READ_KEYWORDS)
            except HeaderError as exc:
                fast = type(exc)
            if fast is None or path.endswith("_truncated.dcm"):  # refused: see the test below
                continue
            try:
                slow = _read_with_pydicom(path, READ_KEYWORDS).values
            except HeaderError as exc:
                slow = type(exc)
            assert fast == slow, path
            scanned += 1
    assert scanned >= 50  # the fast path is the common one, not a fallback that never runs


def instance(tmp_path, syntax=ExplicitVRLittleEndian, name="Doe^Jane", **elements):
    ds = Dataset()
    ds.SOPClassUID = elements.pop("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.InstanceNumber = name, "P1", "007"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_plain_headers_are_scanned_and_integer_strings_read_as_pydicom_reads_them(tmp_path, syntax):
    path, ds = instance(tmp_path, syntax, ReferencedImageSequence=[Dataset(), Dataset()])
    values = scan_header(path, READ_KEYWORDS)
    assert values is not None
    assert values["SOPInstanceUID"] == ds.SOPInstanceUID
    assert values["PatientName"] == "Doe^Jane"
    assert values["InstanceNumber"] == "007"  # as sent: pydicom keeps an IS string as written
    assert values == read_header(path).values == _read_with_pydicom(path, READ_KEYWORDS).values


def test_non_ascii_values_go_to_pydicom_and_are_decoded(tmp_path):
    path, _ = instance(tmp_path, name="Müller^Jörg", SpecificCharacterSet="ISO_IR 100")
    assert scan_header(path, READ_KEYWORDS) is None
    assert read_header(path)["PatientName"] == "Müller^Jörg"


def test_a_header_longer_than_the_scan_is_read_by_pydicom(tmp_path):
    path, ds = instance(tmp_path, ImageType=["X" * 16] * (SCAN_BYTES // 16))
    assert scan_header(path, READ_KEYWORDS) is None
    assert read_header(path).sop_instance_uid == ds.SOPInstanceUID


def nested_file(tmp_path, depth: int):
    """An explicit VR file whose first element nests undefined-length sequences ``depth`` deep."""
    path, _ = instance(tmp_path)
    raw = path.read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<L", raw, 140)[0]
    sequence = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    opening = (sequence + item) * depth
    closing = (struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)) * depth
    # Elements of a dataset must ascend, so the nest goes before (0008,0016) SOP Class UID.
    path.write_bytes(raw[:meta_end] + opening + closing + raw[meta_end:])
    return path


def test_deep_nesting_is_refused_with_a_reason(tmp_path):
    with pytest.raises(BadHeader, match=f"nested deeper than {MAX_NESTING}"):
        read_header(nested_file(tmp_path, 10_000))


def defined_length_nest(depth: int) -> bytes:
    """``depth`` sequences, each of one item holding the next, every length given."""
    inner = b""
    for _ in range(depth):
        item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, len(item)) + item
    return inner


@pytest.mark.parametrize("depth, refused", [(5, False), (MAX_NESTING + 1, True), (3_000, True)])
def test_nesting_with_defined_lengths_is_walked_and_capped(tmp_path, depth, refused):
    path, _ = instance(tmp_path)
    raw = path.read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<L", raw, 140)[0]
    path.write_bytes(raw[:meta_end] + defined_length_nest(depth) + raw[meta_end:])
    if refused:
        with pytest.raises(BadHeader, match=f"nested deeper than {MAX_NESTING}"):
            read_header(path)
    else:
        assert read_header(path).values["PatientID"] == "P1"


def test_ordinary_nesting_is_read(tmp_path):
    assert read_header(nested_file(tmp_path, 5)).values["PatientID"] == "P1"


def test_a_dicomdir_is_not_an_instance(tmp_path):
    path, _ = instance(tmp_path, SOPClassUID="1.2.840.10008.1.3.10")
    with pytest.raises(NotDicom, match="DICOMDIR"):
        read_header(path)


def test_pydicom_itself_reads_the_nested_test_file(tmp_path):
    """The nested file is well formed: the refusal is our cap, not a broken fixture."""
    ds = pydicom.dcmread(nested_file(tmp_path, 5))
    assert ds.PatientID == "P1"


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_a_truncated_object_is_refused_where_pydicom_would_read_what_is_there(name):
    path = next(f for f in pydicom_files() if f.endswith("/" + name))
    with pytest.raises(BadHeader, match=r"declares \d+ bytes, \d+ are left"):
        read_header(path)


def test_pixel_data_cut_short_is_refused(tmp_path):
    path, _ = instance(tmp_path, PixelData=bytes(512), Rows=16, Columns=16, BitsAllocated=16)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(BadHeader, match=r"\(7FE0,0010\) declares 512 bytes, 462 are left"):
        read_header(path)
