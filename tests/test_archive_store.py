"""Archive.store_file: byte-identical files at safe paths, one row per level, duplicates, failures, races.

Real files and a real SQLite index throughout; faults come from the file system itself (a file where a
directory must go, a symlink leading out, a full tmpfs), never from mocks.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import threading
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from pacs_cli.archive import (
    Archive, ArchiveUnavailable, DuplicateRejected, InvalidInstance, OutOfResources, StoreRequest,
)
from pacs_cli.errors import EXIT_FAILED, EXIT_USAGE, UsageError
from test_archive_support import (
    TEST_FILES, archived_files, count, dataset, part10, rows, stage, stage_bytes, staging_leftovers, store,
)

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@pytest.fixture
def archive(tmp_path):
    archive = Archive.open(tmp_path / "archive")
    yield archive
    archive.close()


def assert_nothing_left(archive, staged: Path) -> None:
    """The store-failure invariant: staged file gone, no file in the archive, no row."""
    assert not staged.exists()
    assert staging_leftovers(archive) == []
    assert archived_files(archive.root) == []
    assert count(archive.db_path, "instances") == 0


# -- the happy path ---------------------------------------------------------------------------


def test_stored_file_is_byte_identical_at_the_hierarchical_path(archive):
    ds = dataset("1.2.3.4.5", patient_id="P42")
    staged = stage(archive, ds)
    sent = staged.read_bytes()

    outcome = archive.store_file(staged, "MODALITY", ds.SOPClassUID, "1.2.3.4.5")

    expected = archive.root / "P42" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert outcome.kind == "stored"
    assert outcome.path == expected and outcome.path.is_absolute()
    assert expected.read_bytes() == sent
    assert outcome.size == len(sent)
    assert (outcome.study_uid, outcome.series_uid, outcome.patient_id) == ("1.2.3", "1.2.3.4", "P42")
    assert outcome.transfer_syntax_uid == ExplicitVRLittleEndian
    assert not staged.exists() and staging_leftovers(archive) == []


def test_one_row_per_level_with_values_kept_as_strings(archive):
    ds = dataset("1.2.3.4.5", patient_id="007", PatientName="Müller^Hans", SpecificCharacterSet="ISO_IR 100",
                 SeriesNumber="007", InstanceNumber="0010", AccessionNumber="00123", StudyDate="20240102",
                 StudyTime="101500", StudyID="0001", StudyDescription="CT HEAD", BodyPartExamined="HEAD",
                 PatientBirthDate="19700101", PatientSex="M", IssuerOfPatientID="HOSP",
                 ReferringPhysicianName="Ärztin^Eva")
    store(archive, ds, calling_aet="MODALITY")

    [patient] = rows(archive.db_path, "patients")
    [study] = rows(archive.db_path, "studies")
    [series] = rows(archive.db_path, "series")
    [instance] = rows(archive.db_path, "instances")
    assert (patient["patient_id"], patient["issuer_of_patient_id"]) == ("007", "HOSP")
    assert patient["patient_name"] == "Müller^Hans" and patient["patient_name_norm"] == "muller^hans"
    assert (patient["patient_birth_date"], patient["patient_sex"]) == ("19700101", "M")
    assert study["accession_number"] == "00123" and study["study_id"] == "0001"
    assert (study["study_date"], study["study_time"], study["study_description"]) == ("20240102", "101500", "CT HEAD")
    assert study["referring_physician_name_norm"] == "arztin^eva"
    assert study["modalities_in_study"] == "CT" and study["sop_classes_in_study"] == ds.SOPClassUID
    assert series["series_number"] == "007" and series["body_part_examined"] == "HEAD"
    assert instance["instance_number"] == "0010"
    assert instance["path"] == "007/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert (instance["calling_aet"], instance["source"]) == ("MODALITY", "store")
    assert instance["specific_character_set"] == "ISO_IR 100"
    assert instance["transfer_syntax_uid"] == ExplicitVRLittleEndian
    assert (study["number_of_study_related_series"], study["number_of_study_related_instances"]) == (1, 1)
    assert (patient["number_of_patient_related_studies"], series["number_of_series_related_instances"]) == (1, 1)


def test_flat_layout_and_a_custom_template(tmp_path):
    with Archive.open(tmp_path / "flat", template="flat") as flat:
        assert store(flat, dataset("1.2.9")).path == flat.root / "1.2.9.dcm"
    with Archive.open(tmp_path / "custom", template="{Modality}/{StudyDate}/{SOPInstanceUID}.dcm") as custom:
        outcome = store(custom, dataset("1.2.9", modality="MR", StudyDate="20240101"))
        assert outcome.path == custom.root / "MR" / "20240101" / "1.2.9.dcm"
        assert custom.lookup("1.2.9")["path"] == "MR/20240101/1.2.9.dcm"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
                                  "SC_rgb_rle.dcm", "rtplan.dcm", "image_dfl.dcm", "waveform_ecg.dcm"])
def test_pydicom_test_files_are_stored_as_received(archive, name):
    source = TEST_FILES / name
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    staged = archive.staging_dir / "incoming.dcm"
    shutil.copyfile(source, staged)

    outcome = archive.store_file(staged, "SCU", ds.SOPClassUID, ds.SOPInstanceUID)

    assert outcome.path.read_bytes() == source.read_bytes()
    row = archive.lookup(ds.SOPInstanceUID)
    assert row["study_instance_uid"] == ds.StudyInstanceUID
    assert row["patient_name"] == str(ds.get("PatientName", "") or "")
    assert row["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID


def test_text_is_decoded_with_the_specific_character_set(archive):
    source = pydicom.data.get_charset_files("chrH31.dcm")[0]
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    staged = archive.staging_dir / "h31.dcm"
    shutil.copyfile(source, staged)

    archive.store_file(staged, "SCU", ds.SOPClassUID, ds.SOPInstanceUID)

    row = archive.lookup(ds.SOPInstanceUID)
    assert row["patient_name"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert row["specific_character_set"] == "\\ISO 2022 IR 87"


def test_fsync_mode_stores_the_same_way(tmp_path):
    with Archive.open(tmp_path / "archive", fsync=True) as archive:
        assert store(archive, dataset("1.2.9")).kind == "stored"
        assert archive.lookup("1.2.9") is not None


def test_uids_padded_on_the_wire_still_match(archive):
    ds = dataset("1.2.33")
    staged = stage(archive, ds)
    assert archive.store_file(staged, "SCU", ds.SOPClassUID + "\x00", "1.2.33\x00").kind == "stored"


# -- duplicates -------------------------------------------------------------------------------


def test_duplicate_reject_keeps_the_first_copy(archive):
    first = store(archive, dataset("1.2.9", StudyDescription="first"))
    first_bytes = first.path.read_bytes()
    second = stage(archive, dataset("1.2.9", StudyDescription="second copy"))

    with pytest.raises(DuplicateRejected) as caught:
        archive.store_file(second, "SCU", "1.2.840.10008.5.1.4.1.1.2", "1.2.9")

    assert caught.value.sop_instance_uid == "1.2.9" and caught.value.exit_code == EXIT_FAILED
    assert first.path.read_bytes() == first_bytes
    assert not second.exists() and staging_leftovers(archive) == []
    assert count(archive.db_path, "instances") == 1
    assert archive.DuplicateRejected is DuplicateRejected  # reachable from the instance as well


def test_duplicate_replace_overwrites_file_and_row(tmp_path):
    with Archive.open(tmp_path / "archive", on_duplicate="replace") as archive:
        store(archive, dataset("1.2.9", StudyDescription="first"))
        ds = dataset("1.2.9", StudyDescription="second, longer copy")
        staged = stage(archive, ds)
        sent = staged.read_bytes()

        outcome = archive.store_file(staged, "OTHER", ds.SOPClassUID, "1.2.9")

        assert outcome.kind == "replaced" and outcome.path.read_bytes() == sent
        [row] = rows(archive.db_path, "instances")
        assert (row["size"], row["calling_aet"]) == (len(sent), "OTHER")
        assert rows(archive.db_path, "studies")[0]["study_description"] == "second, longer copy"
        assert rows(archive.db_path, "studies")[0]["number_of_study_related_instances"] == 1
        assert staging_leftovers(archive) == []


def test_replace_with_another_patient_moves_the_file_and_prunes_the_old_patient(tmp_path):
    with Archive.open(tmp_path / "archive", on_duplicate="replace") as archive:
        old = store(archive, dataset("1.2.9", patient_id="OLD", study="1.2.3"))
        new = store(archive, dataset("1.2.9", patient_id="NEW", study="1.2.4"))

        assert new.kind == "replaced" and not old.path.exists() and new.path.exists()
        assert [p["patient_id"] for p in rows(archive.db_path, "patients")] == ["NEW"]
        assert [s["study_instance_uid"] for s in rows(archive.db_path, "studies")] == ["1.2.4"]
        assert archived_files(archive.root) == [new.path]


def test_duplicate_ignore_keeps_the_first_copy_and_says_so(tmp_path):
    with Archive.open(tmp_path / "archive", on_duplicate="ignore") as archive:
        first = store(archive, dataset("1.2.9", StudyDescription="first"))
        first_bytes = first.path.read_bytes()
        staged = stage(archive, dataset("1.2.9", StudyDescription="second"))

        outcome = archive.store_file(staged, "SCU", "1.2.840.10008.5.1.4.1.1.2", "1.2.9")

        assert outcome.kind == "ignored" and outcome.path == first.path
        assert first.path.read_bytes() == first_bytes and not staged.exists()
        assert count(archive.db_path, "instances") == 1


def test_a_row_whose_file_vanished_takes_the_new_copy_even_when_rejecting(archive):
    first = store(archive, dataset("1.2.9"))
    first.path.unlink()
    outcome = store(archive, dataset("1.2.9"))
    assert outcome.kind == "replaced" and outcome.path.exists()
    assert count(archive.db_path, "instances") == 1


# -- refused instances --------------------------------------------------------------------------


def test_dataset_uid_differing_from_the_command_is_refused(archive):
    ds = dataset("1.2.9")
    staged = stage(archive, ds)
    with pytest.raises(InvalidInstance, match="differs from the command") as caught:
        archive.store_file(staged, "SCU", ds.SOPClassUID, "1.2.10")
    assert caught.value.mismatch
    assert_nothing_left(archive, staged)


def test_dataset_sop_class_differing_from_the_command_is_refused(archive):
    ds = dataset("1.2.9")
    staged = stage(archive, ds)
    with pytest.raises(InvalidInstance, match="SOP Class UID") as caught:
        archive.store_file(staged, "SCU", "1.2.840.10008.5.1.4.1.1.4", "1.2.9")
    assert caught.value.mismatch
    assert_nothing_left(archive, staged)


@pytest.mark.parametrize("remove, reason", [("SOPInstanceUID", "no SOPInstanceUID"),
                                            ("StudyInstanceUID", "no StudyInstanceUID"),
                                            ("SeriesInstanceUID", "no SeriesInstanceUID")])
def test_missing_hierarchy_uids_are_refused(archive, remove, reason):
    ds = dataset("1.2.9")
    delattr(ds, remove)
    staged = stage(archive, ds, sop_uid="1.2.9")
    with pytest.raises(InvalidInstance, match=reason) as caught:
        archive.store_file(staged, "SCU", ds.SOPClassUID, "1.2.9")
    assert not caught.value.mismatch
    assert_nothing_left(archive, staged)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the truncated garbage, rightly
@pytest.mark.parametrize("payload", [b"", b"not dicom at all" * 100, b"\x00" * 128 + b"DICM" + b"\xff" * 64],
                         ids=["empty", "text", "garbage-after-DICM"])
def test_unparseable_files_are_refused(archive, payload):
    staged = stage_bytes(archive, payload)
    with pytest.raises(InvalidInstance):
        archive.store_file(staged, "SCU", "1.2.840.10008.5.1.4.1.1.2", "1.2.9")
    assert_nothing_left(archive, staged)


@pytest.mark.filterwarnings("ignore::UserWarning")  # 'index.sqlite' is no valid UI value, deliberately
def test_a_uid_that_names_the_index_file_is_refused(tmp_path):
    with Archive.open(tmp_path / "archive", template="{SOPInstanceUID}") as archive:
        ds = dataset("index.sqlite")
        staged = stage(archive, ds)
        with pytest.raises(InvalidInstance, match="archive's own files"):
            archive.store_file(staged, "SCU", ds.SOPClassUID, "index.sqlite")
        assert not staged.exists()
        assert archive.stats()["instances"] == 0  # the index is intact and answering


def test_two_instances_rendering_to_one_path_never_share_a_file(tmp_path):
    with Archive.open(tmp_path / "archive", template="x{StudyID}{SOPInstanceUID}.dcm") as archive:
        first = store(archive, dataset("23", StudyID="1"))
        first_bytes = first.path.read_bytes()
        ds = dataset("3", StudyID="12")
        staged = stage(archive, ds)
        with pytest.raises(InvalidInstance, match="already holds SOP Instance 23"):
            archive.store_file(staged, "SCU", ds.SOPClassUID, "3")
        assert first.path.read_bytes() == first_bytes and not staged.exists()


# -- hostile identifiers never leave the root ------------------------------------------------------

HOSTILE = ["../../etc/x", "/abs/olute", "a\\b", "x\x00y", "x" * 300, "..", ".", "CON", "nul.txt", "-rf",
           ".hidden", "a/../../b", "\t\n\x1b[31m", "Müller", "a--b"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about invalid UI/LO values, rightly
@pytest.mark.parametrize("keyword", ["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_hostile_identifiers_never_write_outside_the_root(tmp_path, keyword):
    outside_before = _tree(tmp_path)
    with Archive.open(tmp_path / "archive") as archive:
        for value in HOSTILE + ([""] if keyword == "PatientID" else []):
            ds = dataset(generate_uid())
            setattr(ds, keyword, value)
            command_uid = value if keyword == "SOPInstanceUID" else ds.SOPInstanceUID
            staged = stage(archive, ds, sop_uid=command_uid)
            outcome = archive.store_file(staged, "SCU", ds.SOPClassUID, command_uid)
            assert outcome.kind == "stored"
            relative = outcome.path.relative_to(archive.root)
            assert all(SAFE_NAME.fullmatch(part) and len(part) <= 70 for part in relative.parts), relative
        assert count(archive.db_path, "instances") == len(HOSTILE) + (keyword == "PatientID")
        for row in rows(archive.db_path, "instances"):
            assert (archive.root / row["path"]).resolve().is_relative_to(archive.root)
        assert staging_leftovers(archive) == []
    created = _tree(tmp_path) - outside_before
    assert all(p.is_relative_to(tmp_path / "archive") for p in created), created


def test_distinct_hostile_values_get_distinct_directories(archive):
    paths = {store(archive, dataset(patient_id=value)).path.parent.parent.parent for value in
             ["a/b", "a_b", "a\\b", "a\x00b", "a b", "a_b--0000000000000000", "", "_"]}
    assert len(paths) == 8


def _tree(top: Path) -> set[Path]:
    return {Path(d) / n for d, dirs, files in os.walk(top) for n in dirs + files}


# -- file-system faults -------------------------------------------------------------------------


def test_a_file_where_a_directory_must_go_is_out_of_resources(archive):
    blocker = archive.root / "BLOCKED"
    blocker.write_text("not a folder")
    ds = dataset("1.2.9", patient_id="BLOCKED")
    staged = stage(archive, ds)

    with pytest.raises(OutOfResources, match="not a directory"):
        archive.store_file(staged, "SCU", ds.SOPClassUID, "1.2.9")

    assert not staged.exists() and staging_leftovers(archive) == []
    assert count(archive.db_path, "instances") == 0
    assert blocker.read_text() == "not a folder"


def test_a_symlink_leading_out_of_the_root_is_never_followed(tmp_path, archive):
    outside = tmp_path / "outside"
    outside.mkdir()
    (archive.root / "P1").symlink_to(outside, target_is_directory=True)
    ds = dataset("1.2.9", patient_id="P1")
    staged = stage(archive, ds)

    with pytest.raises(OutOfResources, match="symlink"):
        archive.store_file(staged, "SCU", ds.SOPClassUID, "1.2.9")

    assert list(outside.iterdir()) == []
    assert not staged.exists() and count(archive.db_path, "instances") == 0


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 512 KiB tmpfs with 64 inodes, or a skip where mounting is not allowed."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,nr_inodes=64", "tmpfs", str(mount_point)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(directory: Path, inodes: bool) -> None:
    """Use up the file system's inodes (empty files) or its space (one big file)."""
    if inodes:
        for n in range(10_000):
            try:
                (directory / f"fill{n}").touch()
            except OSError:
                return
    with open(directory / "fill", "wb", buffering=0) as f:
        try:
            f.write(b"\0" * (os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize + 4096))
        except OSError:
            pass


