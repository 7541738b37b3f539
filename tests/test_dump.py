"""``pacs dump``: the dcmdump-style listing, DICOM JSON, tag filters, and files that cannot be read.

pydicom's own test files are the corpus: they include truncated, non-DICOM, bare data set, big endian,
deflated, encapsulated and multi-charset files, so a dump of all of them is the robustness test.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs_cli import listing
from pacs_cli.cli import cli
from pacs_cli.errors import UsageError
from pacs_cli.vrs import BINARY_VRS

DATA = Path(pydicom.data.__file__).parent
TEST_FILES = DATA / "test_files"
CHARSET_FILES = DATA / "charset_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"
CORPUS = sorted(path for root in (TEST_FILES, CHARSET_FILES) for path in root.rglob("*") if path.is_file())


def dump(*args):
    return CliRunner().invoke(cli, ["dump", *map(str, args)])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("E: ")]


def write_dicom(path: Path, **attributes) -> Path:
    """A small Part 10 file holding the given attributes."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


# --- text -----------------------------------------------------------------------------------------------

def test_text_lists_file_meta_then_data_set_like_dcmdump():
    result = dump(CT_SMALL)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [f"# File: {CT_SMALL}", "", "# Dicom-Meta-Information-Header",
                         "# Used TransferSyntax: Explicit VR Little Endian"]
    assert "(0002,0010) UI [1.2.840.10008.1.2.1]                    #  20, 1 TransferSyntaxUID" in lines
    assert "(0010,0010) PN [CompressedSamples^CT1]                  #  22, 1 PatientName" in lines
    assert "(0008,0050) SH (no value available)                     #   0, 0 AccessionNumber" in lines
    assert "(0020,0032) DS [-158.135803\\-179.035797\\-75.699997]     #  34, 3 ImagePositionPatient" in lines
    assert "(0043,1012) SS 14\\2\\3                                   #   6, 3 [X-ray chain]" in lines
    assert lines.index("# Dicom-Data-Set") > max(i for i, line in enumerate(lines) if line.startswith("(0002,"))
    assert result.stderr == ""


def test_sequence_items_are_indented():
    lines = dump(CT_SMALL).stdout.splitlines()
    start = lines.index("(0010,1002) SQ (Sequence with 2 items)                  #  72, 1 OtherPatientIDsSequence")
    assert lines[start + 1:start + 4] == [
        "  (FFFE,E000) na (Item #1 with 2 elements)",
        "    (0010,0020) LO [ABCD1234]                               #   8, 1 PatientID",
        "    (0010,0022) CS [TEXT]                                   #   4, 1 TypeOfPatientID",
    ]


def test_pixel_data_is_described_from_its_header_unless_asked_for():
    assert "(7FE0,0010) OW (not loaded; use --pixel-data)           # 32768, 1 PixelData" in \
        dump(CT_SMALL).stdout.splitlines()
    assert "(7FE0,0010) OW (pixel data, 32768 bytes)                # 32768, 1 PixelData" in \
        dump("--pixel-data", CT_SMALL).stdout.splitlines()
    encapsulated = dump("--pixel-data", TEST_FILES / "JPEG2000.dcm").stdout
    assert re.search(r"^\(7FE0,0010\) OB \(encapsulated pixel data, 1 fragment, \d+ bytes\) +# u/l, 1 PixelData$",
                     encapsulated, re.MULTILINE), encapsulated


NAMED = [path for path in sorted(CHARSET_FILES.glob("chr*.dcm")) if "PatientName" in pydicom.dcmread(path)]


@pytest.mark.parametrize("path", NAMED, ids=lambda path: path.name)
def test_specific_character_set_is_decoded(path):
    expected = str(pydicom.dcmread(path).PatientName)
    result = dump("--tags", "PatientName", path)
    assert result.exit_code == 0, result.stderr
    assert f"(0010,0010) PN [{expected}]" in result.stdout


def test_japanese_names_keep_the_comment_column():
    line = dump("--tags", "PatientName", CHARSET_FILES / "chrH31.dcm").stdout.splitlines()[1]
    assert line == "(0010,0010) PN [Yamada^Tarou=山田^太郎=やまだ^たろう]   #  60, 1 PatientName"


