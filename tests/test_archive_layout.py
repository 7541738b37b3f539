"""Path templates and the value -> path component mapping (pacs_cli.archive.layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_cli.archive.layout import FLAT, HIERARCHICAL, Layout, UnsafePath, parse_template, safe_component
from pacs_cli.errors import EXIT_USAGE, UsageError


@pytest.mark.parametrize("value", ["1.2.840.10008.5.1.4.1.1.2", "PAT-001", "Doe_J", "A" * 64, "x.y"])
def test_harmless_values_are_kept_verbatim(value):
    assert safe_component(value) == value


@pytest.mark.parametrize("value, prefix", [
    ("../../etc/x", "_._.._etc_x"), ("/abs", "_abs"), ("a\\b", "a_b"), ("a\x00b", "a_b"), ("..", "_."),
    (".", "_"), (".hidden", "_hidden"), ("-rf", "_rf"), ("CON", "_CON"), ("nul.txt", "_nul.txt"),
    ("COM1.dcm", "_COM1.dcm"), ("abc.", "abc."), ("a--b", "a--b"), ("Müller", "M_ller"), ("x" * 65, "x" * 48),
])
def test_other_values_are_encoded_with_a_hash(value, prefix):
    name = safe_component(value)
    assert name.startswith(prefix + "--") and len(name) == len(prefix) + 2 + 16


def test_empty_becomes_underscore_and_names_stay_short():
    assert safe_component("") == "_"
    assert len(safe_component("é" * 10_000)) == len(safe_component("CON." + "x" * 100)) == 48 + 2 + 16


def test_the_mapping_is_injective_on_lookalikes():
    values = ["a/b", "a_b", "a\\b", "a\x00b", "a b", "a:b", "", "_", "a_b--" + "0" * 16, ".", "..", "CON", "con"]
    assert len({safe_component(v) for v in values}) == len(values)


def test_named_templates():
    assert parse_template(None).text == HIERARCHICAL
    assert parse_template("hierarchical").keywords == ("PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                                       "SOPInstanceUID")
    assert parse_template("flat").text == FLAT


@pytest.mark.parametrize("template, message", [
    ("{PatientIdd}/{SOPInstanceUID}.dcm", "unknown DICOM keyword {PatientIdd}"),
    ("{PatientID}/{StudyInstanceUID}.dcm", "must contain {SOPInstanceUID}"),
    ("/abs/{SOPInstanceUID}", "relative path"),
    ("a\\{SOPInstanceUID}", "relative path"),
    ("../{SOPInstanceUID}", "'..'"),
    ("a//{SOPInstanceUID}", "empty"),
    (".incoming/{SOPInstanceUID}", "starts with a dot"),
    ("a b/{SOPInstanceUID}", "literal text 'a b'"),
    ("{ReferencedImageSequence}/{SOPInstanceUID}", "sequence or binary"),
    ("{PixelData}/{SOPInstanceUID}", "sequence or binary"),
    ("{PatientID/{SOPInstanceUID}", "literal text '{PatientID'"),
])
def test_bad_templates_are_usage_errors_naming_the_problem(template, message):
    with pytest.raises(UsageError) as caught:
        parse_template(template)
    assert message in str(caught.value) and caught.value.exit_code == EXIT_USAGE


def test_mixed_literal_and_fields(tmp_path):
    layout = Layout(tmp_path, parse_template("{StudyDate}_{Modality}/{SOPInstanceUID}.dcm"))
    target = layout.target({"StudyDate": "20240101", "Modality": "CT", "SOPInstanceUID": "1.2.3"})
    assert target == str(tmp_path.resolve() / "20240101_CT" / "1.2.3.dcm")


def test_missing_values_render_as_underscore(tmp_path):
    layout = Layout(tmp_path, parse_template(None))
    target = Path(layout.target({"SOPInstanceUID": "1.2"}))
    assert target.relative_to(tmp_path.resolve()).parts == ("_", "_", "_", "1.2.dcm")


def test_make_parents_refuses_a_symlink_out_and_accepts_one_in(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "inside").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "in").symlink_to(root / "inside")
    layout = Layout(root, parse_template("{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm"))

    with pytest.raises(UnsafePath):
        layout.make_parents(layout.target({"PatientID": "out", "StudyInstanceUID": "1", "SOPInstanceUID": "2"}))
    assert list(outside.iterdir()) == []
    through_link = layout.target({"PatientID": "in", "StudyInstanceUID": "1", "SOPInstanceUID": "2"})
    parents = layout.make_parents(through_link)
    assert parents.created == [str(root.resolve() / "in" / "1")] and (root / "inside" / "1").is_dir()
    assert parents.key is None  # the store resolves the link: the key names inside/1/2.dcm


def test_the_key_is_the_relative_path_when_no_symlink_leads_to_the_file(tmp_path):
    layout = Layout(tmp_path, parse_template("{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm"))
    path = layout.target({"PatientID": "P", "StudyInstanceUID": "1", "SOPInstanceUID": "2"})
    root = tmp_path.resolve()
    assert layout.make_parents(path) == ([str(root / "P"), str(root / "P" / "1")], "P/1/2.dcm")
    assert layout.make_parents(path) == ([], "P/1/2.dcm")
