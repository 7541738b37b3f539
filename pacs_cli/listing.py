"""Read DICOM files and list their elements: dcmdump-style text, or the DICOM JSON model (PS3.18 Annex F).

The library behind ``pacs dump``; it never imports click or rich. A file is read without its Pixel Data
unless that is asked for (``stop_before_pixels``), so dumping a 2 GB multi-frame costs what its header
costs; the element the read stopped before is still described from its 8-12 header bytes. Every value
is decoded once, up front, so pydicom's warnings can name the element they are about and a value that
cannot be decoded never aborts the listing. A file that cannot be read at all is logged as one line
naming the file and the problem, and the other files are still dumped.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import stat
import struct
import textwrap
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import datadict, dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from pacs_cli.errors import OperationFailed, UsageError
from pacs_cli.vrs import BINARY_VRS, LONG_LENGTH_VRS, NUMBER_VRS

log = logging.getLogger("pacs_cli.dump")

UNDEFINED = 0xFFFFFFFF
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float and (plain) Pixel Data
VALUE_WIDTH = 64  # characters of a value shown before "..." unless --full; dcmdump cuts about there too
COMMENT_COLUMN = 56  # where "# length, VM Keyword" starts, as in dcmdump
BULK_THRESHOLD = 1024  # bytes: larger binary values are bulk data in JSON (pydicom's default threshold)
ENCODINGS = {(True, True): "Implicit VR Little Endian", (False, True): "Explicit VR Little Endian",
             (False, False): "Explicit VR Big Endian"}


class UnreadableFile(Exception):
    """A file that cannot be dumped; the message says why, in words a user can act on."""


@dataclass(frozen=True)
class DumpSpec:
    """What ``pacs dump`` was asked for, decided once from the command line."""

    format: str = "text"  # "text" or "json"
    tags: frozenset[int] = frozenset()  # only these elements (and the sequences holding them); empty: all
    full: bool = False  # long values in full instead of cut at VALUE_WIDTH
    pixel_data: bool = False  # read Pixel Data (and whatever follows it) instead of stopping before it
    bulk: bool = False  # JSON: binary values inline (base64) instead of a BulkDataURI
    recursive: bool = False


@dataclass
class Node:
    """One decoded element with what the listing needs that pydicom forgets once a value is decoded."""

    elem: DataElement
    length: int | None  # value length in the file; UNDEFINED for undefined length; None if unknown
    offset: int | None  # where the value starts in the file, if known
    items: list[list[Node]] = field(default_factory=list)  # a sequence's items, each a list of nodes


@dataclass(frozen=True)
class Unread:
    """The element ``stop_before_pixels`` stopped at, described from its header alone."""

    tag: int
    vr: str
    length: int
    offset: int  # of the value, from the start of the file


@dataclass
class DicomFile:
    """A file read and decoded: file meta (group 0002) and data set as nodes, plus the unread tail."""

    path: Path
    transfer_syntax: str  # a name for the listing's header, e.g. "Explicit VR Little Endian"
    has_meta: bool
    meta: list[Node]
    elements: list[Node]
    unread: Unread | None
    offsets_valid: bool  # False for a deflated data set: pydicom's offsets are then into the inflated bytes


# --- command-line syntax ------------------------------------------------------------------------------

_TAG = re.compile(r"^\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)$|^([0-9A-Fa-f]{8})$")


def parse_tags(text: str) -> list[int]:
    """Turn ``PatientName,(0010,0020)`` into tags; a usage error names the bad item and suggests a fix.

    Commas inside ``(gggg,eeee)`` do not split, so keywords and tags mix freely in one value.
    """
    items = [item.strip() for item in re.findall(r"\([^)]*\)?|[^,(]+", text)]
    tags = [_parse_tag(item) for item in items if item]
    if not tags:
        raise UsageError(f"no tag in {text!r}", hint="give keywords such as PatientName or tags such as (0010,0010)")
    return tags


def _parse_tag(item: str) -> int:
    match = _TAG.match(item)
    if match:
        group, element, packed = match.groups()
        return int(packed, 16) if packed else int(group + element, 16)
    if item.startswith("(") or re.fullmatch(r"[0-9A-Fa-f,]+", item):
        raise UsageError(f"bad tag {item!r}",
                         hint="write a tag as (gggg,eeee) with four hex digits each, e.g. (0010,0010)")
    tag = datadict.tag_for_keyword(item)
    if tag is None:
        raise UsageError(f"unknown DICOM keyword {item!r}", hint=_keyword_hint(item))
    return tag


def _keyword_hint(word: str) -> str:
    """Suggest the keyword the user probably meant: case slips first, then near spellings."""
    keywords = list(datadict.keyword_dict)
    folded = [k for k in keywords if k.lower() == word.lower()]
    close = folded or difflib.get_close_matches(word, keywords, n=1, cutoff=0.75)
    if close:
        return f"did you mean {close[0]}?"
    return "keywords are as in PS3.6, e.g. PatientName; or give the tag as (gggg,eeee)"


def find_files(paths: Sequence[Path], recursive: bool) -> Iterator[Path | OSError]:
    """Check the arguments now (a directory without -r is a usage error), then walk them lazily.

    Yields the files to dump in a stable order; a directory that cannot be listed is yielded as its
    OSError, so that it counts as a failure without stopping the walk.
    """
    directories = [path for path in paths if path.is_dir()]
    if directories and not recursive:
        raise UsageError(f"{directories[0]} is a directory", hint="add -r/--recursive to dump the files under it")
    return _walk(paths)


def _walk(paths: Sequence[Path]) -> Iterator[Path | OSError]:
    for path in paths:
        if not path.is_dir():
            yield path
            continue
        errors: list[OSError] = []
        for root, dirs, files in os.walk(path, onerror=errors.append):
            yield from errors
            errors.clear()
            dirs.sort()
            yield from (Path(root, name) for name in sorted(files))
        yield from errors


# --- reading --------------------------------------------------------------------------------------------

def read_file(path: Path, pixel_data: bool = False) -> DicomFile:
    """Read and decode one file, or raise UnreadableFile saying why (not DICOM, truncated, ...)."""
    size = _regular_file_size(path)
    try:
        with open(path, "rb") as fp, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds, has_meta = _parse(fp, pixel_data)
            unread = None if pixel_data else _peek_unread(fp, ds)
    except OSError as exc:
        raise UnreadableFile(_os_problem(exc)) from exc
    _check_complete(ds, unread, size)
    seen: set[str] = set()  # pydicom may repeat a warning when a value is decoded; say it once
    _log_warnings(path, caught, seen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # decoding warns per element; anything else is caught here
        syntax = _transfer_syntax(ds)
        if not has_meta:
            log.warning("%s: no DICOM file meta information ('DICM' missing at byte 128); read as a bare "
                        "data set in %s", path, syntax)
        meta = _decode(ds.file_meta, path, seen) if has_meta else []
        dfile = DicomFile(path, syntax, has_meta, meta, _decode(ds, path, seen), unread,
                          offsets_valid=not _deflated(ds))
    _log_warnings(path, caught, seen)
    return dfile


def _regular_file_size(path: Path) -> int:
    """Refuse what is not a readable regular file before opening it: a FIFO would block the read."""
    try:
        info = path.stat()
    except OSError as exc:
        raise UnreadableFile(_os_problem(exc)) from exc
    if stat.S_ISDIR(info.st_mode):
        raise UnreadableFile("is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableFile("not a regular file")
    if info.st_size == 0:
        raise UnreadableFile("empty file")
    return info.st_size


def _os_problem(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if isinstance(exc.errno, int) else str(exc)


def _parse(fp, pixel_data: bool) -> tuple[Dataset, bool]:
    """dcmread, and force=True only to tell a bare data set (dcmdump reads those) from a non-DICOM file."""
    try:
        return dcmread(fp, stop_before_pixels=not pixel_data), True
    except InvalidDicomError:
        pass
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input
        raise UnreadableFile(_parse_problem(exc)) from exc
    fp.seek(0)
    try:
        ds = dcmread(fp, force=True, stop_before_pixels=not pixel_data)
    except Exception:  # noqa: BLE001 - a forced read of a non-DICOM file fails in many ways
        ds = None
    if ds is None or not _looks_like_data_set(ds):
        raise UnreadableFile("not a DICOM file (no 'DICM' prefix at byte 128, and it does not start with a data set)")
    return ds, False


def _parse_problem(exc: Exception) -> str:
    """Name the usual ways a corrupt file fails inside pydicom in terms of the file, not of pydicom."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError | struct.error | BytesLengthException) or "No tag to read" in text:
        return f"truncated or corrupt ({text})"
    if type(exc).__name__ == "error" and type(exc).__module__ == "zlib":
        return f"the deflated data set is truncated or corrupt ({text})"
    return f"cannot be parsed: {text}"


