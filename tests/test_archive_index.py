"""The index: schema and migrations, derived columns, remove, verify/repair, in-place indexing,
and the archive package's import and SQL boundaries."""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pacs_cli.archive
from pacs_cli.archive import Archive, NotFound, StoreOutcome, StoreRequest, schema
from pacs_cli.archive.header import read_header
from pacs_cli.archive.index import WRITER_CHECKPOINT_PAGES, FileInfo, Index
from test_archive_support import (
    MR_IMAGE, TEST_FILES, archived_files, count, dataset, part10, rows, stage, store, write_file,
)

PACKAGE = Path(pacs_cli.archive.__file__).parent


@pytest.fixture
def archive(tmp_path):
    archive = Archive.open(tmp_path / "archive")
    yield archive
    archive.close()


# -- schema, migrations, boundaries ----------------------------------------------------------------


def test_migrations_are_recorded_and_applied_once(tmp_path):
    Index.open(tmp_path / "index.sqlite").close()
    index = Index.open(tmp_path / "index.sqlite")
    assert index.migrations() == ["m001_initial"]
    index.close()
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM _pacs_migrations").fetchone()[0] == 1


def test_every_mapped_keyword_has_its_column(archive):
    with sqlite3.connect(archive.db_path) as conn:
        for column in schema.COLUMNS:
            names = {row[1] for row in conn.execute(f"PRAGMA table_info({column.table})")}
            assert column.column in names, column
            assert column.norm_column is None or column.norm_column in names, column
        names = {row[1] for row in conn.execute("PRAGMA table_info(instances)")}
        assert set(schema.FILE_COLUMNS) <= names


def test_each_level_has_one_unique_key_and_the_query_columns_are_indexed(archive):
    assert {level: c.keyword for level, c in schema.UNIQUE_KEYS.items()} == {
        "PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
    with sqlite3.connect(archive.db_path) as conn:
        indexed = {(table, row[0]) for table in schema.TABLES.values()
                   for name in [r[1] for r in conn.execute(f"PRAGMA index_list({table})")]
                   for row in [next(iter(conn.execute(f"PRAGMA index_info({name})")))[2:]]}
    for keyword in ["PatientID", "PatientName", "StudyDate", "AccessionNumber", "StudyInstanceUID",
                    "SeriesInstanceUID", "Modality", "SOPInstanceUID"]:
        column = schema.BY_KEYWORD[keyword]
        assert (column.table, column.column) in indexed, keyword


def test_the_archive_package_never_imports_click_or_rich():
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("click", "rich")], (path.name, names)
    # At run time too (sqlite-utils itself imports click, so only rich can be checked this way).
    code = "import sys, pacs_cli.archive, pacs_cli.archive.scan; print('rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_sql_lives_only_in_index_py():
    statement = re.compile(r"""["'](?:SELECT|INSERT|UPDATE|DELETE|CREATE|PRAGMA|BEGIN|COMMIT|ROLLBACK)\b""")
    offenders = [p.name for p in PACKAGE.glob("*.py") if p.name != "index.py" and statement.search(p.read_text())]
    assert offenders == []


# -- derived columns and "newest non-empty value wins" -------------------------------------------------


def checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pacs-checkpoint"]


@pytest.mark.parametrize("interval, copied", [(3600, False), (0.05, True)], ids=["writers-wait", "thread-copies"])
def test_background_checkpoints_take_the_wal_copy_off_the_writers(tmp_path, interval, copied):
    """300 stores write ~2,400 WAL pages: past SQLite's 1,000, the committing store would copy them
    into the database file. With background checkpoints on, only the thread does, within its interval."""
    archive = Archive.open(tmp_path / "archive")
    archive.index.checkpoint_in_background(interval)
    assert archive.index.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WRITER_CHECKPOINT_PAGES
    size = archive.db_path.stat().st_size
    for n in range(300):
        store(archive, dataset(f"1.2.9.{n}"))
    deadline = time.monotonic() + 5
    while copied and archive.db_path.stat().st_size == size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (archive.db_path.stat().st_size > size) is copied
    assert len(checkpointer_threads()) == 1
    archive.close()
    assert checkpointer_threads() == []
    assert count(archive.db_path, "instances") == 300