def test_no_space_for_directories_is_out_of_resources(tmp_path, tiny_tmpfs):
    with Archive.open(tiny_tmpfs / "archive", db_path=tmp_path / "index.sqlite") as archive:
        ds = dataset("1.2.9")
        staged = stage(archive, ds)
        _fill(tiny_tmpfs, inodes=True)

        with pytest.raises(OutOfResources, match="no space left on device"):
            archive.store_file(staged, "SCU", ds.SOPClassUID, "1.2.9")

        assert not staged.exists() and archived_files(archive.root) == []
        assert count(tmp_path / "index.sqlite", "instances") == 0


def test_a_full_index_is_out_of_resources_and_leaves_no_file(tmp_path, tiny_tmpfs):
    with Archive.open(tmp_path / "archive", db_path=tiny_tmpfs / "index.sqlite") as archive:
        _fill(tiny_tmpfs, inodes=False)
        ds = dataset("1.2.9", StudyDescription="x" * 60)
        staged = stage(archive, ds)

        with pytest.raises(OutOfResources, match="cannot update the index"):
            archive.store_file(staged, "SCU", ds.SOPClassUID, "1.2.9")

        assert not staged.exists() and archived_files(archive.root) == []
        assert [p.name for p in archive.root.iterdir() if p.is_dir()] == [".incoming"]  # nor its directories
        (tiny_tmpfs / "fill").unlink()
        assert count(tiny_tmpfs / "index.sqlite", "instances") == 0


