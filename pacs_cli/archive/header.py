"""Read the few header attributes the index and the path layout need, never the pixel data.

Every C-STORE and every file ``pacs index`` visits goes through here, so the common case is a scan of
the file's first bytes (:func:`scan_header`): element headers walked with ``struct``, sequences
skipped, plain ASCII values taken as they are; about a tenth of pydicom's cost, which builds a
dataset to hand back three strings. Whatever the scan does not handle (big-endian, non-ASCII
values, a header larger than the first read, a non-text VR) goes to pydicom:
``dcmread(stop_before_pixels=True, specific_tags=...)`` skips unwanted elements with a seek and stops
at Pixel Data (notes/pynetdicom.md §4.1). Both options are always combined; ``specific_tags`` alone
still reads encapsulated pixel data. The two paths give the same strings (tests/test_header.py).

Deflated files are inflated by us, with a cap, because pydicom inflates the whole stream in one
``zlib.decompress`` call: a few kilobytes can claim gigabytes (a deflate bomb, reliability.md E13).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from pacs_cli.archive.schema import BY_KEYWORD, READ_KEYWORDS
from pacs_cli.vrs import LONG_LENGTH_VR_BYTES, SHORT_LENGTH_VR_BYTES, TEXT_VRS

# Enough for any real header; Pixel Data follows it and is never needed.
DEFLATED_HEADER_CAP = 16 * 1024 * 1024
SCAN_BYTES = 64 * 1024  # what the fast scan reads; headers are a few KB
MAX_NESTING = 32  # sequences in sequences; real objects stay under 10, a hostile one can claim thousands
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


class StagedHead(NamedTuple):
    """The first SCAN_BYTES of a file just written (a received C-STORE's), and the file's size: what
    :func:`scan_header` would read back from it."""

    data: bytes
    size: int


def read_header(path: Path | str, extra_keywords: tuple[str, ...] = (), head: StagedHead | None = None) -> Header:
    """Read the index attributes (and ``extra_keywords``, e.g. a path template's) from a Part 10 file,
    scanning ``head`` when its writer kept it.

    Raises NotDicom, BadHeader, or OSError when the file cannot be read at all. Every hierarchy UID
    (Study, Series, SOP Instance) must be present: without them the instance has no place in the index.
    """
    keywords = tuple(dict.fromkeys(READ_KEYWORDS + tuple(extra_keywords)))
    values = scan_header(path, keywords, head)
    header = Header(values) if values is not None else _read_with_pydicom(path, keywords)
    missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID") if not header[k]]
    if missing:
        raise BadHeader(f"no {', '.join(missing)} in the dataset")
    return header


def _read_with_pydicom(path: Path | str, keywords: tuple[str, ...]) -> Header:
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
    except RecursionError:
        raise BadHeader(f"sequences nested deeper than {MAX_NESTING} levels") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure (ValueError, struct.error, ...)
        raise BadHeader(f"cannot parse the header: {type(exc).__name__}: {exc}") from None
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


# --- the fast scan -------------------------------------------------------------------------------------

INDEX_TEXT_VRS = TEXT_VRS | {"UI"}  # the values the index keeps, as text
INDEX_TEXT_VR_BYTES = frozenset(vr.encode("ascii") for vr in INDEX_TEXT_VRS)
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
META_KEYWORDS = {"TransferSyntaxUID": 0x00020010, "MediaStorageSOPClassUID": 0x00020002}
_TAG_LENGTH = struct.Struct("<HHL")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_LENGTH = struct.Struct("<L")


class _Unscannable(Exception):
    """The fast scan cannot decide this file; pydicom reads it instead."""


def scan_header(path: Path | str, keywords: tuple[str, ...], head: StagedHead | None = None) -> dict[str, str] | None:
    """The values of ``keywords`` from the first SCAN_BYTES of a little-endian Part 10 file (``head``
    when given), or None when pydicom must read it. Raises NotDicom for a DICOMDIR, BadHeader for
    nesting past MAX_NESTING."""
    wanted = _wanted_tags(keywords)
    if wanted is None:
        return None
    if head is None:
        with open(path, "rb") as f:
            head = StagedHead(f.read(SCAN_BYTES), os.fstat(f.fileno()).st_size)
    try:
        return _scan(head.data, keywords, wanted, head.size)
    except (_Unscannable, struct.error):
        return None


@functools.lru_cache(maxsize=16)
def _wanted_tags(keywords: tuple[str, ...]) -> dict[int, str] | None:
    """Tag -> keyword for the dataset's text elements to read; None if one is not text (pydicom's job)."""
    wanted = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if keyword in META_KEYWORDS:
            continue
        if tag is None or dictionary_VR(tag) not in INDEX_TEXT_VRS:
            return None
        wanted[tag] = keyword
    return wanted


def _scan(data: bytes, keywords, wanted: dict[int, str], size: int) -> dict[str, str]:
    if data[128:132] != b"DICM":
        raise _Unscannable
    meta, pos = _scan_meta(data)
    if meta.get(META_KEYWORDS["MediaStorageSOPClassUID"]) == MEDIA_STORAGE_DIRECTORY:
        raise NotDicom("a DICOMDIR, not an instance")
    syntax = meta.get(META_KEYWORDS["TransferSyntaxUID"], "")
    if syntax in ("", ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        raise _Unscannable
    found = _scan_dataset(data, pos, syntax != ImplicitVRLittleEndian, wanted, size)
    values = {keyword: "" for keyword in keywords}
    for keyword, tag in META_KEYWORDS.items():
        if keyword in values:
            values[keyword] = meta.get(tag, "")
    for tag, text in found.items():
        values[wanted[tag]] = _index_text(text)
    return values


def _scan_meta(data: bytes) -> tuple[dict[int, str], int]:
    """The File Meta group (always explicit VR little endian), and where the dataset starts."""
    meta, pos = {}, 132
    while pos + 8 <= len(data):
        group, element, vr, length = _TAG_VR_SHORT.unpack_from(data, pos)
        if group != 0x0002:
            return meta, pos
        pos, length = _value_start(data, pos, vr, length, explicit=True)
        if length == UNDEFINED:
            raise _Unscannable
        if vr == b"UI":
            meta[group << 16 | element] = _text(data, pos, length).strip(" \x00")
        pos += length
    raise _Unscannable


def _scan_dataset(data: bytes, pos: int, explicit: bool, wanted: dict[int, str], size: int) -> dict[int, str]:
    """Top-level values of ``wanted`` tags, walking up to Pixel Data or the end of the file.

    An element whose declared length runs past the end of the file is a truncated object (a sender
    that lost its data, or a hostile length): refused here rather than stored as if whole. The loop
    runs once per element of every stored object, so it does each test once (a VR's header length
    from a table) and takes each wanted text value in place.
    """
    found = {}
    unpack_explicit, unpack_implicit, unpack_length = (
        _TAG_VR_SHORT.unpack_from, _TAG_LENGTH.unpack_from, _LENGTH.unpack_from)
    while pos < size:
        if explicit:
            group, element, vr, length = unpack_explicit(data, pos)
            header = _EXPLICIT_HEADER.get(vr) or _explicit_header(vr)
            if header == 12:
                length = unpack_length(data, pos + 8)[0]
            pos += header
        else:
            group, element, length = unpack_implicit(data, pos)
            vr = None
            pos += 8
        tag = group << 16 | element
        if length == UNDEFINED:
            if tag in PIXEL_TAGS:
                return found
            pos = _walk_sequence(data, pos, explicit and vr != b"UN", None)
            continue
        end = pos + length
        if end > size:
            raise BadHeader(f"element ({group:04X},{element:04X}) declares {length} bytes, "
                            f"{max(size - pos, 0)} are left in the dataset")
        if vr == b"SQ":
            pos = _walk_sequence(data, pos, explicit, end)
            continue
        if tag in wanted:  # text by the dictionary (_wanted_tags): never a sequence in implicit VR
            if explicit and vr not in INDEX_TEXT_VR_BYTES:
                raise _Unscannable
            found[tag] = _text(data, pos, length)
        elif tag in PIXEL_TAGS:
            return found
        elif vr is None and _is_sequence(tag, vr, explicit):
            pos = _walk_sequence(data, pos, explicit, end)
            continue
        pos = end
    return found


# The header length of an explicit VR element by its VR's bytes (PS3.5 7.1.2), for the known VRs.
_EXPLICIT_HEADER = {**dict.fromkeys(LONG_LENGTH_VR_BYTES, 12), **dict.fromkeys(SHORT_LENGTH_VR_BYTES, 8)}


def _explicit_header(vr: bytes) -> int:
    """An unknown VR's header length: a short one if it looks like a VR, else the bytes are not one."""
    if vr.isalpha() and vr.isupper():
        return 8
    raise _Unscannable  # implicit VR where explicit was declared: pydicom sorts that out


def _value_start(data: bytes, pos: int, vr, short_length: int, explicit: bool) -> tuple[int, int]:
    """Where the value of the element at ``pos`` starts, and its length."""
    if not explicit:
        return pos + 8, _TAG_LENGTH.unpack_from(data, pos)[2]
    if (_EXPLICIT_HEADER.get(vr) or _explicit_header(vr)) == 12:
        return pos + 12, _LENGTH.unpack_from(data, pos + 8)[0]
    return pos + 8, short_length


def _walk_sequence(data: bytes, pos: int, explicit: bool, end: int | None) -> int:
    """Walk the sequence whose value starts at ``pos`` (``end``: None for an undefined length) into
    every item, down to the deepest; returns the position after it.

    Iterative, with a depth cap: a hostile dataset nesting sequences thousands deep, with defined or
    undefined lengths, costs a bounded walk and a clear refusal instead of a RecursionError in every
    reader that meets it later. The contents of an undefined-length UN element are implicit VR
    (PS3.5 6.2.2).
    """
    stack = [("sequence", explicit, end)]
    while stack:
        if len(stack) > 2 * MAX_NESTING:
            raise BadHeader(f"sequences nested deeper than {MAX_NESTING} levels")
        kind, nested_explicit, frame_end = stack[-1]
        if frame_end is not None and pos >= frame_end:
            if pos > frame_end:
                raise _Unscannable  # contents overrun their declared length: pydicom's verdict
            stack.pop()
            continue
        group, element, length = _TAG_LENGTH.unpack_from(data, pos)
        tag = group << 16 | element
        if kind == "sequence":
            pos += 8
            if tag == SEQUENCE_END and frame_end is None:
                stack.pop()
            elif tag != ITEM:
                raise _Unscannable
            else:
                stack.append(("item", nested_explicit, None if length == UNDEFINED else pos + length))
        elif tag == ITEM_END and frame_end is None:
            pos += 8
            stack.pop()
        else:
            vr = data[pos + 4:pos + 6]
            pos, length = _value_start(data, pos, vr, struct.unpack_from("<H", data, pos + 6)[0], nested_explicit)
            if length == UNDEFINED:
                stack.append(("sequence", nested_explicit and vr != b"UN", None))
            elif _is_sequence(tag, vr, nested_explicit):
                stack.append(("sequence", nested_explicit, pos + length))
            else:
                pos += length
    return pos


def _is_sequence(tag: int, vr: bytes, explicit: bool) -> bool:
    """Whether a defined-length element is a sequence to walk into; implicit VR asks the dictionary."""
    if explicit:
        return vr == b"SQ"
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private or unknown: opaque bytes
        return False


def _text(data: bytes, pos: int, length: int) -> str:
    value = data[pos:pos + length]
    if len(value) != length or not value.isascii() or b"\x1b" in value:
        raise _Unscannable  # truncated by the read, or a character set to decode (ISO 2022 escapes): pydicom's
    return value.decode("ascii")


def _index_text(text: str) -> str:
    """As :func:`element_text` gives it from pydicom: each value stripped of its padding."""
    if "\\" not in text:
        return text.strip(" \x00")
    return "\\".join(part.strip(" \x00") for part in text.split("\\"))