def test_a_write_holds_the_index_lock_file_against_other_processes(archive):
    """Writers queue on ``index.sqlite-lock`` (flock) before BEGIN IMMEDIATE: a writer of another
    process waits in the kernel and is woken when the turn is free, instead of sleeping in SQLite's
    busy handler. The file is one of the archive's own: never a store's target, never indexed."""
    lock_path = archive.db_path.with_name("index.sqlite-lock")
    with archive.index.write():
        other = os.open(lock_path, os.O_RDWR)  # another open file description, as another process has
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    store(archive, dataset("1.1"))
    assert lock_path in archive.own_files()
    assert archive.index_files([archive.root]).files == 1


def test_a_write_inside_a_write_is_refused_not_a_deadlock(archive):
    with archive.index.write():
        with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
            with archive.index.write():
                pass
    store(archive, dataset("1.1"))  # the turn was given back
    assert count(archive.db_path, "instances") == 1


def test_derived_columns_follow_every_change(archive):
    store(archive, dataset("1.1", series="1.2.3.1", modality="CT"))
    store(archive, dataset("1.2", series="1.2.3.1", modality="CT"))
    store(archive, dataset("1.3", series="1.2.3.2", modality="MR", sop_class=MR_IMAGE))
    [study] = rows(archive.db_path, "studies")
    assert study["modalities_in_study"] == "CT\\MR"
    assert study["sop_classes_in_study"] == "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.4"
    assert (study["number_of_study_related_series"], study["number_of_study_related_instances"]) == (2, 3)
    [patient] = rows(archive.db_path, "patients")
    assert [patient[f"number_of_patient_related_{k}"] for k in ("studies", "series", "instances")] == [1, 2, 3]

    archive.remove("1.2.3.2")

    [study] = rows(archive.db_path, "studies")
    assert study["modalities_in_study"] == "CT" and study["number_of_study_related_instances"] == 2
    assert [s["series_instance_uid"] for s in rows(archive.db_path, "series")] == ["1.2.3.1"]


DERIVED = {
    "patients": ("patient_id", "number_of_patient_related_studies", "number_of_patient_related_series",
                 "number_of_patient_related_instances"),
    "studies": ("study_instance_uid", "modalities_in_study", "sop_classes_in_study",
                "number_of_study_related_series", "number_of_study_related_instances"),
    "series": ("series_instance_uid", "number_of_series_related_instances"),
}


def derived(db_path) -> dict:
    return {table: sorted(tuple(r[c] for c in columns) for r in rows(db_path, table))
            for table, columns in DERIVED.items()}


def assert_counts_equal_a_recount(archive) -> None:
    kept = derived(archive.db_path)
    with archive.index.write() as tx:
        tx.settle_all()
    assert derived(archive.db_path) == kept


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("phase", ["new instances only", "then replacements and moves"])
def test_counts_kept_per_store_equal_a_full_recount(tmp_path, phase, batch):
    """Stores count the instances they add without recounting the study, once per transaction;
    whatever mix of new instances, replacements and instances moving to another series, study or
    patient, one store per transaction or several (a batch may hold one instance twice), the
    derived columns must be what recounting everything gives."""
    import random

    rng = random.Random(7)
    archive = Archive.open(tmp_path / "archive", on_duplicate="replace")

    def one(uid: str):
        study = rng.choice(["1.2.3", "1.2.4", "1.2.5"])
        modality, sop_class = rng.choice([("CT", "1.2.840.10008.5.1.4.1.1.2"), ("MR", MR_IMAGE), ("", MR_IMAGE)])
        patient = {"1.2.3": "P1", "1.2.4": "P1", "1.2.5": rng.choice(["P2", "P3"])}[study]
        return dataset(uid, patient_id=patient, study=study, series=f"{study}.{rng.choice([1, 2])}",
                       modality=modality, sop_class=sop_class)

    def store_all(uids: list[str]) -> None:
        for start in range(0, len(uids), batch):
            datasets = [one(uid) for uid in uids[start:start + batch]]
            requests = [StoreRequest(str(stage(archive, ds)), "SCU", ds.SOPClassUID, ds.SOPInstanceUID)
                        for ds in datasets]
            assert all(isinstance(r, StoreOutcome) for r in archive.store_files(requests))

    store_all([f"1.9.{n}" for n in range(60)])
    if phase != "new instances only":
        store_all([f"1.9.{rng.randrange(80)}" for _ in range(100)])
    assert_counts_equal_a_recount(archive)
    archive.close()