def _looks_like_data_set(ds: Dataset) -> bool:
    """A bare data set starts with a known tag in groups 0002-0008; text or images start with anything."""
    first = next(iter(ds.keys()), None)
    if first is None or not 0x0002 <= first.group <= 0x0008 or first.is_private:
        return False  # group 0000 too: a run of zero bytes reads as (0000,0000) elements
    return first.element == 0 or datadict.dictionary_has_tag(first)


def _peek_unread(fp, ds: Dataset) -> Unread | None:
    """Describe the Pixel Data element that stop_before_pixels left unread, from its header bytes."""
    implicit, little = _encoding_read(ds)
    if implicit is None or _deflated(ds):
        return None  # a deflated file's position is in the compressed stream: nothing to peek at
    start = fp.tell()
    header = fp.read(12)
    if len(header) < 8:
        return None
    endian = "<" if little else ">"
    group, element = struct.unpack(endian + "HH", header[:4])
    tag = group << 16 | element
    if tag not in PIXEL_TAGS:
        return None
    if implicit:
        (length,), size = struct.unpack(endian + "L", header[4:8]), 8
        # PS3.5 A.1 and A.4: native Pixel Data in implicit VR is OW, encapsulated (undefined length) OB.
        vr = datadict.dictionary_VR(tag) if tag != 0x7FE00010 else "OB" if length == UNDEFINED else "OW"
    elif header[4:6].decode("latin-1") in LONG_LENGTH_VRS:
        if len(header) < 12:
            return None
        vr = header[4:6].decode("latin-1")
        (length,), size = struct.unpack(endian + "L", header[8:12]), 12
    else:
        vr = header[4:6].decode("latin-1")
        (length,), size = struct.unpack(endian + "H", header[6:8]), 8
    return Unread(tag, vr, length, start + size)


