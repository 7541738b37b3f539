"""Read the few header attributes the index and the path layout need, never the pixel data.

``dcmread(stop_before_pixels=True, specific_tags=...)`` skips unwanted elements with a seek and stops
at Pixel Data: about 1 ms for a 100 MB file where a full read takes 70+ ms (notes/pynetdicom.md §4.1).
Both options are always combined; ``specific_tags`` alone still reads encapsulated pixel data.

Deflated files are inflated by us, with a cap, because pydicom inflates the whole stream in one
``zlib.decompress`` call: a few kilobytes can claim gigabytes (a deflate bomb, reliability.md E13).
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pacs_cli.archive.schema import BY_KEYWORD, READ_KEYWORDS

# Enough for any real header; Pixel Data follows it and is never needed.
DEFLATED_HEADER_CAP = 16 * 1024 * 1024
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR describes files; it is not an instance


class HeaderError(Exception):
    """The file cannot be indexed; ``str()`` is a short reason."""


class NotDicom(HeaderError):
    """Not a DICOM instance: no Part 10 preamble and ``DICM`` prefix, or a DICOMDIR."""


class BadHeader(HeaderError):
    """A DICOM file whose header cannot be parsed or lacks a hierarchy UID."""


@dataclass(frozen=True)
class Header:
    """The strings read from one file, by keyword; ``''`` when absent or zero length."""

    values: dict[str, str]

    def __getitem__(self, keyword: str) -> str:
        return self.values.get(keyword, "")

    @property
    def sop_instance_uid(self) -> str:
        return self["SOPInstanceUID"]

    @property
    def sop_class_uid(self) -> str:
        return self["SOPClassUID"]


def read_header(path: Path | str, extra_keywords: tuple[str, ...] = ()) -> Header:
    """Read the index attributes (and ``extra_keywords``, e.g. a path template's) from a Part 10 file.

    Raises NotDicom, BadHeader, or OSError when the file cannot be read at all. Every hierarchy UID
    (Study, Series, SOP Instance) must be present: without them the instance has no place in the index.
    """
    keywords = tuple(dict.fromkeys(READ_KEYWORDS + tuple(extra_keywords)))
    tags = [Tag(tag_for_keyword(k)) for k in keywords if tag_for_keyword(k) is not None]
    try:
        meta = read_file_meta_info(path)
        if meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
            raise NotDicom("a DICOMDIR, not an instance")
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            ds = _read_deflated(Path(path), meta, tags)
        else:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
            meta = ds.file_meta
        header = Header(_extract(ds, meta, keywords))
    except InvalidDicomError:
        raise NotDicom("not a DICOM Part 10 file (no 128-byte preamble and DICM prefix)") from None
    except (HeaderError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure (ValueError, struct.error, RecursionError...)
        raise BadHeader(f"cannot parse the header: {type(exc).__name__}: {exc}") from None
    missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not header[k]]
    if missing:
        raise BadHeader(f"no {', '.join(missing)} in the dataset")
    return header


def _read_deflated(path: Path, meta, tags):
    """Inflate at most DEFLATED_HEADER_CAP bytes of a Deflated Explicit VR Little Endian dataset."""
    group_length = meta.get("FileMetaInformationGroupLength")
    if group_length is None:
        raise BadHeader("deflated file without a File Meta Information Group Length")
    with open(path, "rb") as f:
        f.seek(128 + 4 + 12 + int(group_length))  # preamble, DICM, the group length element itself
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        out = io.BytesIO()  # parsed in place: no second copy of up to DEFLATED_HEADER_CAP bytes
        while out.tell() < DEFLATED_HEADER_CAP and (chunk := f.read(65536)):
            out.write(inflater.decompress(chunk, DEFLATED_HEADER_CAP - out.tell()))
            while inflater.unconsumed_tail and out.tell() < DEFLATED_HEADER_CAP:
                out.write(inflater.decompress(inflater.unconsumed_tail, DEFLATED_HEADER_CAP - out.tell()))
    out.seek(0)
    ds = read_dataset(out, False, True, stop_when=_at_pixels, specific_tags=tags)
    ds.file_meta = meta
    return ds


def _at_pixels(tag, vr, length) -> bool:
    return tag in PIXEL_TAGS


def _extract(ds, meta, keywords) -> dict[str, str]:
    """Turn elements into index strings; meta-sourced columns come from the File Meta group."""
    values = {}
    for keyword in keywords:
        column = BY_KEYWORD.get(keyword)
        source = meta if column is not None and column.source == "meta" else ds
        values[keyword] = element_text(source, keyword)
    return values


def element_text(ds, keyword: str) -> str:
    """The value of ``keyword`` as one string: decoded, padding stripped, values joined with ``\\``."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return ""
    value = ds[tag].value
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(_scalar(v) for v in value)
    return _scalar(value)


def _scalar(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    # Padding (space, or NUL for UI) is not significant for any VR we index (PS3.5 6.2).
    return str(value).strip(" \x00")


@contextlib.contextmanager
def quiet_pydicom():
    """Silence pydicom's per-file validation warnings while scanning many files.

    Only for single-threaded callers (``pacs index``): ``warnings.catch_warnings`` is process-global.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
