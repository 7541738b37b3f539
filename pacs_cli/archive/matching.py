"""C-FIND attribute matching (PS3.4 C.2.2.2) turned into parameterised SQL for the archive index.

:func:`build_query` takes the keys of one C-FIND identifier (keyword -> value as a string) and the
Query/Retrieve level, checks them against the level, and returns a :class:`Query`: one SQL condition
per matching key. The SQL text comes only from :mod:`pacs_cli.archive.schema` and the constants here;
every value from the network is a bound parameter, so ``'``, ``%``, ``_``, ``"`` and ``;--`` in a key
are ordinary characters. :class:`pacs_cli.archive.index.Index` runs the query.

Matching, per key value (after removing padding spaces, PS3.5 6.2):

* empty, or only ``*``: universal matching, no condition (C.2.2.2.3, C.2.2.2.4);
* UI: single value ``=``, or a list of UIDs separated by ``\\``, any of which matches (C.2.2.2.2);
* AE CS LO LT PN SH ST UC UR UT: single value ``=``, or wild card matching with ``*`` and ``?``
  through SQLite's ``GLOB`` (C.2.2.2.4). ``GLOB`` is case-sensitive and knows only ``*``, ``?`` and
  ``[``; ``[`` is escaped as ``[[]``. SQL's ``%`` and ``_`` mean nothing to it. There is no way to
  search for a literal ``*`` or ``?``, as the standard says;
* DA: ``YYYYMMDD``, or a range ``A-B``, ``A-``, ``-B`` (inclusive), compared as stored strings;
* TM: ``HH[MM[SS[.F]]]`` or a range; a partial time in a key stands for its whole span (``10`` is
  10:00:00-10:59:59.999999), a partial stored time for its first instant; never across midnight
  (C.2.2.2.5); the ACR-NEMA ``HH:MM:SS`` form in stored values is understood;
* DT: the same, with the UTC offsets of the key and of stored values taken into account;
* combined date-time matching, when agreed by extended negotiation (C.2.2.2.5): StudyDate+StudyTime
  (and SeriesDate+SeriesTime) with the same form of range are matched as one date-time range;
* IS DS: numerically, so ``7`` matches ``007`` (CP-2305 leaves this to the implementation);
* several values in a non-UI key (``CT\\MR``): any of them may match; an extension, as dcm4chee's
  (CP-282 allows several values in UI keys only).

Case: everything is case-sensitive (C.2.2.2.1) except PN, which is matched case- and
accent-insensitively against the index's ``*_norm`` columns (:func:`schema.normalise_pn` applied to
both sides). A PN key without ``=`` also matches a single component group of a stored
``alphabetic=ideographic=phonetic`` name. Attributes the index keeps with several values
(ModalitiesInStudy, SOPClassesInStudy) match when any stored value matches.

An empty stored value never matches a non-empty key: PS3.4 C.2.2.1.2's "zero length Required Key"
sentence is about the request, not about the database (see dcm4chee-arc-light#100, quoting Clunie).

Hierarchy (C.4.1.1.3.1, hierarchical search): a key of a level *below* the Query/Retrieve level is
refused (:class:`IdentifierError`, 0xA900). Keys of the levels above are matched like any other;
the unique keys above the level are not demanded (DCMTK's dcmqrscp does not either, unless -XF).
Keys the index does not hold are not matched (optional keys may be ignored, C.2.2.1.3).
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.datadict import dictionary_VM, tag_for_keyword

from pacs_cli.archive import schema
from pacs_cli.archive.schema import IMAGE, LEVELS, PATIENT, SERIES, STUDY, Column

TABLE_ALIASES = {PATIENT: "p", STUDY: "st", SERIES: "se", IMAGE: "i"}

# Present in identifiers but never matched: one says what to answer, the other how it is encoded
# (PS3.4 C.2.2.2: "Specific Character Set ... is never matched").
NEVER_MATCHED = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
# C-FIND asks for the File Meta's Transfer Syntax UID (0002,0010) as Available Transfer Syntax UID.
KEY_ALIASES = {"AvailableTransferSyntaxUID": "TransferSyntaxUID"}
NOT_KEYS = frozenset({"TransferSyntaxUID"})  # group 0002 has no place in an identifier
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})  # C.2.2.2.4
TRAILING_ONLY_VRS = frozenset({"LT", "ST", "UT", "UC", "UR"})  # leading spaces significant (PS3.5 6.2)
# Date and time pairs that combined date-time matching joins (C.2.2.2.5).
DATETIME_PAIRS = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"))

# The SQL functions Index registers on each connection (see :func:`sql_functions`).
TIME_FUNCTION, DATETIME_FUNCTION, ANY_FUNCTION = "pacs_time", "pacs_datetime", "pacs_match_any"

_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")
_DATE = re.compile(r"\d{8}")
_DATETIME = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?")
TIME_MIN, TIME_MAX = "000000.000000", "235959.999999"
DATE_FORM, TIME_FORM, DATETIME_FORM = "date", "time", "date-time"
DATE_MIN, DATE_MAX = "00000101", "99991231"


class MatchError(ValueError):
    """A key that cannot be matched; ``str()`` names the key and says what is wrong."""


class IdentifierError(MatchError):
    """The identifier does not fit the Query/Retrieve level (PS3.4 C.4.1.1.3.1): answer 0xA900."""


class BadKeyValue(MatchError):
    """A key value that is not of its VR's form, e.g. a malformed date range: answer 0xC000-0xCFFF."""