def _encoding_read(ds: Dataset) -> tuple[bool | None, bool | None]:
    """(implicit VR, little endian) as pydicom actually read the data set: when the transfer syntax
    says explicit but the data is implicit, pydicom switches and warns, and only its raw elements know."""
    for tag in reversed(ds.keys()):
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement):
            return raw.is_implicit_VR, raw.is_little_endian
    return tuple(ds.original_encoding)


def _check_complete(ds: Dataset, unread: Unread | None, size: int) -> None:
    """Catch truncation pydicom lets pass silently: a value shorter than its length says the file was cut."""
    _check_meta_complete(ds, size)
    for elements in (ds.file_meta, ds):
        for tag in elements.keys():
            raw = elements.get_item(tag)
            if isinstance(raw, RawDataElement) and raw.length != UNDEFINED and raw.value is not None \
                    and len(raw.value) < raw.length:
                raise UnreadableFile(f"truncated: the file ends inside {_described(tag)} "
                                     f"({len(raw.value)} of {raw.length} bytes)")
    if unread and unread.length != UNDEFINED and unread.offset + unread.length > size:
        raise UnreadableFile(f"truncated: the file ends inside {_described(unread.tag)} "
                             f"({max(0, size - unread.offset)} of {unread.length} bytes)")


def _check_meta_complete(ds: Dataset, size: int) -> None:
    """pydicom decodes the file meta while reading, so its raw lengths are gone; PS3.10 7.1's group
    length, counted from after the 128-byte preamble, 'DICM' and the group length element itself,
    says where the meta must end."""
    meta = getattr(ds, "file_meta", None)
    if getattr(ds, "preamble", None) is None or meta is None or "FileMetaInformationGroupLength" not in meta:
        return
    length = meta.FileMetaInformationGroupLength
    if not isinstance(length, int):
        raise UnreadableFile("truncated: the file ends inside (0002,0000) FileMetaInformationGroupLength")
    if 144 + length > size:
        raise UnreadableFile(f"truncated: the file ends inside the file meta information "
                             f"({max(0, size - 144)} of {length} bytes)")