def _requests(archive, datasets) -> list[StoreRequest]:
    return [StoreRequest(str(stage(archive, ds)), "SCU", ds.SOPClassUID, ds.SOPInstanceUID) for ds in datasets]


def test_several_stores_in_one_transaction_fail_one_by_one(archive):
    """store_files: one COMMIT for the batch; a refused store (here the second copy of an instance under
    --on-duplicate reject, and a dataset whose UID differs from its command's) leaves the others."""
    first, again, other = dataset("1.2.9.1"), dataset("1.2.9.1"), dataset("1.2.9.2")
    requests = _requests(archive, [first, again, other])
    sent = [Path(r.staged).read_bytes() for r in requests]
    mismatched = StoreRequest(str(stage(archive, dataset("1.2.9.3"))), "SCU", first.SOPClassUID, "1.2.9.4")

    results = archive.store_files([*requests, mismatched])

    assert [type(r).__name__ for r in results] == ["StoreOutcome", "DuplicateRejected", "StoreOutcome",
                                                  "InvalidInstance"]
    assert results[0].path.read_bytes() == sent[0] and results[2].path.read_bytes() == sent[2]
    assert sorted(r["sop_instance_uid"] for r in rows(archive.db_path, "instances")) == ["1.2.9.1", "1.2.9.2"]
    assert staging_leftovers(archive) == []
    assert [r["number_of_study_related_instances"] for r in rows(archive.db_path, "studies")] == [2]