@dataclass(frozen=True)
class Condition:
    """One SQL boolean expression over the index's table aliases, with its bound parameters."""

    sql: str
    params: tuple = ()


@dataclass(frozen=True)
class Query:
    """Everything the index needs to answer one C-FIND: the level and the conditions (ANDed)."""

    level: str
    conditions: tuple[Condition, ...] = ()

    @property
    def where(self) -> str:
        return " AND ".join(f"({c.sql})" for c in self.conditions) or "1"

    @property
    def params(self) -> list:
        return [p for c in self.conditions for p in c.params]


def column_for(keyword: str) -> Column | None:
    """The index column a C-FIND key is matched against and returned from; None if the index lacks it."""
    if keyword in NOT_KEYS or keyword in NEVER_MATCHED:
        return None
    return schema.BY_KEYWORD.get(KEY_ALIASES.get(keyword, keyword))


def build_query(level: str, keys: Mapping[str, str], combined_datetime: bool = False) -> Query:
    """Check ``keys`` (keyword -> value, ``''`` for return keys) against ``level`` and build the query.

    Raises IdentifierError for a key below the level, BadKeyValue for a value that cannot be matched.
    """
    if level not in LEVELS:
        raise IdentifierError(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
    columns = {}
    for keyword, value in keys.items():
        column = column_for(keyword)
        if column is None:
            continue
        if LEVELS.index(column.level) > LEVELS.index(level):
            raise IdentifierError(f"{keyword} is a key below the {level} level")
        columns[keyword] = (column, value)
    conditions = []
    if combined_datetime:
        conditions += _combined_conditions(columns)
    for keyword, (column, value) in columns.items():
        condition = key_condition(column, value, keyword)
        if condition is not None:
            conditions.append(condition)
    return Query(level, tuple(conditions))


def key_condition(column: Column, value: str, keyword: str | None = None) -> Condition | None:
    """The condition for one key, or None for universal matching."""
    keyword = keyword or column.keyword
    value = _unpadded(value, column.vr)
    if _is_universal(value):
        return None
    ref = column_ref(column)
    if column.vr == "UI":
        return _uid_list(ref, value, is_multi_valued(column))
    values = [v for v in (_unpadded(v, column.vr) for v in value.split("\\")) if v]
    if not values or any(_is_universal(v) for v in values):
        return None  # one universal value makes the whole key universal
    try:
        return _any_of([_one_value(column, ref, v) for v in values])
    except BadKeyValue as exc:
        raise BadKeyValue(f"{keyword}: {exc}") from None


def column_ref(column: Column) -> str:
    return f"{TABLE_ALIASES[column.level]}.{column.column}"


def _unpadded(value: str, vr: str) -> str:
    value = (value or "").replace("\x00", "")
    return value.rstrip(" ") if vr in TRAILING_ONLY_VRS else value.strip(" ")


def _is_universal(value: str) -> bool:
    """Zero length, or only asterisks (C.2.2.2.3; C.2.2.2.4 makes '*' universal matching too)."""
    return not value or set(value) == {"*"}


def _any_of(conditions: list[Condition]) -> Condition:
    if len(conditions) == 1:
        return conditions[0]
    return Condition(" OR ".join(f"({c.sql})" for c in conditions), tuple(p for c in conditions for p in c.params))


def _one_value(column: Column, ref: str, value: str) -> Condition:
    vr = column.vr
    if vr == "DA":
        return _date(ref, value)
    if vr == "TM":
        return _time(ref, value)
    if vr == "DT":
        return _datetime(ref, value)
    if vr in ("IS", "DS"):
        return _number(ref, value)
    if vr == "PN":
        return _person_name(column, value)
    if is_multi_valued(column):
        return Condition(f"{ANY_FUNCTION}({ref}, ?, ?)", ("\\", value))
    if vr in WILDCARD_VRS and has_wildcards(value):
        return Condition(f"{ref} GLOB ?", (glob_pattern(value),))
    return Condition(f"{ref} = ?", (value,))


# --- UI, text, PN, numbers -----------------------------------------------------------------------

def _uid_list(ref: str, value: str, stored_list: bool = False) -> Condition:
    """C.2.2.2.2: any of the UIDs; one JSON parameter however long the list (no SQL grows with it).

    ``stored_list``: the column itself holds several UIDs (SOPClassesInStudy); any pair may match.
    """
    uids = [uid.strip(" \x00") for uid in value.split("\\")]
    uids = [uid for uid in uids if uid]
    if stored_list:
        return Condition(f"EXISTS (SELECT 1 FROM json_each(?) WHERE instr('\\' || {ref} || '\\', "
                         f"'\\' || value || '\\') > 0)", (json.dumps(uids),))
    if len(uids) == 1:
        return Condition(f"{ref} = ?", (uids[0],))
    return Condition(f"{ref} IN (SELECT value FROM json_each(?))", (json.dumps(uids),))


def has_wildcards(value: str) -> bool:
    return "*" in value or "?" in value


def glob_pattern(value: str) -> str:
    """A DICOM wild card value as a GLOB pattern: '*' and '?' kept, '[' made literal."""
    return value.replace("[", "[[]")


@dataclass(frozen=True)
class _Piece:
    """The stretch of a wild card pattern between two '*': a fixed length, so it never backtracks.

    ``regex`` is set only when the piece holds '?', which matches any one character.
    """

    text: str
    regex: re.Pattern | None

    def at(self, value: str, pos: int) -> bool:
        if self.regex is None:
            return value.startswith(self.text, pos)
        return self.regex.match(value, pos) is not None

    def leftmost_end(self, value: str, start: int, end: int) -> int:
        """Where the leftmost match inside ``value[start:end]`` ends, -1 if there is none."""
        if self.regex is None:
            found = value.find(self.text, start, end)
            return -1 if found < 0 else found + len(self.text)
        match = self.regex.search(value, start, end)
        return -1 if match is None else match.end()


@functools.lru_cache(maxsize=256)
def _pieces(pattern: str) -> tuple[_Piece, ...]:
    return tuple(_Piece(text, re.compile("".join("." if ch == "?" else re.escape(ch) for ch in text), re.DOTALL)
                        if "?" in text else None) for text in pattern.split("*"))


def wildcard_match(value: str, pattern: str) -> bool:
    """DICOM wild card matching (C.2.2.2.4): '*' any run, '?' one character, everything else literal.

    The first and last pieces are anchored; each piece between two '*' is taken at its leftmost place,
    which is always right for '*' patterns. At most len(value) x len(pattern) steps, in C: the regex
    '.*a.*a.*a...b' backtracks for hours on forty 'a's, a denial of service from any C-FIND peer
    (Python's re holds the GIL, so the whole server stops).
    """
    first, *middle = _pieces(pattern)
    if not middle:
        return len(value) == len(first.text) and first.at(value, 0)
    last = middle.pop()
    end = len(value) - len(last.text)
    if end < len(first.text) or not first.at(value, 0) or not last.at(value, end):
        return False
    pos = len(first.text)
    for piece in middle:
        pos = pos if not piece.text else piece.leftmost_end(value, pos, end)
        if pos < 0:
            return False
    return True


def match_any(stored: str | None, separator: str, pattern: str) -> bool:
    """True when any ``separator``-delimited part of ``stored`` matches the DICOM ``pattern``.

    Registered as an SQL function: a wildcard must not run across two stored values (``M*T`` must not
    match ``MR\\PT``), which one GLOB over the joined string would allow.
    """
    if not stored:
        return False
    return any(wildcard_match(part, pattern) for part in stored.split(separator))


def is_multi_valued(column: Column) -> bool:
    """Stored joined with '\\' because PS3.6 allows several values (ModalitiesInStudy...)."""
    tag = tag_for_keyword(column.keyword)
    return column.vr != "PN" and tag is not None and dictionary_VM(tag) not in ("1", "")


def _person_name(column: Column, value: str) -> Condition:
    """Case- and accent-insensitive on the _norm column; also against each component group."""
    norm = f"{TABLE_ALIASES[column.level]}.{column.norm_column}"
    folded = schema.normalise_pn(value)
    groups = f"(instr({norm}, '=') > 0 AND {ANY_FUNCTION}({norm}, '=', ?))"
    if has_wildcards(folded):
        return Condition(f"{norm} GLOB ? OR {groups}", (glob_pattern(folded), folded))
    return Condition(f"{norm} = ? OR {groups}", (folded, folded))


def _number(ref: str, value: str) -> Condition:
    try:
        number = float(value)
    except ValueError:
        raise BadKeyValue(f"{value!r} is not a number") from None
    return Condition(f"{ref} != '' AND CAST({ref} AS REAL) = ?", (number,))


# --- dates and times (C.2.2.2.5) ----------------------------------------------------------------

def split_range(value: str, parse, what: str = "value") -> tuple[str | None, str | None] | None:
    """``(low, high)`` of a range value, None for a single value; each side parsed by ``parse``.

    A DT value may hold a '-' of its own (a UTC offset), so every '-' is tried as the separator and
    the one that leaves two valid (or empty) sides in order wins; a plain ``split('-')`` would not do.
    """
    if "-" not in value:
        return None
    candidates = []
    for i, ch in enumerate(value):
        if ch != "-":
            continue
        low, high = value[:i], value[i + 1:]
        if (low or high) and (not low or parse(low)) and (not high or parse(high)):
            candidates.append((low or None, high or None))
    for low, high in candidates:
        if low is None or high is None or parse(low)[0] <= parse(high)[1]:
            return low, high
    if parse(value):
        return None  # a single DT with a negative UTC offset
    if candidates:
        return candidates[0]  # in the wrong order: a valid range that matches nothing
    raise BadKeyValue(f"{value!r} is not a {what} or {what} range")


def _date(ref: str, value: str) -> Condition:
    bounds = split_range(value, date_bounds, DATE_FORM)
    if bounds is None:
        if not date_bounds(value):
            raise BadKeyValue(f"{value!r} is not a {DATE_FORM} or {DATE_FORM} range")
        return Condition(f"{ref} = ?", (value,))
    low, high = bounds
    return Condition(f"{ref} != '' AND {ref} BETWEEN ? AND ?", (low or DATE_MIN, high or DATE_MAX))


def date_bounds(text: str) -> tuple[str, str] | None:
    return (text, text) if _DATE.fullmatch(text) else None


def _time(ref: str, value: str) -> Condition:
    low, high = _time_range(value)
    return Condition(f"{ref} != '' AND {TIME_FUNCTION}({ref}) BETWEEN ? AND ?", (low, high))


def _time_range(value: str) -> tuple[str, str]:
    bounds = split_range(value, time_bounds, TIME_FORM)
    if bounds is None:
        if not time_bounds(value):
            raise BadKeyValue(f"{value!r} is not a {TIME_FORM} or {TIME_FORM} range")
        return time_bounds(value)
    low, high = bounds
    return (time_bounds(low)[0] if low else TIME_MIN), (time_bounds(high)[1] if high else TIME_MAX)


def time_bounds(text: str) -> tuple[str, str] | None:
    """The first and last instant a (partial) TM value stands for, as sortable 'HHMMSS.ffffff'."""
    match = _TIME.fullmatch(text)
    if not match or (match.group(4) and not match.group(3)):
        return None
    hh, mm, ss, fraction = match.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        return None
    digits = (fraction or ".")[1:]
    low = f"{hh}{mm or '00'}{ss or '00'}.{digits.ljust(6, '0')}"
    high = f"{hh}{mm or '59'}{ss or '59'}.{digits.ljust(6, '9')}"
    return low, high


def time_key(value: str | None) -> str | None:
    """A stored TM as 'HHMMSS.ffffff' (its first instant), None if it is not a time.

    Registered as an SQL function. Accepts the ACR-NEMA 'HH:MM:SS' form that old files still carry.
    """
    if not value:
        return None
    bounds = time_bounds(value.strip().replace(":", ""))
    return bounds[0] if bounds else None


def _datetime(ref: str, value: str) -> Condition:
    bounds = split_range(value, datetime_bounds, DATETIME_FORM)
    if bounds is None:
        if not datetime_bounds(value):
            raise BadKeyValue(f"{value!r} is not a {DATETIME_FORM} or {DATETIME_FORM} range")
        low, high = datetime_bounds(value)
    else:
        low = datetime_bounds(bounds[0])[0] if bounds[0] else DATE_MIN + TIME_MIN
        high = datetime_bounds(bounds[1])[1] if bounds[1] else DATE_MAX + TIME_MAX
    return Condition(f"{ref} != '' AND {DATETIME_FUNCTION}({ref}) BETWEEN ? AND ?", (low, high))


def datetime_bounds(text: str) -> tuple[str, str] | None:
    """First and last instant of a (partial) DT value as 'YYYYMMDDHHMMSS.ffffff', in UTC if it has an offset."""
    match = _DATETIME.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    parts = [month, day, hour, minute, second]
    if any(parts[i] is None and parts[i + 1] is not None for i in range(4)) or (fraction and not second):
        return None  # components may only be left off from the right
    try:
        low = _instant(year, month or "01", day or "01", hour or "00", minute or "00", second or "00",
                       (fraction or ".")[1:].ljust(6, "0"), offset)
        last_day = day or str(calendar.monthrange(int(year), int(month or 12))[1])
        high = _instant(year, month or "12", last_day, hour or "23", minute or "59", second or "59",
                        (fraction or ".")[1:].ljust(6, "9"), offset)
    except (ValueError, OverflowError):  # 30 February; an offset that leaves the calendar
        return None
    return low, high


def _instant(year, month, day, hour, minute, second, micro, offset) -> str:
    second = min(int(second), 59)  # a leap second sorts with the second before it
    moment = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), second, int(micro))
    if offset:
        sign = -1 if offset[0] == "-" else 1
        moment -= sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    # Not strftime: '%Y' is not zero-padded below the year 1000 on every platform.
    return (f"{moment.year:04d}{moment.month:02d}{moment.day:02d}{moment.hour:02d}{moment.minute:02d}"
            f"{moment.second:02d}.{moment.microsecond:06d}")


