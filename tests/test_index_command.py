"""``pacs index`` through click's CliRunner (every option and exit code), one real console-script run,
and one run on a pseudo-terminal for the progress bar and the stats table."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom import dcmread

from pacs_cli.archive import Archive, schema
from pacs_cli.cli import cli
from test_archive_support import MR_IMAGE, count, dataset, store, write_file

SUMMARY = re.compile(r"^indexed (\d+) file\(s\) in [\d.]+ s(?: \([\d,]+ files/s\))?: (\d+) new, (\d+) updated, "
                     r"(\d+) unchanged, (\d+) not DICOM, (\d+) invalid, (\d+) duplicate\(s\), (\d+) unreadable$",
                     re.MULTILINE)


def run(*args, env=None):
    return CliRunner().invoke(cli, ["index", *map(str, args)], env=env)


def summary(result) -> tuple[int, ...]:
    """(files, new, updated, unchanged, not DICOM, invalid, duplicates, unreadable) from stderr."""
    match = SUMMARY.search(result.stderr)
    assert match, result.stderr
    return tuple(int(g) for g in match.groups())


@pytest.fixture
def tree(tmp_path) -> Path:
    """200 instances (4 patients, each one study of a CT and an MR series of 25) and two non-DICOM files."""
    top = tmp_path / "tree"
    for p in range(4):
        study = f"1.2.826.0.1.{p}"
        for s, (modality, sop_class) in enumerate([("CT", "1.2.840.10008.5.1.4.1.1.2"), ("MR", MR_IMAGE)]):
            for n in range(25):
                ds = dataset(f"{study}.{s}.{n}", patient_id=f"0{p}", study=study, series=f"{study}.{s}",
                             modality=modality, sop_class=sop_class, PatientName=f"Patient^{p}",
                             SeriesNumber=f"0{s}", InstanceNumber=f"{n:03d}", AccessionNumber=f"00{p}",
                             StudyDate="20240102")
                write_file(ds, top / f"p{p}" / modality / f"{n}.dcm")
    (top / "README.txt").write_text("not a DICOM file")
    (top / "p0" / "thumbs.db").write_bytes(os.urandom(300))
    return top


@pytest.fixture
def archive_dir(tmp_path) -> Path:
    return tmp_path / "archive"


def test_index_a_tree_gives_the_rows_store_file_gives(tmp_path, tree, archive_dir):
    result = run(tree, "--dir", archive_dir)

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert summary(result) == (202, 200, 0, 0, 2, 0, 0, 0)
    with Archive.open(tmp_path / "received") as received:  # the same files through the store path
        for path in sorted(tree.rglob("*.dcm")):
            ds = dcmread(path, stop_before_pixels=True)
            staged = received.staging_dir / "incoming"
            shutil.copyfile(path, staged)
            received.store_file(staged, "SCU", ds.SOPClassUID, ds.SOPInstanceUID)
        stored = _dataset_columns(received.db_path)
    indexed = _dataset_columns(archive_dir / "index.sqlite")
    assert indexed == stored and len(indexed) == 200
    assert indexed["1.2.826.0.1.0.0.7"]["SeriesNumber"] == "00"
    assert indexed["1.2.826.0.1.0.0.7"]["InstanceNumber"] == "007"
    assert indexed["1.2.826.0.1.0.0.7"]["ModalitiesInStudy"] == "CT\\MR"
    assert indexed["1.2.826.0.1.0.0.7"]["NumberOfPatientRelatedInstances"] == 50


def _dataset_columns(db_path: Path) -> dict[str, dict]:
    """Every schema column of every instance, all levels joined, by SOP Instance UID."""
    select = ", ".join(f"{'p st se i'.split()[schema.LEVELS.index(c.level)]}.{c.column} AS {c.keyword}"
                       for c in schema.COLUMNS)
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute(f"SELECT {select} FROM instances i JOIN series se ON i.series_pk = se.pk "
                             "JOIN studies st ON se.study_pk = st.pk JOIN patients p ON st.patient_pk = p.pk")
        return {row["SOPInstanceUID"]: dict(row) for row in found}


def test_a_second_run_reads_only_what_changed(tree, archive_dir):
    assert run(tree, "--dir", archive_dir).exit_code == 0

    again = run(tree, "--dir", archive_dir)
    assert again.exit_code == 0 and summary(again) == (202, 0, 0, 200, 2, 0, 0, 0)

    write_file(dataset("1.2.826.0.1.0.0.3", patient_id="00", study="1.2.826.0.1.0", series="1.2.826.0.1.0.0",
                       StudyDescription="edited"), tree / "p0" / "CT" / "3.dcm")
    third = run(tree, "--dir", archive_dir)
    assert summary(third) == (202, 0, 1, 199, 2, 0, 0, 0)


def test_files_that_cannot_be_indexed_fail_the_run_and_are_listed_with_v(tmp_path, archive_dir):
    broken = dataset("1.9")
    del broken.StudyInstanceUID
    write_file(broken, tmp_path / "in" / "broken.dcm")
    write_file(dataset("1.8"), tmp_path / "in" / "fine.dcm")

    result = CliRunner().invoke(cli, ["-v", "index", str(tmp_path / "in"), "--dir", str(archive_dir)])

    assert result.exit_code == 1
    assert f"I: {tmp_path / 'in' / 'broken.dcm'}: no StudyInstanceUID in the dataset" in result.stderr
    assert result.stderr.endswith("Error: 1 file(s) could not be indexed (-v lists them)\n")
    assert summary(result) == (2, 1, 0, 0, 0, 1, 0, 0)


def test_stats_as_json_when_not_a_terminal(tree, archive_dir):
    run(tree, "--dir", archive_dir)
    result = run("--dir", archive_dir, "--stats")
    assert result.exit_code == 0 and result.stderr == ""
    stats = json.loads(result.stdout)
    assert {k: stats[k] for k in ("patients", "studies", "series", "instances")} == {
        "patients": 4, "studies": 4, "series": 8, "instances": 200}
    assert [(m["modality"], m["series"], m["instances"]) for m in stats["modalities"]] == [("CT", 4, 100), ("MR", 4, 100)]
    assert {c["name"] for c in stats["sop_classes"]} == {"CT Image Storage", "MR Image Storage"}


def test_verify_reports_and_repair_fixes(tree, archive_dir):
    run(tree, "--dir", archive_dir)
    clean = run("--dir", archive_dir, "--verify")
    assert clean.exit_code == 0 and clean.stdout == ""
    assert clean.stderr == "verified 200 row(s) and 0 file(s): 0 problem(s)\n"

    gone = tree / "p1" / "MR" / "4.dcm"
    gone.unlink()
    stray = write_file(dataset("5.5"), archive_dir / "stray.dcm")
    broken = run("--dir", archive_dir, "--verify")
    assert broken.exit_code == 1
    assert broken.stdout.splitlines() == [f"missing\t{gone}\t1.2.826.0.1.1.1.4", "unindexed\tstray.dcm"]
    assert broken.stderr.endswith("Error: 2 problem(s) in the index (1 missing, 1 unindexed); "
                                  "pacs index --verify --repair fixes what it can\n")

    repaired = run("--dir", archive_dir, "--repair")
    assert repaired.exit_code == 0, repaired.stderr
    assert repaired.stdout == ""
    assert "repair: removed 1 row(s) of missing files; re-read 1 file(s)" in repaired.stderr
    assert count(archive_dir / "index.sqlite", "instances") == 200  # 199 + the stray one
    assert stray.exists()


def test_remove_by_uid_at_each_level(tree, archive_dir):
    run(tree, "--dir", archive_dir)
    result = run("--dir", archive_dir, "--remove", "1.2.826.0.1.0.0.1", "--remove", "1.2.826.0.1.1.1",
                 "--remove", "1.2.826.0.1.2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "removed image 1.2.826.0.1.0.0.1: 1 instance(s), 0 file(s) deleted, 1 file(s) kept (outside the archive)",
        "removed series 1.2.826.0.1.1.1: 25 instance(s), 0 file(s) deleted, 25 file(s) kept (outside the archive)",
        "removed study 1.2.826.0.1.2: 50 instance(s), 0 file(s) deleted, 50 file(s) kept (outside the archive)",
    ]
    assert count(archive_dir / "index.sqlite", "instances") == 124 and count(archive_dir / "index.sqlite", "patients") == 3
    assert len(list(tree.rglob("*.dcm"))) == 200


def test_remove_deletes_archived_files_and_fails_on_unknown_uids(archive_dir):
    with Archive.open(archive_dir) as archive:
        path = store(archive, dataset("1.2.9")).path
    result = run("--dir", archive_dir, "--remove", "9.9.9", "--remove", "1.2.9")
    assert result.exit_code == 1
    assert result.stdout == "removed image 1.2.9: 1 instance(s), 1 file(s) deleted\n"
    assert result.stderr == f"Error: no study, series or instance with UID 9.9.9 in {archive_dir.resolve() / 'index.sqlite'}\n"
    assert not path.exists()


def test_nothing_to_do_is_a_usage_error(archive_dir):
    result = run("--dir", archive_dir)
    assert result.exit_code == 2 and "nothing to do" in result.stderr


def test_environment_chooses_archive_and_index(tmp_path, tree):
    env = {"PACS_ARCHIVE_DIR": str(tmp_path / "env-archive"), "PACS_DB": str(tmp_path / "db" / "pacs.sqlite")}
    result = run(tree, "--stats", env=env)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["instances"] == 200
    assert (tmp_path / "db" / "pacs.sqlite").is_file() and (tmp_path / "env-archive" / ".incoming").is_dir()


def test_quiet_keeps_stderr_empty(tree, archive_dir):
    result = CliRunner().invoke(cli, ["-q", "index", str(tree), "--dir", str(archive_dir)])
    assert result.exit_code == 0 and result.stderr == "" and result.stdout == ""


def test_an_archive_that_cannot_be_opened_is_one_line_and_exit_1(tmp_path, tree):
    (tmp_path / "file").write_text("")
    result = run(tree, "--dir", tmp_path / "file" / "archive")
    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot create archive directory {tmp_path / 'file' / 'archive'}: not a directory\n"


@pytest.mark.script_launch_mode("subprocess")
def test_the_installed_pacs_index_reads_headers_in_two_processes(script_runner, tree, archive_dir):
    result = script_runner.run(["pacs", "-v", "index", str(tree), "--dir", str(archive_dir), "-j", "2"])
    assert result.returncode == 0, result.stderr
    assert "I: read 202 header(s) in 2 process(es)" in result.stderr
    assert summary(result) == (202, 200, 0, 0, 2, 0, 0, 0)
    assert count(archive_dir / "index.sqlite", "instances") == 200


def test_a_terminal_gets_a_progress_bar_and_a_stats_table(tree, archive_dir):
    output = _run_on_a_pty([sys.executable, "-m", "pacs_cli", "index", str(tree), "--dir", str(archive_dir),
                            "--stats"])
    assert "indexing" in output and "files/s" in output  # the bar, with its rate
    assert "CT Image Storage" in output and "instances" in output  # the table, not JSON
    assert '"instances"' not in output


def _run_on_a_pty(command: list[str]) -> str:
    """Run with stdout and stderr on a pseudo-terminal; return everything written to it."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(command, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(60) == 0
    return b"".join(chunks).decode("utf-8", "replace")
