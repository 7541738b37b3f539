"""C-FIND identifiers: ``-k`` keys parsed into a pydicom Dataset, and identifiers read back as strings.

Key syntax, one key per ``-k``/``--key`` or per line of ``--keys-file`` (DCMTK's findscu takes the same)::

    KEYWORD=VALUE            PatientName=Doe^J*       a matching key
    (gggg,eeee)=VALUE        (0010,0020)=12345        also gggg,eeee=VALUE and ggggeeee=VALUE
    KEYWORD   or KEYWORD=    StudyDescription         a return key: sent empty, filled by the peer
    SEQ[N].KEY=VALUE         ScheduledProcedureStepSequence[0].Modality=CT
                                                      a key in item N (from 0) of a sequence
    SEQ.KEY=VALUE            the same as SEQ[0].KEY=VALUE
    SEQ       or SEQ=        an empty sequence: return the whole sequence (universal matching)

Paths nest (``A[0].B[1].C=V``); missing items are created empty. Everything after the first ``=`` is
the value, spaces included, so quote it for the shell. ``\\`` separates several values (a list of UIDs).
A later key with the same path replaces an earlier one.

Values are checked here, while the arguments are parsed: dates, times and date-times must be single
values or ranges (``20250101``, ``20250101-20250131``, ``-1200``), UIDs digits and dots, numbers
numbers; a wrong one is a :class:`~pacs_cli.errors.UsageError` (exit 2) naming the key and the form.

Reading identifiers back (:func:`key_texts`) never converts values through pydicom, whose validation
would warn about every wildcard (``C*`` is no valid CS, yet a valid key).
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, decode_bytes, default_encoding
from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import PN_DELIMS, TEXT_VR_DELIMS, VR

from pacs_cli.archive import matching
from pacs_cli.archive.schema import LEVELS
from pacs_cli.errors import UsageError
from pacs_cli.vrs import CHARACTER_SET_VRS, LONG_LENGTH_VR_BYTES, NUMBER_VRS

SYNTAX_HINT = "keys look like PatientName=Doe*, (0010,0020)=123, StudyDate=20250101- or Sequence[0].Keyword=VALUE"
_COMPONENT = re.compile(r"(?P<name>\([^)]*\)?|[^.\[]+)(?:\[(?P<index>[^\]]*)\])?")
_TAG = re.compile(r"\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?|([0-9A-Fa-f]{8})")
_UID = re.compile(r"[0-9.]{1,64}")
_IS = re.compile(r"[+-]?\d{1,12}")
_DS = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
NOT_KEY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "AT"})
FORMS = {  # VR -> (parser of one value, its form, examples)
    "DA": (matching.date_bounds, matching.DATE_FORM,
           "dates are YYYYMMDD; ranges A-B, A- or -B: 20250101-20250131, 20250101-, -20251231"),
    "TM": (matching.time_bounds, matching.TIME_FORM,
           "times are HHMMSS.FFFFFF, left-truncated to HH or HHMM if you like; ranges A-B, A-, -B: 0800-1200"),
    "DT": (matching.datetime_bounds, matching.DATETIME_FORM,
           "date-times are YYYYMMDDHHMMSS.FFFFFF&ZZXX, cut from the right if you like; ranges A-B, A-, -B"),
}


@dataclass(frozen=True)
class Key:
    """One parsed key: the path to the element and its value (``''`` for a return key)."""

    path: tuple[tuple[int, int], ...]  # (tag, item index) per sequence on the way, then (tag, -1)
    value: str
    vr: str

    @property
    def tag(self) -> int:
        return self.path[-1][0]

    @property
    def name(self) -> str:
        """The path written back in key syntax: ``ScheduledProcedureStepSequence[0].Modality``."""
        return ".".join(f"{tag_name(tag)}[{index}]" if index >= 0 else tag_name(tag) for tag, index in self.path)


def tag_name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def parse_key(text: str, where: str = "-k") -> Key:
    """Parse ``PATH[=VALUE]``; a UsageError says what is wrong with which key, and what to write."""
    path_text, _, value = text.partition("=")
    if not path_text.strip():
        raise UsageError(f"{where} {text!r}: no attribute before '='", SYNTAX_HINT)
    components = path_text.strip().split(".")
    path = []
    for position, component in enumerate(components):
        last = position == len(components) - 1
        tag, index = _component(component, text, where)
        vr = _vr(tag, text, where)
        if not last and vr != "SQ":
            raise UsageError(f"{where} {text!r}: {tag_name(tag)} is not a sequence ({vr})",
                             "only sequences take [N] or .KEY after them")
        if last and index is not None and vr != "SQ":
            raise UsageError(f"{where} {text!r}: {tag_name(tag)} is not a sequence ({vr}), so no [N]",
                             SYNTAX_HINT)
        path.append((tag, -1 if last else (index or 0)))
    vr = _vr(path[-1][0], text, where)
    if vr == "SQ" and value:
        raise UsageError(f"{where} {text!r}: {tag_name(path[-1][0])} is a sequence and takes no value",
                         f"give a key inside it, e.g. {tag_name(path[-1][0])}[0].Keyword=VALUE")
    key = Key(tuple(path), value, vr)
    return _checked(key, text, where)


def _component(component: str, text: str, where: str) -> tuple[int, int | None]:
    match = _COMPONENT.fullmatch(component.strip())
    if not match:
        raise UsageError(f"{where} {text!r}: cannot read {component!r}", SYNTAX_HINT)
    name, index = match.group("name"), match.group("index")
    if index is not None and not index.isdigit():
        raise UsageError(f"{where} {text!r}: item number [{index}] is not a number from 0", SYNTAX_HINT)
    return _tag(name, text, where), (int(index) if index is not None else None)


def _tag(name: str, text: str, where: str) -> int:
    tag = tag_for_keyword(name)
    if tag is not None:
        return tag
    match = _TAG.fullmatch(name)
    if match:
        group, element, packed = match.groups()
        return int(packed, 16) if packed else int(group + element, 16)
    if name.startswith("(") or re.fullmatch(r"[0-9A-Fa-f,]+", name):
        raise UsageError(f"{where} {text!r}: bad tag {name!r}",
                         "write a tag as (gggg,eeee) with four hex digits each, e.g. (0010,0010)")
    raise UsageError(f"{where} {text!r}: unknown DICOM keyword {name!r}", _keyword_hint(name))


def _keyword_hint(word: str) -> str:
    """The keyword the user probably meant: a case slip first, then a near spelling."""
    folded = [k for k in keyword_dict if k.lower() == word.lower()]
    close = folded or difflib.get_close_matches(word, list(keyword_dict), n=1, cutoff=0.75)
    if close:
        return f"did you mean {close[0]}?"
    return "keywords are as in PS3.6, e.g. PatientName; or give the tag as (gggg,eeee)"


def _vr(tag: int, text: str, where: str) -> str:
    if tag >> 16 in (0x0000, 0x0002):
        raise UsageError(f"{where} {text!r}: {tag_name(tag)} is a command or file meta element, not a key")
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise UsageError(f"{where} {text!r}: {tag_name(tag)} is not in the DICOM dictionary",
                         "private attributes cannot be keys") from None
    vr = vr.split(" or ")[0]  # 'US or SS': either encodes an empty return key
    if vr in NOT_KEY_VRS:
        raise UsageError(f"{where} {text!r}: {tag_name(tag)} has VR {vr}, which cannot be a C-FIND key")
    return vr


def _checked(key: Key, text: str, where: str) -> Key:
    """Check the value against its VR's form; returns the key with QueryRetrieveLevel upper-cased."""
    value, vr, name = key.value, key.vr, tag_name(key.tag)
    if any(ord(ch) < 0x20 and ch != "\x1b" for ch in value):
        raise UsageError(f"{where} {text!r}: the value holds a control character")
    if key.tag == 0x00080052:  # QueryRetrieveLevel
        level = value.strip().upper()
        if level not in LEVELS:
            raise UsageError(f"{where} {text!r}: QueryRetrieveLevel must be one of {', '.join(LEVELS)}")
        return Key(key.path, level, vr)
    for one in (v.strip(" ") for v in value.split("\\")):
        if one:
            _check_one(one, vr, name, text, where)
    return key