def _meta_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _deflated(ds: Dataset) -> bool:
    syntax = UID(_meta_syntax(ds) or "")
    return syntax.is_transfer_syntax and syntax.is_deflated


def _transfer_syntax(ds: Dataset) -> str:
    """The data set's transfer syntax by name; for a bare data set, the encoding pydicom found."""
    uid = _meta_syntax(ds)
    if uid:
        return UID(uid).name
    return ENCODINGS.get(tuple(_encoding_read(ds)), "unknown encoding")


def _decode(ds: Dataset, path: Path, seen: set[str], base: int = 0) -> list[Node]:
    """Decode every element once, so warnings name their element and bad values degrade to bytes.

    pydicom parses the items of a sequence of defined length from a copy of its value, so the offsets
    it records there count from the start of that value (items of undefined length are read in place):
    ``base`` adds them back up to offsets in the file.
    """
    nodes = []
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                elem = ds[tag]
            except Exception as exc:  # noqa: BLE001 - one bad value must not hide the others
                elem = _undecodable(ds, tag, raw, path, exc)
        _log_warnings(path, caught, seen, f"{_described(tag)}: ")
        offset = None if elem.file_tell is None else base + elem.file_tell
        node = Node(elem, _length(raw, elem), offset)
        if elem.VR == "SQ":
            inner = base if node.length == UNDEFINED else offset
            node.items = [_decode(item, path, seen, inner or 0) for item in elem.value]
        nodes.append(node)
    return nodes


def _undecodable(ds: Dataset, tag: BaseTag, raw, path: Path, exc: Exception) -> DataElement:
    """Keep a value pydicom cannot decode as its raw bytes (VR UN), and say so."""
    reason = str(exc).split(". ")[0]  # the rest is advice about pydicom's config, not about the file
    log.warning("%s: %s: cannot decode the %s value, shown as UN bytes (%s)", path, _described(tag),
                getattr(raw, "VR", None) or "unknown VR", reason)
    elem = DataElement(tag, "UN", raw.value if isinstance(raw.value, bytes) else b"")
    elem.VR = "UN"  # the constructor puts back the dictionary VR of a known tag
    ds[tag] = elem
    return elem


def _length(raw, elem: DataElement) -> int | None:
    """The value length as written in the file; pydicom keeps it only until a value is decoded."""
    if isinstance(raw, RawDataElement):
        return raw.length
    if elem.VR == "SQ":
        return UNDEFINED if elem.is_undefined_length else None
    return _encoded_length(elem)