def test_long_values_are_cut_unless_full(tmp_path):
    comment = "word " * 40
    path = write_dicom(tmp_path / "long.dcm", ImageComments=comment)
    short = [line for line in dump(path).stdout.splitlines() if line.startswith("(0020,4000)")]
    assert short == [f"(0020,4000) LT [{comment[:61]}...] # 200, 1 ImageComments"]
    full = [line for line in dump("--full", path).stdout.splitlines() if line.startswith("(0020,4000)")]
    assert full == [f"(0020,4000) LT [{comment.rstrip()}] # 200, 1 ImageComments"]


def test_long_binary_values_are_cut_on_a_byte_boundary():
    line = next(line for line in dump(CT_SMALL).stdout.splitlines() if line.startswith("(0043,1029)"))
    assert line.startswith("(0043,1029) OB 00\\00\\00\\01\\43\\cf\\52\\14\\02\\d7\\00\\00\\08\\e6\\00\\00"
                           "\\00\\00\\00\\00... # 2068, 1 [Histogram tables]")
    full = next(line for line in dump("--full", CT_SMALL).stdout.splitlines() if line.startswith("(0043,1029)"))
    assert full.count("\\") == 2067


def test_control_characters_cannot_break_lines_or_drive_the_terminal(tmp_path):
    path = write_dicom(tmp_path / "ctl.dcm", ImageComments="one\r\ntwo\x1b[31m")
    lines = [line for line in dump(path).stdout.splitlines() if line.startswith("(0020,4000)")]
    assert lines[0].startswith("(0020,4000) LT [one\\r\\ntwo\\x1b[31m]")


# --- --tags ---------------------------------------------------------------------------------------------

def test_tags_by_keyword_and_number_comma_separated_and_repeated():
    result = dump("--tags", "PatientName,(0010,0020)", "--tags", "00080060", CT_SMALL)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"# File: {CT_SMALL}",
        "(0008,0060) CS [CT]                                     #   2, 1 Modality",
        "(0010,0010) PN [CompressedSamples^CT1]                  #  22, 1 PatientName",
        "(0010,0020) LO [1CT1]                                   #   4, 1 PatientID",
        "(0010,1002) SQ (Sequence with 2 items)                  #  72, 1 OtherPatientIDsSequence",
        "  (FFFE,E000) na (Item #1 with 2 elements)",
        "    (0010,0020) LO [ABCD1234]                               #   8, 1 PatientID",
        "  (FFFE,E000) na (Item #2 with 2 elements)",
        "    (0010,0020) LO [1234ABCD]                               #   8, 1 PatientID",
    ]


def test_tags_find_elements_inside_sequences():
    lines = dump("--tags", "TypeOfPatientID", CT_SMALL).stdout.splitlines()
    assert lines[1:] == [
        "(0010,1002) SQ (Sequence with 2 items)                  #  72, 1 OtherPatientIDsSequence",
        "  (FFFE,E000) na (Item #1 with 2 elements)",
        "    (0010,0022) CS [TEXT]                                   #   4, 1 TypeOfPatientID",
        "  (FFFE,E000) na (Item #2 with 2 elements)",
        "    (0010,0022) CS [TEXT]                                   #   4, 1 TypeOfPatientID",
    ]


def test_tags_can_select_file_meta_and_the_unread_pixel_data():
    lines = dump("--tags", "TransferSyntaxUID,PixelData", CT_SMALL).stdout.splitlines()
    assert [line[:11] for line in lines[1:]] == ["(0002,0010)", "(7FE0,0010)"]


@pytest.mark.parametrize(("value", "message"), [
    ("PatientsName", "unknown DICOM keyword 'PatientsName' (did you mean PatientName?)"),
    ("patientname", "unknown DICOM keyword 'patientname' (did you mean PatientName?)"),
    ("(0010,00ZZ)", "bad tag '(0010,00ZZ)' (write a tag as (gggg,eeee) with four hex digits each, e.g."),
    ("(0010,0010", "bad tag '(0010,0010'"),
    ("Xyzzy", "unknown DICOM keyword 'Xyzzy' (keywords are as in PS3.6, e.g. PatientName; or give the tag"),
    (",", "no tag in ','"),
])
def test_a_bad_tag_is_a_usage_error(value, message):
    result = dump("--tags", value, CT_SMALL)
    assert result.exit_code == 2
    assert "Invalid value for '--tags'" in result.stderr and message in result.stderr, result.stderr
    assert result.stdout == ""


