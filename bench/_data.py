"""Synthetic data for the benchmarks: CT/MR-like instances in a realistic hierarchy, one large multi-frame.

Everything is deterministic for a given seed, except the UIDs, which carry a token drawn once per bench
run so that two runs never share a SOP Instance UID. The same :func:`hierarchy` drives the files the
store, index, find and move cases send or read and the rows the find case writes straight into an index
(:func:`index_rows`), so a query such as ``PatientName=SMITH*`` matches the same share of studies in both.

Hierarchy: patients with 1–3 studies, studies with 1–4 series, series with a shape-dependent number of
images; names from a list of 40 surnames (so ``SMITH*`` matches about 1 study in 40), study dates spread
over 2015–2024 (so one month matches about 1 study in 120).
"""

from __future__ import annotations

import datetime
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SURNAMES = (
    "SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ HERNANDEZ LOPEZ GONZALEZ "
    "WILSON ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE PEREZ THOMPSON WHITE HARRIS SANCHEZ CLARK "
    "RAMIREZ LEWIS ROBINSON WALKER YOUNG ALLEN KING WRIGHT SCOTT TORRES NGUYEN HILL FLORES"
).split()
GIVEN = "JAMES MARY ROBERT PATRICIA JOHN JENNIFER MICHAEL LINDA DAVID ELIZABETH ANNA PETER".split()
BODY_PARTS = {"CT": ("CHEST", "ABDOMEN", "HEAD", "PELVIS"), "MR": ("BRAIN", "KNEE", "SPINE", "SHOULDER")}
FIRST_DATE = datetime.date(2015, 1, 1)
DAYS = (datetime.date(2024, 12, 31) - FIRST_DATE).days
RUN_TOKEN = str(random.SystemRandom().randrange(10**9, 10**10))  # one per bench run: UIDs never repeat


@dataclass(frozen=True)
class Shape:
    """One kind of image: size, modality, SOP class, and how many images a series holds."""

    name: str
    modality: str
    sop_class_uid: str
    rows: int
    columns: int
    per_series: tuple[int, int]

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * 2  # 16 bits allocated


CT = Shape("ct", "CT", CT_IMAGE_STORAGE, 512, 512, (20, 60))
MR = Shape("mr", "MR", MR_IMAGE_STORAGE, 64, 64, (10, 40))


UID_KINDS = {"study": 1, "series": 2, "instance": 3}


def uid(kind: str, seed: int, number: int) -> str:
    """A UID under pydicom's root, unique per bench run, kind and seed."""
    return f"{PYDICOM_ROOT_UID}{RUN_TOKEN}.{seed}.{UID_KINDS[kind]}.{number}"


def hierarchy(count: int, shape: Shape, seed: int, studies: int | None = None) -> Iterator[dict[str, str]]:
    """``count`` instances' attributes (keyword -> string), patient by patient, study by study.

    ``studies`` puts every instance in that many studies of one patient each (the move case's single
    study); otherwise the numbers of studies, series and images vary as described in the module.
    """
    rng = random.Random(seed)
    made = patient_no = study_no = series_no = 0
    while made < count:
        patient_no += 1
        name = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"
        patient = {
            "PatientName": name, "PatientID": f"PID{seed:02d}{patient_no:07d}",
            "PatientBirthDate": f"{rng.randrange(1930, 2015)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}",
            "PatientSex": rng.choice("MF"),
        }
        for _ in range(1 if studies else rng.randint(1, 3)):
            study_no += 1
            date = (FIRST_DATE + datetime.timedelta(days=rng.randrange(DAYS + 1))).strftime("%Y%m%d")
            study = {
                **patient, "StudyInstanceUID": uid("study", seed, study_no), "StudyDate": date,
                "StudyTime": f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
                "AccessionNumber": f"A{seed:02d}{study_no:08d}", "StudyID": str(study_no % 100000),
                "ReferringPhysicianName": f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}",
                "StudyDescription": f"{shape.modality} {rng.choice(BODY_PARTS[shape.modality])}",
            }
            series_in_study = 1 if studies else rng.randint(1, 4)
            for series_index in range(series_in_study):
                series_no += 1
                body_part = rng.choice(BODY_PARTS[shape.modality])
                series = {
                    **study, "SeriesInstanceUID": uid("series", seed, series_no), "Modality": shape.modality,
                    "SeriesNumber": str(series_index + 1), "SeriesDescription": f"{body_part} {series_index + 1}",
                    "BodyPartExamined": body_part, "SeriesDate": date, "SeriesTime": study["StudyTime"],
                }
                images = count if studies else rng.randint(*shape.per_series)
                for number in range(1, images + 1):
                    if made == count:
                        return
                    made += 1
                    yield {**series, "SOPInstanceUID": uid("instance", seed, made), "InstanceNumber": str(number),
                           "SOPClassUID": shape.sop_class_uid}


def write_images(folder: Path, count: int, shape: Shape, seed: int, studies: int | None = None) -> list[Path]:
    """Write ``count`` Part 10 files (Explicit VR Little Endian) into ``folder``; return their paths.

    One folder, files named by number: DCMTK's storescu ``+sd`` and ``pacs storescu`` take the folder,
    dcmqridx takes the names in batches.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pixels = random.Random(seed).randbytes(shape.pixel_bytes)  # one block, shared: content is not measured
    paths = []
    for number, values in enumerate(hierarchy(count, shape, seed, studies)):
        ds = pydicom.Dataset()
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.Rows, ds.Columns = shape.rows, shape.columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = pixels
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{number:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def link_subset(paths: list[Path], folder: Path) -> Path:
    """A folder holding hard links to ``paths``: a capped file count without copying any bytes."""
    folder.mkdir(parents=True)
    for path in paths:
        os.link(path, folder / path.name)
    return folder


def index_rows(count: int, seed: int) -> Iterator[dict[str, str]]:
    """Attributes of ``count`` instances, half CT-like and half MR-like studies, for writing index rows.

    Used by the find case to fill an index with 100,000 or 1,000,000 instances that have no files.
    """
    half = count // 2
    yield from hierarchy(half, CT, seed)
    yield from hierarchy(count - half, MR, seed + 1)


FRAME = 1024 * 512 * 2  # bytes per 1024x512 16-bit frame


def make_multiframe(path: Path, size_mb: int, seed: int = 99) -> None:
    """One multi-frame MR object of about ``size_mb`` MiB of pixel data.

    Header by pydicom, Pixel Data streamed: a 1 GB file costs no 1 GB of memory.
    """
    frames = max(1, size_mb * 1024 * 1024 // FRAME)
    values = next(hierarchy(1, MR, seed))
    ds = pydicom.Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 1024, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    chunk = random.Random(seed).randbytes(FRAME)
    with open(path, "ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", frames * FRAME))
        for _ in range(frames):
            f.write(chunk)
