"""Builders shared by the archive and ``pacs index`` tests (no tests here).

Staged files are built the way pynetdicom's chunked receive builds them: a 128-byte preamble, ``DICM``,
the File Meta group from ``dsutils.create_file_meta`` (UIDs from the C-STORE command), then the
dataset bytes as the peer encoded them.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

import pydicom.data
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID, generate_uid
from pynetdicom.dsutils import create_file_meta, encode

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def dataset(sop_uid: str | None = None, *, patient_id="P1", study="1.2.3", series="1.2.3.4",
            modality="CT", sop_class=CT_IMAGE, **attributes) -> Dataset:
    """A small instance with the hierarchy UIDs and a few index attributes."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = patient_id
    ds.PatientName = attributes.pop("PatientName", "Doe^Jane")
    ds.Modality = modality
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def part10(ds: Dataset, transfer_syntax=ExplicitVRLittleEndian, sop_class=None, sop_uid=None) -> bytes:
    """The bytes pynetdicom's chunked receive writes for ``ds`` sent in ``transfer_syntax``."""
    ts = UID(transfer_syntax)
    meta = create_file_meta(sop_class_uid=UID(sop_class or ds.SOPClassUID),
                            sop_instance_uid=UID(sop_uid or ds.SOPInstanceUID), transfer_syntax=ts)
    from io import BytesIO

    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    out.write(encode(ds, ts == ImplicitVRLittleEndian, True))
    return out.getvalue()


def stage_bytes(archive, data: bytes) -> Path:
    """A staged file in the archive's staging dir, as NamedTemporaryFile(delete=False) leaves it."""
    fd, name = tempfile.mkstemp(suffix=".dcm", dir=archive.staging_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def stage(archive, ds: Dataset, **kwargs) -> Path:
    return stage_bytes(archive, part10(ds, **kwargs))


def store(archive, ds: Dataset, calling_aet="SCU", **kwargs):
    """Stage ``ds`` and store it with the command UIDs taken from the dataset."""
    return archive.store_file(stage(archive, ds, **kwargs), calling_aet, ds.SOPClassUID, ds.SOPInstanceUID)


def rows(db_path: Path, table: str) -> list[dict]:
    """All rows of a table, read through a fresh connection (what another process would see)."""
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY pk")]


def count(db_path: Path, table: str) -> int:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def archived_files(root: Path) -> list[Path]:
    """Files under the archive root other than the index and the staging directory."""
    return sorted(p for p in root.rglob("*") if p.is_file() and ".incoming" not in p.relative_to(root).parts
                  and not p.name.startswith("index.sqlite"))


def staging_leftovers(archive) -> list[Path]:
    return sorted(p for p in archive.staging_dir.iterdir() if p.name != ".lock")


def write_file(ds: Dataset, path: Path, transfer_syntax=ExplicitVRLittleEndian) -> Path:
    """A Part 10 file on disk, for ``pacs index`` to find."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(part10(ds, transfer_syntax))
    return path