def _check_one(value: str, vr: str, name: str, text: str, where: str) -> None:
    if vr in FORMS:
        parse, form, example = FORMS[vr]
        try:
            if matching.split_range(value, parse, form) is None and not parse(value):
                raise matching.BadKeyValue(f"{value!r} is not a {form} or {form} range")
        except matching.BadKeyValue as exc:
            raise UsageError(f"{where} {text!r}: {name}: {exc}", example) from None
    elif vr == "UI" and not _UID.fullmatch(value):
        raise UsageError(f"{where} {text!r}: {name}: {value!r} is not a UID",
                         "UIDs are digits and dots, no wildcards; list several separated by '\\'")
    elif vr == "IS" and not _IS.fullmatch(value):
        raise UsageError(f"{where} {text!r}: {name}: {value!r} is not an integer")
    elif vr in ("DS", "FL", "FD") and not _DS.fullmatch(value):
        raise UsageError(f"{where} {text!r}: {name}: {value!r} is not a number")
    elif vr in NUMBER_VRS - {"FL", "FD"} and not re.fullmatch(r"[+-]?\d+", value):
        raise UsageError(f"{where} {text!r}: {name}: {value!r} is not an integer")


def read_keys_file(path: Path) -> list[tuple[str, str]]:
    """(key text, where) for each line of a keys file; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read keys file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return [(line.strip(), f"{path}:{number}") for number, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]


def parse_keys(items: Iterable[tuple[str, str]]) -> list[Key]:
    """Parse (text, where) pairs, as from ``-k`` and :func:`read_keys_file`."""
    return [parse_key(text, where) for text, where in items]


def merge(*groups: Iterable[Key]) -> list[Key]:
    """One list of keys in first-seen order; a later key with the same path replaces the earlier."""
    merged: dict[tuple, Key] = {}
    for group in groups:
        for key in group:
            merged[key.path] = key
    return list(merged.values())


def build_identifier(keys: Iterable[Key]) -> Dataset:
    """The identifier Dataset holding ``keys``; sequences and their items are created on the way."""
    ds = Dataset()
    for key in keys:
        _apply(ds, key)
    return ds


def _apply(ds: Dataset, key: Key) -> None:
    target = ds
    for tag, index in key.path[:-1]:
        if tag not in target:
            target.add(DataElement(tag, "SQ", Sequence()))
        items = target[tag].value
        while len(items) <= index:
            items.append(Dataset())
        target = items[index]
    tag = key.tag
    if key.vr == "SQ":
        if tag not in target:
            target.add(DataElement(tag, "SQ", Sequence()))
        return
    target.add(DataElement(tag, key.vr, _element_value(key.value, key.vr), validation_mode=pydicom_config.IGNORE))


def _element_value(value: str, vr: str):
    """Strings stay strings (leading zeros survive); binary numbers become numbers; '' stays empty."""
    if vr not in NUMBER_VRS:
        return value
    if not value:
        return None
    numbers = [float(v) if vr in ("FL", "FD") else int(v) for v in value.split("\\")]
    return numbers if len(numbers) > 1 else numbers[0]


# --- reading identifiers back -------------------------------------------------------------------

_IMPLICIT_HEADER = struct.Struct("<HHL")
_EXPLICIT_HEADER = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<L")
_VR_NAMES = {vr.value.encode("ascii"): vr.value for vr in VR}
UNDEFINED_LENGTH, ITEM_GROUP = 0xFFFFFFFF, 0xFFFE
SPECIFIC_CHARACTER_SET = 0x00080005


def decode_identifier(data: bytes, implicit: bool) -> Dataset:
    """A received Little Endian identifier as the Dataset pydicom's ``read_dataset`` makes of it.

    pydicom reads element by element from a file object, and that was most of ``pacs find``'s CPU
    per match. A flat identifier's elements are sliced from the bytes here into the same raw
    elements, converted (as pydicom's are) only when read; anything of undefined length or an
    unknown VR goes to pydicom, and so do malformed bytes, to fail the way pydicom fails.
    """
    raw = _raw_elements(data, implicit)
    if raw is None:
        from pynetdicom.dsutils import decode

        return decode(BytesIO(data), implicit, True)
    charset = raw.get(SPECIFIC_CHARACTER_SET)
    encoding = default_encoding if charset is None else convert_encodings(convert_raw_data_element(charset).value)
    return _dataset_like(_blank(implicit, encoding if isinstance(encoding, str) else tuple(encoding)), raw)


@functools.lru_cache(maxsize=32)
def _blank(implicit: bool, encoding: str | tuple[str, ...]) -> Dataset:
    """An empty Dataset as pydicom's reader leaves one read with this encoding."""
    ds = Dataset(parent_encoding=default_encoding)
    ds.set_original_encoding(implicit, True, encoding if isinstance(encoding, str) else list(encoding))
    return ds


def _dataset_like(blank: Dataset, raw: dict[BaseTag, RawDataElement]) -> Dataset:
    """A Dataset in ``blank``'s state holding ``raw``: its attributes copied (containers each its own),
    not assigned one by one through ``Dataset.__setattr__``, whose keyword lookups made building a
    dataset cost as much as reading its elements."""
    ds = Dataset.__new__(Dataset)
    state = ds.__dict__
    for name, value in blank.__dict__.items():
        state[name] = copy.copy(value) if isinstance(value, (dict, list, set)) else value
    state["_dict"] = raw
    return ds


def _raw_elements(data: bytes, implicit: bool) -> dict[BaseTag, RawDataElement] | None:
    raw, pos, end = {}, 0, len(data)
    while pos < end:
        if end - pos < 8:
            return None
        if implicit:
            group, number, length = _IMPLICIT_HEADER.unpack_from(data, pos)
            vr, pos = None, pos + 8
        else:
            group, number, code, length = _EXPLICIT_HEADER.unpack_from(data, pos)
            vr, pos = _VR_NAMES.get(code), pos + 8
            if vr is None:
                return None
            if code in LONG_LENGTH_VR_BYTES:
                if end - pos < 4:
                    return None
                length, pos = _LONG_LENGTH.unpack_from(data, pos)[0], pos + 4
        if length == UNDEFINED_LENGTH or group == ITEM_GROUP or pos + length > end:
            return None
        tag = BaseTag(group << 16 | number)
        value = data[pos:pos + length] if length else empty_value_for_VR(vr, raw=True)
        raw[tag] = RawDataElement(tag, vr, length, value, pos, implicit, True)
        pos += length
    return raw


@dataclass(frozen=True)
class Text:
    """One top-level element of a received identifier, its value as one string (values joined by '\\')."""

    tag: int
    keyword: str
    vr: str
    text: str


def key_texts(ds: Dataset, encodings: list[str] | None = None) -> Iterator[Text]:
    """The top-level elements of ``ds`` as strings, decoded with its Specific Character Set.

    Reads the raw bytes (``get_item``) so that pydicom neither validates (and warns about wildcards)
    nor fails on a malformed value. Group lengths are skipped; sequences come with ``text`` ''.
    ``encodings``: those of the enclosing dataset, for the items of a sequence.
    """
    encodings = _encodings(ds, encodings)
    for tag in ds.keys():
        if tag.element == 0:
            continue
        elem = ds.get_item(tag)
        vr = _text_vr(tag, elem.VR)
        yield Text(int(tag), keyword_for_tag(tag) or "", vr, "" if vr == "SQ" else _text(elem.value, vr, encodings))


def _encodings(ds: Dataset, inherited: list[str] | None = None) -> list[str]:
    elem = ds.get_item(SPECIFIC_CHARACTER_SET)
    if elem is None or not elem.value:
        return inherited or convert_encodings(None)
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").split("\\")
    try:
        return convert_encodings([str(v).strip() for v in ([value] if isinstance(value, str) else value)])
    except LookupError:
        return convert_encodings(None)  # an unknown character set: read as the default repertoire


def _text_vr(tag, vr: str | None) -> str:
    if vr and vr not in ("UN",):
        return vr
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return vr or "UN"


def _text(value, vr: str, encodings: list[str]) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        if vr in CHARACTER_SET_VRS:
            text = decode_bytes(value, encodings, PN_DELIMS if vr == "PN" else TEXT_VR_DELIMS)
        elif vr in NUMBER_VRS:
            return ""  # binary numbers are never matched against the index
        else:
            text = value.decode("ascii", "replace")
        return text.strip(" \x00")
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def flatten(ds: Dataset, prefix: str = "", encodings: list[str] | None = None) -> dict[str, str]:
    """Every element as ``path -> text``, paths in key syntax (``Seq[0].Keyword``), values as received.

    Sequences are flattened item by item; the sequence's own entry holds its number of items ('' when
    empty). What tables, CSV and JSON lines print: strings only, so '007' stays '007'.
    """
    encodings = _encodings(ds, encodings)
    flat = {}
    for text in key_texts(ds, encodings):
        name = prefix + (text.keyword or tag_name(text.tag))
        if text.vr != "SQ":
            flat[name] = text.text
            continue
        items = ds[text.tag].value or []
        flat[name] = str(len(items)) if items else ""
        for number, item in enumerate(items):
            flat.update(flatten(item, f"{name}[{number}].", encodings))
    return flat