def test_a_batch_whose_commit_fails_leaves_no_file(tmp_path, tiny_tmpfs):
    """The COMMIT writes the batch's pages to the WAL: on a full disk it fails, and every file of the
    batch, already renamed into place, is taken back out; each store gets the error."""
    with Archive.open(tmp_path / "archive", db_path=tiny_tmpfs / "index.sqlite") as archive:
        _fill(tiny_tmpfs, inodes=False)
        requests = _requests(archive, [dataset(f"1.2.9.{n}", StudyDescription="x" * 60) for n in range(3)])

        results = archive.store_files(requests)

        assert [type(r) for r in results] == [OutOfResources] * 3
        assert all("cannot update the index" in str(r) for r in results)
        assert staging_leftovers(archive) == [] and archived_files(archive.root) == []
        (tiny_tmpfs / "fill").unlink()
        assert count(tiny_tmpfs / "index.sqlite", "instances") == 0


def test_a_staged_file_on_another_file_system_is_explained(tmp_path, tiny_tmpfs):
    with Archive.open(tmp_path / "archive") as archive:
        ds = dataset("1.2.9")
        staged = tiny_tmpfs / "elsewhere.dcm"
        staged.write_bytes(part10(ds))
        with pytest.raises(OutOfResources, match="another file system"):
            archive.store_file(staged, "SCU", ds.SOPClassUID, "1.2.9")
        assert not staged.exists() and count(archive.db_path, "instances") == 0