def test_parse_tags():
    assert listing.parse_tags("PatientName, (0010,0020),7fe00010") == [0x00100010, 0x00100020, 0x7FE00010]
    with pytest.raises(UsageError):
        listing.parse_tags("(0010;0010)")


# --- files that cannot be read --------------------------------------------------------------------------

def test_a_non_dicom_file_is_one_line_and_the_others_are_still_dumped(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 20)
    result = dump(text, CT_SMALL)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"E: {text}: not a DICOM file (no 'DICM' prefix at byte 128, "
                                          "and it does not start with a data set)"]
    assert result.stderr.splitlines()[-1] == "Error: 1 of 2 files could not be read"
    assert "(0010,0010) PN [CompressedSamples^CT1]" in result.stdout


def test_a_truncated_file_says_where_it_ends(tmp_path):
    half = tmp_path / "half.dcm"
    data = CT_SMALL.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    result = dump(half)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [
        f"E: {half}: truncated: the file ends inside (7FE0,0010) PixelData (13303 of 32768 bytes)"]
    assert result.stdout == ""


def test_a_file_cut_inside_a_sequence(tmp_path):
    cut = tmp_path / "cut.dcm"
    cut.write_bytes((TEST_FILES / "rtplan.dcm").read_bytes()[:2000])
    result = dump(cut)
    assert error_lines(result.stderr) == [
        f"E: {cut}: truncated: the file ends inside (300A,00B0) BeamSequence (582 of 976 bytes)"]


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "image_dfl.dcm", "UN_sequence.dcm"])
def test_a_file_cut_anywhere_never_gives_a_traceback(tmp_path, name):
    data = (TEST_FILES / name).read_bytes()
    cuts = sorted({*range(0, len(data), max(1, len(data) // 60)), 128, 132, 140})
    for index, size in enumerate(cuts):
        path = tmp_path / f"cut{index}.dcm"
        path.write_bytes(data[:size])
    result = dump("-r", tmp_path)
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    for line in error_lines(result.stderr):
        assert re.match(rf"E: {re.escape(str(tmp_path))}/cut\d+\.dcm: \S", line), line


@pytest.mark.parametrize(("make", "problem"), [
    (lambda path: None, "no such file or directory"),
    (lambda path: path.write_bytes(b""), "empty file"),
])
def test_missing_and_empty_files(tmp_path, make, problem):
    path = tmp_path / "x.dcm"
    make(path)
    result = dump(path)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [f"E: {path}: {problem}"]


def test_a_bare_data_set_is_dumped_with_a_warning():
    result = dump(TEST_FILES / "ExplVR_BigEndNoMeta.dcm")
    assert result.exit_code == 0
    assert "read as a bare data set in Explicit VR Big Endian" in result.stderr
    assert "# Dicom-Meta-Information-Header" not in result.stdout
    assert "# Used TransferSyntax: Explicit VR Big Endian" in result.stdout


def test_pydicom_warnings_name_the_file_and_element():
    result = dump(TEST_FILES / "badVR.dcm")
    assert result.exit_code == 0
    assert f"W: {TEST_FILES / 'badVR.dcm'}: (0028,0008) NumberOfFrames: Invalid value for VR IS: '1A'." in \
        result.stderr.splitlines()


def test_a_value_pydicom_cannot_decode_is_shown_as_bytes(tmp_path):
    path = write_dicom(tmp_path / "odd.dcm")
    with path.open("ab") as fp:  # (0028,0010) Rows, US, with 3 bytes: not a whole number of values
        fp.write(struct.pack("<HH2sH", 0x0028, 0x0010, b"US", 3) + b"\x01\x02\x03")
    result = dump(path)
    assert result.exit_code == 0
    assert "(0028,0010) UN 01\\02\\03                                 #   3, 1 Rows" in result.stdout.splitlines()
    assert f"W: {path}: (0028,0010) Rows: cannot decode the US value, shown as UN bytes" in result.stderr
    obj = json.loads(dump("--format", "json", path).stdout)
    assert obj["00280010"] == {"vr": "UN", "InlineBinary": "AQID"}


# --- directories ----------------------------------------------------------------------------------------

def test_a_directory_needs_recursive(tmp_path):
    result = dump(tmp_path)
    assert result.exit_code == 2
    assert result.stderr == f"Error: {tmp_path} is a directory (add -r/--recursive to dump the files under it)\n"


def test_recursive_dumps_every_file_in_order(tmp_path):
    """A directory's own files first, then its subdirectories, each sorted: the same order every run."""
    for relative in ("b/2.dcm", "a/1.dcm", "c.dcm"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        write_dicom(tmp_path / relative, PatientID=relative)
    result = dump("-r", "--tags", "PatientID", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("# File:")] == [
        f"# File: {tmp_path / 'c.dcm'}", f"# File: {tmp_path / 'a/1.dcm'}", f"# File: {tmp_path / 'b/2.dcm'}"]


# --- JSON -----------------------------------------------------------------------------------------------

def test_json_for_one_file_is_its_object_and_for_several_an_array(tmp_path):
    one = json.loads(dump("--format", "json", CT_SMALL).stdout)
    assert one["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert list(one) == sorted(one) and "00020000" not in one  # PS3.18 F.2.2: sorted, no group lengths
    several = json.loads(dump("--format", "json", CT_SMALL, TEST_FILES / "MR_small.dcm").stdout)
    assert [item["00080060"]["Value"] for item in several] == [["CT"], ["MR"]]
    (tmp_path / "d").mkdir()
    write_dicom(tmp_path / "d" / "only.dcm", Modality="OT")
    assert len(json.loads(dump("--format", "json", "-r", tmp_path / "d").stdout)) == 1


def test_json_of_only_unreadable_files_is_an_empty_array(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    result = dump("--format", "json", "-r", tmp_path)
    assert result.exit_code == 1 and json.loads(result.stdout) == []


def test_json_bulk_data_points_into_the_file():
    obj = json.loads(dump("--format", "json", CT_SMALL).stdout)
    uri = obj["7FE00010"]["BulkDataURI"]
    assert uri == f"{CT_SMALL.as_uri()}#offset=6300,length=32768"
    assert obj["00431029"]["BulkDataURI"] == f"{CT_SMALL.as_uri()}#offset=3948,length=2068"
    assert obj["00020001"] == {"vr": "OB", "InlineBinary": "AAE="}  # small binary stays inline


@pytest.mark.parametrize("name", ["waveform_ecg.dcm", "examples_overlay.dcm", "MR_small_bigendian.dcm"])
def test_bulk_data_offsets_inside_sequences_are_file_offsets(name):
    """pydicom records offsets inside defined-length sequences relative to the sequence; we add them up."""
    path = TEST_FILES / name
    data = path.read_bytes()
    uris = re.findall(r'"BulkDataURI": "[^"#]*#offset=(\d+),length=(\d+)"',
                      dump("--format", "json", "--pixel-data", path).stdout)
    full = dump("--format", "json", "--bulk", path).stdout
    inline = [base64.b64decode(value) for value in re.findall(r'"InlineBinary": "([^"]*)"', full)]
    assert uris
    for offset, length in uris:
        assert data[int(offset):int(offset) + int(length)] in inline


def test_bulk_puts_pixel_data_inline():
    obj = json.loads(dump("--format", "json", "--bulk", CT_SMALL).stdout)
    assert base64.b64decode(obj["7FE00010"]["InlineBinary"]) == pydicom.dcmread(CT_SMALL).PixelData


def test_bulk_is_for_json_only():
    result = dump("--bulk", CT_SMALL)
    assert result.exit_code == 2 and "--bulk applies only to --format json" in result.stderr


def test_json_tags_keep_sequence_structure():
    obj = json.loads(dump("--format", "json", "--tags", "TypeOfPatientID", CT_SMALL).stdout)
    assert obj == {"00101002": {"vr": "SQ", "Value": [{"00100022": {"vr": "CS", "Value": ["TEXT"]}}] * 2}}


def _comparable(ds: Dataset, left_out: set[int]):
    """Elements the JSON must carry exactly: not group lengths, Pixel Data, bulk binary values, or the
    invalid values the dump warned it left out."""
    for elem in ds:
        bulk = elem.VR in BINARY_VRS and isinstance(elem.value, bytes) \
            and len(elem.value) > listing.BULK_THRESHOLD
        if elem.tag.element != 0 and elem.tag not in listing.PIXEL_TAGS | left_out and not bulk:
            yield elem


def _assert_same(original: Dataset, loaded: Dataset, where: str, left_out: set[int]) -> None:
    for elem in _comparable(original, left_out):
        here = f"{where} {elem.tag}"
        assert elem.tag in loaded, f"{here} {elem.keyword} missing from the JSON"
        other = loaded[elem.tag]
        assert other.VR == elem.VR, here
        if elem.VR == "SQ":
            assert len(other.value) == len(elem.value), here
            for number, (item, loaded_item) in enumerate(zip(elem.value, other.value, strict=True)):
                _assert_same(item, loaded_item, f"{here}[{number}]", left_out)
        elif elem.is_empty:
            assert other.is_empty, here
        elif elem.VR == "PN":
            assert [str(v) for v in _values(other.value)] == [str(v) for v in _values(elem.value)], here
        else:
            assert other.value == elem.value, f"{here} {elem.keyword}: {other.value!r} != {elem.value!r}"


def _values(value):
    return list(value) if isinstance(value, pydicom.multival.MultiValue | list) else [value]


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: str(path.relative_to(DATA)))
def test_json_loads_back_into_the_same_values(path):
    """Acceptance: every readable file's JSON loads with Dataset.from_json to the same non-bulk values."""
    result = dump("--format", "json", path)
    if result.exit_code != 0:
        assert result.exit_code == 1 and result.stdout == ""
        assert error_lines(result.stderr)[0].startswith(f"E: {path}: ")
        return
    obj = json.loads(result.stdout)
    left_out = {int(group + element, 16) for group, element
                in re.findall(r"\((\w{4}),(\w{4})\) \w+: left out of the JSON", result.stderr)}
    assert len(left_out) <= 1  # badVR.dcm's NumberOfFrames '1A': pydicom could not load it back
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BulkDataURIs without a handler, bad values pydicom warns about
        loaded = Dataset.from_json(obj)
        original = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        _assert_same(original.file_meta, loaded, path.name, left_out)
        _assert_same(original, loaded, path.name, left_out)


# --- the installed console script over the whole corpus --------------------------------------------------

@pytest.mark.script_launch_mode("subprocess")
@pytest.mark.parametrize("output_format", ["text", "json"])
def test_dump_of_every_pydicom_test_file_never_tracebacks(script_runner, output_format):
    result = script_runner.run(["pacs", "dump", "-r", "--format", output_format, TEST_FILES, CHARSET_FILES])
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    errors = error_lines(result.stderr)
    for line in result.stderr.splitlines():
        assert re.match(r"[EW]: |Error: ", line), line
    failed = []
    for line in errors:
        name = line[3:].split(": ", 1)[0]
        assert Path(name) in CORPUS, f"an error line that does not name a file: {line}"
        failed.append(Path(name))
    assert len(failed) == len(set(failed)), "a file reported twice"
    assert result.returncode == (1 if failed else 0)
    if failed:
        assert result.stderr.splitlines()[-1] == f"Error: {len(failed)} of {len(CORPUS)} files could not be read"
    if output_format == "json":
        assert len(json.loads(result.stdout)) == len(CORPUS) - len(failed)
    else:
        dumped = [Path(line[8:]) for line in result.stdout.splitlines() if line.startswith("# File: ")]
        assert sorted(dumped + failed) == CORPUS


def test_all_files_read_exits_0():
    result = dump(CT_SMALL, TEST_FILES / "MR_small.dcm")
    assert result.exit_code == 0 and result.stderr == ""


@pytest.mark.parametrize(("module", "heavy"), [("pacs_cli.commands.dump", "pydicom"), ("pacs_cli.listing", "click"),
                                               ("pacs_cli.listing", "rich")])
def test_imports_stay_where_they_belong(module, heavy):
    """`pacs --help` imports every command module, so pydicom must wait until a dump runs; the library
    behind the command never needs the CLI's packages."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == {heavy!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