def _encoded_length(elem: DataElement) -> int | None:
    """Length of an element pydicom decoded during the read (file meta, Specific Character Set)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    try:
        write_data_element(fp, elem)
    except Exception:  # noqa: BLE001 - an odd value only costs us its length column
        return None
    return len(fp.getvalue()) - 8  # implicit VR header: tag and 4-byte length


_SEE_PS35 = re.compile(r"\s*Please see <[^>]*> for allowed values for each VR\.?")


def _log_warnings(path: Path, caught: Iterable[warnings.WarningMessage], seen: set[str], where: str = "") -> None:
    """pydicom warns about the file (bad values, wrong VR); say which file and element, once per message."""
    for item in caught:
        if not issubclass(item.category, UserWarning) or issubclass(item.category, DeprecationWarning):
            continue
        message = _SEE_PS35.sub("", str(item.message))
        if message not in seen:
            seen.add(message)  # without the element: the same bad UID in ten items is one warning
            log.warning("%s: %s%s", path, where, message)


# --- selection ------------------------------------------------------------------------------------------

def _selected(nodes: list[Node], tags: frozenset[int]) -> Iterator[tuple[Node, frozenset[int]]]:
    """The nodes to show, each with the filter for its items: a match shows whole, a sequence holding
    a match shows only the path to it, so ``--tags ReferencedSOPInstanceUID`` finds nested values."""
    for node in nodes:
        if not tags or node.elem.tag in tags:
            yield node, frozenset()
        elif node.items and _holds(node, tags):
            yield node, tags


def _holds(node: Node, tags: frozenset[int]) -> bool:
    return any(child.elem.tag in tags or _holds(child, tags) for item in node.items for child in item)


# --- text -----------------------------------------------------------------------------------------------

def text_lines(dfile: DicomFile, spec: DumpSpec) -> list[str]:
    """The dcmdump-style listing of one file: file meta first, then the data set, nested items indented."""
    lines = [f"# File: {dfile.path}"]
    sections = [("Dicom-Data-Set", dfile.transfer_syntax, dfile.elements)]
    if dfile.has_meta:  # PS3.10 7.1: the file meta is always Explicit VR Little Endian
        sections.insert(0, ("Dicom-Meta-Information-Header", "Explicit VR Little Endian", dfile.meta))
    for title, syntax, nodes in sections:
        if not spec.tags:  # a filtered listing is for reading values, not for the file's layout
            lines += ["", f"# {title}", f"# Used TransferSyntax: {syntax}"]
        lines += _node_lines(nodes, spec.tags, spec, depth=0)
    if dfile.unread and (not spec.tags or dfile.unread.tag in spec.tags):
        lines.append(_unread_line(dfile.unread))
    return lines


def _node_lines(nodes: list[Node], tags: frozenset[int], spec: DumpSpec, depth: int) -> list[str]:
    lines = []
    for node, inner in _selected(nodes, tags):
        lines.append(_line(node, depth, spec))
        for number, item in enumerate(node.items, 1):
            lines.append(f"{'  ' * (depth + 1)}(FFFE,E000) na (Item #{number} with {_count(len(item), 'element')})")
            lines += _node_lines(item, inner, spec, depth + 2)
    return lines


def _line(node: Node, depth: int, spec: DumpSpec) -> str:
    elem = node.elem
    try:
        value = _value_text(node, spec.full)
    except Exception as exc:  # noqa: BLE001 - a value we cannot show must not hide the rest
        value = f"(cannot show the value: {exc})"
    return _columns(depth, elem.tag, elem.VR, value, node.length, elem.VM, _name(elem))


def _unread_line(unread: Unread) -> str:
    name = datadict.keyword_for_tag(unread.tag)
    return _columns(0, unread.tag, unread.vr, "(not loaded; use --pixel-data)", unread.length, 1, name)


def _columns(depth: int, tag: int, vr: str, value: str, length: int | None, vm: int, name: str) -> str:
    """dcmdump's layout: tag, VR, value, then '# length, VM Keyword' from column 56."""
    indent = "  " * depth
    head = f"{indent}{_label(tag)} {vr} {value}"
    shown = "u/l" if length == UNDEFINED else "?" if length is None else str(length)
    padding = " " * max(0, len(indent) + COMMENT_COLUMN - 1 - _width(head))
    return f"{head}{padding} # {shown:>3}, {vm} {name}"


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two, so Japanese names do not push the comments out."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _label(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _described(tag: int) -> str:
    """A tag with its keyword, for messages: '(7FE0,0010) PixelData'."""
    keyword = datadict.keyword_for_tag(tag)
    return f"{_label(tag)} {keyword}" if keyword else _label(tag)


def _name(elem: DataElement) -> str:
    return elem.keyword or elem.name