# -- deflate bombs and big headers ----------------------------------------------------------------


def test_a_deflate_bomb_is_inflated_only_as_far_as_the_header(archive):
    import tracemalloc

    ds = dataset("1.2.9")
    body = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # A private OB element after every indexed attribute, claiming 256 MiB of zeros (~250 KB deflated).
    size = 256 * 1024 * 1024
    chunks = [body.compress(part10(ds)[part10(ds).index(b"DICM") + 4:][_meta_length(part10(ds)):])]
    chunks.append(body.compress(b"\xdf\x7f\x00\x10OB\x00\x00" + size.to_bytes(4, "little")))
    zeros = b"\0" * (1024 * 1024)
    chunks += [body.compress(zeros) for _ in range(size // len(zeros))]
    chunks.append(body.flush())
    raw = part10(ds, DeflatedExplicitVRLittleEndian)
    meta_end = raw.index(b"DICM") + 4 + _meta_length(raw)
    staged = stage_bytes(archive, raw[:meta_end] + b"".join(chunks))

    tracemalloc.start()
    outcome = archive.store_file(staged, "SCU", ds.SOPClassUID, "1.2.9")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    assert outcome.kind == "stored" and archive.lookup("1.2.9")["patient_id"] == "P1"
    assert peak < 40 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB while reading a deflated header"


def _meta_length(raw: bytes) -> int:
    """Bytes of the File Meta group after DICM: its group length element plus the value it gives."""
    start = raw.index(b"DICM") + 4
    return 12 + int.from_bytes(raw[start + 8:start + 12], "little")


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["reject", "replace", "ignore"])
def test_the_same_uid_from_eight_threads_leaves_one_row_and_an_intact_file(tmp_path, policy):
    with Archive.open(tmp_path / "archive", on_duplicate=policy) as archive:
        payloads = [part10(dataset("1.2.9", StudyDescription="copy %d " % n + "x" * n)) for n in range(8)]
        staged = [stage_bytes(archive, p) for p in payloads]
        barrier = threading.Barrier(8)
        outcomes, errors = [], []

        def send(path):
            barrier.wait()
            try:
                outcomes.append(archive.store_file(path, "SCU", "1.2.840.10008.5.1.4.1.1.2", "1.2.9"))
            except DuplicateRejected as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(p,)) for p in staged]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        kinds = sorted(o.kind for o in outcomes)
        expected = {"reject": [], "replace": ["replaced"] * 7, "ignore": ["ignored"] * 7}[policy]
        assert kinds == sorted(["stored"] + expected) and len(errors) == (7 if policy == "reject" else 0)
        [row] = rows(archive.db_path, "instances")
        [final] = archived_files(archive.root)
        assert final.read_bytes() in payloads and row["size"] == final.stat().st_size
        assert rows(archive.db_path, "studies")[0]["number_of_study_related_instances"] == 1
        assert staging_leftovers(archive) == []