def test_a_part_undone_counts_nothing(archive, tmp_path):
    """A store refused inside a batch's transaction (its savepoint rolled back) adds nothing to the
    counts its rows would have changed, though they are applied only at the COMMIT."""
    first, undone = (read_header(write_file(dataset(uid, series=series), tmp_path / f"{uid}.dcm")).values
                     for uid, series in (("1.1", "1.2.3.4"), ("1.2", "1.2.3.9")))
    with archive.index.write() as tx:
        tx.put(first, FileInfo("a.dcm", 1, 0))
        with pytest.raises(RuntimeError), tx.savepoint():
            tx.put(undone, FileInfo("b.dcm", 1, 0))
            raise RuntimeError("refused after its rows were written")
    [study] = rows(archive.db_path, "studies")
    assert (study["number_of_study_related_series"], study["number_of_study_related_instances"]) == (1, 1)
    assert [s["number_of_series_related_instances"] for s in rows(archive.db_path, "series")] == [1]
    assert_counts_equal_a_recount(archive)


def test_empty_values_do_not_erase_what_an_earlier_instance_said(archive):
    store(archive, dataset("1.1", StudyDescription="CT HEAD", PatientBirthDate="19700101"))
    store(archive, dataset("1.2", StudyDescription="", PatientName="Doe^Jane^Q"))
    [study] = rows(archive.db_path, "studies")
    [patient] = rows(archive.db_path, "patients")
    assert study["study_description"] == "CT HEAD"
    assert (patient["patient_birth_date"], patient["patient_name"]) == ("19700101", "Doe^Jane^Q")


def test_lookup_and_stats(archive):
    store(archive, dataset("1.1", modality="CT"))
    store(archive, dataset("1.2", series="9.9", modality="MR", sop_class=MR_IMAGE))
    assert archive.lookup("1.1")["series_instance_uid"] == "1.2.3.4"
    assert archive.lookup("1.1\x00")["sop_instance_uid"] == "1.1"
    assert archive.lookup("9.9.9") is None
    stats = archive.stats()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (1, 1, 2, 2)
    assert stats["bytes"] == sum(r["size"] for r in rows(archive.db_path, "instances"))
    assert [(m["modality"], m["series"], m["instances"]) for m in stats["modalities"]] == [("CT", 1, 1), ("MR", 1, 1)]
    assert {c["sop_class_uid"]: c["name"] for c in stats["sop_classes"]} == {
        "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage", MR_IMAGE: "MR Image Storage"}


# -- remove ------------------------------------------------------------------------------------


def test_remove_an_instance_a_series_and_a_study(archive):
    outcomes = [store(archive, dataset(f"1.{n}", series=f"1.2.3.{n % 2}")) for n in range(4)]

    removal = archive.remove("1.0")
    assert (removal.level, removal.instances, removal.deleted) == ("IMAGE", 1, [outcomes[0].path])
    removal = archive.remove("1.2.3.1")
    assert (removal.level, removal.instances) == ("SERIES", 2)
    assert sorted(removal.deleted) == sorted([outcomes[1].path, outcomes[3].path])
    removal = archive.remove("1.2.3")
    assert (removal.level, removal.instances, removal.deleted) == ("STUDY", 1, [outcomes[2].path])

    assert archived_files(archive.root) == []
    assert [count(archive.db_path, t) for t in ("patients", "studies", "series", "instances")] == [0, 0, 0, 0]


def test_remove_never_deletes_files_outside_the_root(tmp_path, archive):
    outside = write_file(dataset("1.5"), tmp_path / "elsewhere" / "a.dcm")
    archive.index_files([outside])
    removal = archive.remove("1.5")
    assert removal.kept == [outside] and removal.deleted == [] and outside.exists()
    assert archive.lookup("1.5") is None


def test_remove_with_keep_files_and_of_an_unknown_uid(archive):
    kept = store(archive, dataset("1.6")).path
    assert archive.remove("1.6", delete_files=False).kept == [kept] and kept.exists()
    with pytest.raises(NotFound, match="no study, series or instance with UID 1.6"):
        archive.remove("1.6")


# -- verify and repair ----------------------------------------------------------------------------