def _value_text(node: Node, full: bool) -> str:
    """A value as dcmdump shows it: text in [], numbers bare, bytes in hex, all values split by \\."""
    elem, limit = node.elem, None if full else VALUE_WIDTH
    if elem.VR == "SQ":
        return f"(Sequence with {_count(len(node.items), 'item')})"
    if elem.tag in PIXEL_TAGS:
        return _pixel_summary(node)
    if elem.is_empty:
        return "(no value available)"
    if isinstance(elem.value, bytes | bytearray):
        return _hex(elem.value, limit)
    values = list(elem.value) if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
    if elem.VR == "AT":
        return _clip("\\".join(_label(Tag(v)) for v in values), limit)
    if elem.VR in NUMBER_VRS:
        return _clip("\\".join(_number(v, elem.VR) for v in values), limit)
    return "[" + _clip("\\".join(_printable(str(v)) for v in values), limit) + "]"


def _pixel_summary(node: Node) -> str:
    """Pixel data in one phrase: its size, and for encapsulated data the number of fragments."""
    value = node.elem.value
    if node.length != UNDEFINED:
        return f"(pixel data, {len(value)} bytes)"
    try:
        items = sum(1 for _ in generate_fragments(value))
    except Exception:  # noqa: BLE001 - a malformed pixel sequence still has a size
        return f"(encapsulated pixel data, {len(value)} bytes)"
    # PS3.5 A.4: the first item is the Basic Offset Table (maybe empty); the fragments follow it.
    return f"(encapsulated pixel data, {_count(max(0, items - 1), 'fragment')}, {len(value)} bytes)"


def _hex(value: bytes, limit: int | None) -> str:
    """Bytes as dcmdump shows OB: 00\\01\\...; cut on a byte boundary."""
    if limit is not None and len(value) * 3 - 1 > limit:
        return "\\".join(f"{byte:02x}" for byte in value[: (limit - 3) // 3]) + "..."
    return "\\".join(f"{byte:02x}" for byte in value)


def _number(value, vr: str) -> str:
    if isinstance(value, float) and vr == "FL":
        return _float32(value)
    return str(value)


def _float32(value: float) -> str:
    """The shortest text that reads back as the same 32-bit float: 0.3, not 0.30000001192092896."""
    if not math.isfinite(value):
        return str(value)
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.pack("<f", float(text)) == packed:
            return text
    return repr(value)


# Control characters (CR, LF, ESC...) would break the one-line-per-element layout or drive the terminal.
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]}
_CONTROLS.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})


def _printable(text: str) -> str:
    return text.translate(_CONTROLS)


def _clip(text: str, limit: int | None) -> str:
    if limit is not None and len(text) > limit:
        return text[: limit - 3] + "..."
    return text


# --- JSON -----------------------------------------------------------------------------------------------

def json_object(dfile: DicomFile, spec: DumpSpec) -> dict:
    """One file as a DICOM JSON object (PS3.18 F.2), file meta included; bulk data as BulkDataURI."""
    writer = _JsonWriter(dfile, spec)
    obj = writer.dataset(dfile.meta + dfile.elements, spec.tags)
    unread = dfile.unread
    if unread and (not spec.tags or unread.tag in spec.tags):
        length = None if unread.length == UNDEFINED else unread.length
        obj[f"{unread.tag:08X}"] = {"vr": unread.vr, "BulkDataURI": writer.uri(unread.offset, length)}
    return dict(sorted(obj.items()))  # PS3.18 F.2.2: attributes in ascending order of tag