def test_many_threads_storing_different_instances_keep_the_counts_right(archive):
    def send(thread):
        for n in range(20):
            store(archive, dataset(f"1.2.{thread}.{n}", series=f"1.2.3.{thread % 4}"))

    threads = [threading.Thread(target=send, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert count(archive.db_path, "instances") == 160
    assert [s["number_of_series_related_instances"] for s in rows(archive.db_path, "series")] == [40] * 4
    assert rows(archive.db_path, "studies")[0]["number_of_study_related_instances"] == 160


def test_thread_connections_stay_bounded_and_close_with_the_archive(tmp_path):
    """Each association thread gets its own connection to read, closed when the thread ends; every
    thread's stores go through the process's one writing connection.

    SQLite parks the file descriptor of a closed connection while another connection of the process
    holds a lock on the file (closing it would drop the process's POSIX locks) and reuses it on the
    next open, so descriptors stay bounded by the peak number of concurrent threads.
    """
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def wave():
        threads = [threading.Thread(target=store, args=(archive, dataset())) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        gc.collect()

    baseline = fds()
    archive = Archive.open(tmp_path / "archive")
    store(archive, dataset())
    wave()
    after_first = fds()
    for _ in range(3):
        wave()
    assert archive.index.open_connections() == 2  # the main thread's and the writer's
    assert fds() <= after_first + 4  # a wave's peak concurrency varies by a thread or two; no growth per wave
    archive.close()
    gc.collect()
    assert fds() <= baseline


# -- opening, staging and closing ------------------------------------------------------------------


def test_open_sweeps_stale_staging_files_but_spares_a_live_archive(tmp_path):
    root = tmp_path / "archive"
    Archive.open(root).close()
    (root / ".incoming" / "crashed.dcm").write_bytes(b"partial")
    with Archive.open(root) as live:
        assert staging_leftovers(live) == []
        in_flight = live.staging_dir / "in-flight.dcm"
        in_flight.write_bytes(b"receiving")
        ancient = live.staging_dir / "ancient.dcm"
        ancient.write_bytes(b"old")
        os.utime(ancient, (1, 1))
        with Archive.open(root) as second:  # another process opening the same archive
            assert staging_leftovers(second) == [in_flight]


def test_discard_removes_a_partial_file_and_tolerates_a_missing_one(archive):
    partial = stage_bytes(archive, b"half a dataset")
    archive.discard(partial)
    archive.discard(partial)
    assert staging_leftovers(archive) == []


def test_a_root_under_a_file_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ArchiveUnavailable) as caught:
        Archive.open(tmp_path / "file" / "archive")
    assert str(caught.value) == f"cannot create archive directory {tmp_path / 'file' / 'archive'}: not a directory"
    assert caught.value.exit_code == EXIT_FAILED


def test_an_index_that_is_a_directory_cannot_be_opened(tmp_path):
    (tmp_path / "db").mkdir()
    with pytest.raises(ArchiveUnavailable, match=rf"^cannot open archive index {tmp_path / 'db'}: is a directory$"):
        Archive.open(tmp_path / "archive", db_path=tmp_path / "db")


def test_an_index_that_is_not_sqlite_cannot_be_opened(tmp_path):
    (tmp_path / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ArchiveUnavailable, match="file is not a database"):
        Archive.open(tmp_path / "archive", db_path=tmp_path / "index.sqlite")


def test_bad_template_and_policy_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"unknown DICOM keyword \{PatientIdd\}") as caught:
        Archive.open(tmp_path / "archive", template="{PatientIdd}/{SOPInstanceUID}.dcm")
    assert caught.value.exit_code == EXIT_USAGE
    with pytest.raises(UsageError, match="unknown duplicate policy 'overwrite'"):
        Archive.open(tmp_path / "archive", on_duplicate="overwrite")