def datetime_key(value: str | None) -> str | None:
    """A stored DT as sortable UTC 'YYYYMMDDHHMMSS.ffffff' (first instant); None if not a date-time."""
    if not value:
        return None
    bounds = datetime_bounds(value.strip())
    return bounds[0] if bounds else None


def _combined_conditions(columns: dict) -> list[Condition]:
    """C.2.2.2.5 combined date-time matching: a date range and a time range of the same form as one.

    Each pair used here is removed from ``columns`` so it is not also matched separately. A stored
    entity without a time is matched on its date alone.
    """
    conditions = []
    for date_kw, time_kw in DATETIME_PAIRS:
        if date_kw not in columns or time_kw not in columns:
            continue
        (date_col, date_value), (time_col, time_value) = columns[date_kw], columns[time_kw]
        date_value, time_value = _unpadded(date_value, "DA"), _unpadded(time_value, "TM")
        try:
            dates, times = split_range(date_value, date_bounds), split_range(time_value, time_bounds)
        except BadKeyValue:
            continue  # matched separately below, where the error names the key
        if dates is None or times is None or [d is None for d in dates] != [t is None for t in times]:
            continue  # not the same form of range: matched independently
        low = (dates[0] + time_bounds(times[0])[0]) if dates[0] else DATE_MIN + TIME_MIN
        high = (dates[1] + time_bounds(times[1])[1]) if dates[1] else DATE_MAX + TIME_MAX
        d, t = column_ref(date_col), column_ref(time_col)
        conditions.append(Condition(
            f"{d} != '' AND CASE WHEN {t} = '' THEN {d} BETWEEN ? AND ? "
            f"ELSE {d} || {TIME_FUNCTION}({t}) BETWEEN ? AND ? END",
            (low[:8], high[:8], low, high)))
        del columns[date_kw], columns[time_kw]
    return conditions


def sql_functions() -> list[tuple[str, int, object]]:
    """(name, number of arguments, function) for ``sqlite3.Connection.create_function``."""
    return [(TIME_FUNCTION, 1, time_key), (DATETIME_FUNCTION, 1, datetime_key), (ANY_FUNCTION, 3, match_any)]