@dataclass
class _JsonWriter:
    """Walks the nodes of one file; knows the file so it can name it in warnings and bulk data URIs."""

    dfile: DicomFile
    spec: DumpSpec

    def dataset(self, nodes: list[Node], tags: frozenset[int]) -> dict:
        obj = {}
        for node, inner in _selected(nodes, tags):
            if node.elem.tag.element == 0:
                continue  # PS3.18 F.2.2: group length attributes are not included
            try:
                obj[f"{node.elem.tag:08X}"] = self.element(node, inner)
            except Exception as exc:  # noqa: BLE001 - pydicom's to_json_dict raises on invalid values
                log.warning("%s: %s: left out of the JSON (%s)", self.dfile.path, _described(node.elem.tag), exc)
        return obj

    def element(self, node: Node, tags: frozenset[int]) -> dict:
        elem = node.elem
        if elem.VR == "SQ":
            return {"vr": "SQ", "Value": [self.dataset(item, tags) for item in node.items]}
        if self._is_bulk(node) and not self.spec.bulk:
            return {"vr": elem.VR, "BulkDataURI": self._element_uri(node)}
        # An invalid number (IS '1A') raises here and the element is left out with a warning: PS3.18
        # would allow the string, but pydicom's Dataset.from_json could then not load the object at all.
        result = elem.to_json_dict(None, BULK_THRESHOLD)
        if "Value" in result:
            result["Value"] = [_finite(v) for v in result["Value"]]
        return result

    def _is_bulk(self, node: Node) -> bool:
        elem = node.elem
        if elem.tag in PIXEL_TAGS:
            return not elem.is_empty
        return elem.VR in BINARY_VRS and isinstance(elem.value, bytes) and len(elem.value) > BULK_THRESHOLD

    def _element_uri(self, node: Node) -> str:
        length = None if node.length in (None, UNDEFINED) else node.length
        return self.uri(node.offset, length)

    def uri(self, offset: int | None, length: int | None) -> str:
        """Where the bytes are: the file, and dcm4che's '#offset=,length=' fragment when offsets hold."""
        base = self.dfile.path.resolve().as_uri()
        if offset is None or not self.dfile.offsets_valid:
            return base
        return f"{base}#offset={offset}" + (f",length={length}" if length is not None else "")


def _finite(value):
    """JSON has no NaN or Infinity; write them as the strings Python and JavaScript read back."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _json_text(dfile: DicomFile, spec: DumpSpec) -> str:
    """One attribute per line: as readable and greppable as the text listing, and still one JSON value."""
    obj = json_object(dfile, spec)
    lines = [f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in obj.items()]
    return "{\n" + ",\n".join(lines) + "\n}" if lines else "{}"


# --- the dump -------------------------------------------------------------------------------------------

def dump(paths: Sequence[Path], spec: DumpSpec) -> Iterator[str]:
    """Yield the listing of every file, chunk by chunk; log each unreadable file as one line.

    Text: the files one after another, a blank line between them. JSON: one FILE argument gives its
    object; several files or a directory give an array of objects, unreadable files left out.
    After the last file, raises OperationFailed if any file could not be read (exit 1).
    """
    files = find_files(paths, spec.recursive)
    as_array = spec.format == "json" and not (len(paths) == 1 and not paths[0].is_dir())
    render = _json_text if spec.format == "json" else _text
    total = failed = written = 0
    for item in files:
        total += 1
        text = _render_one(item, spec, render)
        if text is None:
            failed += 1
            continue
        yield _framed(text, written, spec, as_array)
        written += 1
    if as_array:
        yield "[]\n" if not written else "\n]\n"
    if failed:
        raise OperationFailed(f"{failed} of {total} files could not be read")


def _text(dfile: DicomFile, spec: DumpSpec) -> str:
    return "\n".join(text_lines(dfile, spec))


def _render_one(item: Path | OSError, spec: DumpSpec, render) -> str | None:
    """One file's listing, or None after logging why it could not be read; never raises for the file."""
    if isinstance(item, OSError):
        log.error("%s: %s", item.filename or "?", _os_problem(item))
        return None
    try:
        return render(read_file(item, spec.pixel_data or spec.bulk), spec)
    except UnreadableFile as exc:
        log.error("%s: %s", item, exc)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one odd file must not stop the rest
        log.error("%s: unexpected %s: %s", item, type(exc).__name__, exc)
    return None


def _framed(text: str, index: int, spec: DumpSpec, as_array: bool) -> str:
    """Join the files: a JSON array opens with its first object (so no file read gives '[]')."""
    if as_array:
        return ("[\n" if index == 0 else ",\n") + textwrap.indent(text, "  ")
    if spec.format == "json":
        return text + "\n"
    return ("\n" if index else "") + text + "\n"