def test_verify_reports_missing_changed_and_unindexed(archive):
    gone = store(archive, dataset("1.1")).path
    changed = store(archive, dataset("1.2")).path
    store(archive, dataset("1.3"))
    gone.unlink()
    with open(changed, "ab") as f:
        f.write(b"\0\0")
    write_file(dataset("1.4"), archive.root / "stray" / "x.dcm")
    (archive.root / "notes.txt").write_text("not dicom")

    report = archive.verify()

    assert {(p.kind, p.path) for p in report.problems} == {
        ("missing", gone.relative_to(archive.root).as_posix()),
        ("changed", changed.relative_to(archive.root).as_posix()),
        ("unindexed", "stray/x.dcm"), ("unindexed", "notes.txt")}
    assert (report.checked_rows, report.checked_files) == (3, 4)


def test_repair_drops_missing_rows_and_reads_the_others(archive):
    gone = store(archive, dataset("1.1")).path
    changed = store(archive, dataset("1.2", StudyDescription="before")).path
    gone.unlink()
    changed.write_bytes(part10(dataset("1.2", StudyDescription="after the edit")))
    write_file(dataset("1.4"), archive.root / "stray" / "x.dcm")
    (archive.root / "notes.txt").write_text("not dicom")

    result = archive.repair()

    assert result.removed == 1 and result.summary.not_dicom == 1
    assert (result.summary.new, result.summary.updated) == (1, 1)
    assert archive.lookup("1.1") is None and archive.lookup("1.4")["path"] == "stray/x.dcm"
    assert rows(archive.db_path, "studies")[0]["study_description"] == "after the edit"
    assert [p.path for p in archive.verify().problems] == ["notes.txt"]  # left where it is, still reported


# -- in-place indexing (library level; the command has its own tests) ------------------------------------


def test_index_files_is_incremental_and_notices_changes(tmp_path, archive):
    tree = tmp_path / "tree"
    for n in range(5):
        write_file(dataset(f"1.{n}"), tree / f"{n}.dcm")
    (tree / "readme.txt").write_text("hello")

    first = archive.index_files([tree], jobs=1)
    assert (first.files, first.new, first.not_dicom) == (6, 5, 1)
    second = archive.index_files([tree], jobs=1)
    assert (second.unchanged, second.read, second.new, second.updated) == (5, 1, 0, 0)

    write_file(dataset("1.0", StudyDescription="edited"), tree / "0.dcm")  # new size and mtime
    (tree / "1.dcm").write_bytes(part10(dataset("7.7")))                   # now holds another instance
    (tree / "2.dcm").write_text("no longer DICOM")
    third = archive.index_files([tree], jobs=1)
    assert (third.updated, third.new, third.not_dicom) == (2, 0, 2)  # "updated": a known path re-read
    assert archive.lookup("1.1") is None and archive.lookup("1.2") is None
    assert archive.lookup("7.7")["path"] == str((tree / "1.dcm").resolve())
    assert count(archive.db_path, "instances") == 4


def test_a_second_copy_elsewhere_is_a_duplicate_not_a_second_row(tmp_path, archive):
    original = store(archive, dataset("1.1")).path
    copy = tmp_path / "copy.dcm"
    shutil.copyfile(original, copy)
    summary = archive.index_files([copy])
    assert summary.duplicates == 1 and archive.lookup("1.1")["path"] == original.relative_to(archive.root).as_posix()
    original.unlink()
    assert archive.index_files([copy]).updated == 1  # the archived copy is gone: the row follows the file
    assert archive.lookup("1.1")["path"] == str(copy)


def test_index_files_skips_the_archives_own_files(archive):
    store(archive, dataset("1.1"))
    (archive.staging_dir / "partial.dcm").write_bytes(part10(dataset("2.2")))
    summary = archive.index_files([archive.root])
    assert (summary.files, summary.unchanged) == (1, 1)


def test_bundled_test_files_index_like_the_store_path(tmp_path, archive):
    summary = archive.index_files([TEST_FILES], jobs=1)
    assert summary.new > 50 and summary.unreadable == 0
    rows_by_uid = {r["sop_instance_uid"]: r for r in rows(archive.db_path, "instances")}
    assert all(r["source"] == "index" and Path(r["path"]).is_absolute() for r in rows_by_uid.values())
    assert json.dumps(archive.stats())  # plain data
