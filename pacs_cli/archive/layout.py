"""Where an instance's file goes in the archive, derived safely from whatever its identifiers hold.

Path templates
--------------
A template is a relative path whose ``{Keyword}`` fields are DICOM keywords, filled from the dataset:

* ``hierarchical`` (the default): ``{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm``
* ``flat``: ``{SOPInstanceUID}.dcm``
* your own, e.g. ``{StudyDate}/{AccessionNumber}/{Modality}/{SOPInstanceUID}.dcm``

Rules, checked by :func:`parse_template` (a ``UsageError`` naming the problem otherwise): ``/``
separates directories; every keyword is one pydicom knows and holds text or numbers (no sequences
or binary data); the file name (last component) contains ``{SOPInstanceUID}``, so no two instances
share a file; literal text uses only ``A-Z a-z 0-9 . _ -``, and no component is empty, ``.``, ``..``
or starts with a dot (so the staging directory ``.incoming`` can never be reached).

Turning a value into a path component
-------------------------------------
Identifiers arrive from the network and can hold anything: ``../../etc``, ``/abs``, ``a\\b``, NUL,
control characters, 300 characters, nothing at all, ``CON``. Each value becomes one component:

1. Padding (spaces, NUL) is stripped; several values are joined with ``\\`` first.
2. Kept **verbatim** when it is 1-64 characters of ``A-Z a-z 0-9 . _ -``, starts with a letter or
   digit, does not end with ``.``, does not contain ``--``, and is not a Windows device name
   (``CON PRN AUX NUL COM0-9 LPT0-9``, with or without an extension). Conformant UIDs always are.
3. Otherwise it is **encoded** as ``<prefix>--<hash>``: the value with every other character replaced
   by ``_``, a leading ``.`` or ``-`` replaced by ``_``, cut to 48 characters; then ``--`` and the first
   16 hex digits of the SHA-256 of the original value (UTF-8). An empty value becomes ``_``.

Verbatim names never contain ``--`` and encoded names always do, so the two kinds never collide, and
two different values never share a name unless their hashes collide. Component names are at most 66
characters. Letter case is kept: on a case-insensitive file system ``abc`` and ``ABC`` share a
directory (they still get different file names unless their SOP Instance UIDs differ only in case).

Staying inside the root
-----------------------
The joined path is checked to lie inside the (resolved) archive root. Directories are created one
component at a time; a component that is a symlink must resolve inside the root, or nothing is written
(:class:`UnsafePath`), so a symlink planted inside the archive cannot lead a write outside it. A
component that exists but is not a directory fails with ``NotADirectoryError``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pydicom.datadict import dictionary_VR, tag_for_keyword

from pacs_cli.errors import UsageError
from pacs_cli.vrs import BINARY_VRS

HIERARCHICAL = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
FLAT = "{SOPInstanceUID}.dcm"
NAMED_TEMPLATES = {"hierarchical": HIERARCHICAL, "flat": FLAT}

VERBATIM_MAX = 64  # the longest UI and LO values
PREFIX_MAX = 48
HASH_HEX = 16
MARK = "--"
_VERBATIM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (VERBATIM_MAX - 1))
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LITERAL = re.compile(r"[A-Za-z0-9._-]*")
_FIELD = re.compile(r"\{([^{}]*)\}")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{n}" for p in ("COM", "LPT") for n in range(10)}
# VRs whose values cannot name a file.
_BINARY_VRS = BINARY_VRS | {"SQ"}


class UnsafePath(Exception):
    """A write would leave the archive root (through a symlink, or a path that escapes it)."""


def safe_component(value: str) -> str:
    """One path component for ``value``: verbatim when harmless, else ``<prefix>--<hash>`` (see above)."""
    if _is_verbatim(value):
        return value
    if value == "":
        return "_"
    prefix = _UNSAFE.sub("_", value)[:PREFIX_MAX]
    if prefix[0] in ".-":
        prefix = "_" + prefix[1:]
    elif _device_stem(prefix):
        prefix = ("_" + prefix)[:PREFIX_MAX]
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]
    return f"{prefix}{MARK}{digest}"


def _is_verbatim(value: str) -> bool:
    return (_VERBATIM.fullmatch(value) is not None and MARK not in value
            and not value.endswith(".") and not _device_stem(value))


def _device_stem(name: str) -> bool:
    """Windows refuses ``CON``, ``nul.txt``, ``COM1.dcm``...: the part before the first dot matters."""
    return name.split(".", 1)[0].upper() in _WINDOWS_DEVICES


@dataclass(frozen=True)
class Field:
    keyword: str


@dataclass(frozen=True)
class Template:
    """A parsed path template: components, each a sequence of literal strings and fields."""

    text: str
    components: tuple[tuple[str | Field, ...], ...]

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.keyword for c in self.components for p in c if isinstance(p, Field)))

    def render(self, values) -> tuple[str, ...]:
        """The relative path components for ``values`` (keyword -> string; missing means empty)."""
        parts = tuple("".join(p if isinstance(p, str) else safe_component(values.get(p.keyword, "") or "")
                              for p in component) for component in self.components)
        for part in parts:  # defence in depth: parse_template and safe_component already ensure this
            if not part or part in (".", "..") or part.startswith(".") or "/" in part or "\\" in part:
                raise UnsafePath(f"template produced an unsafe path component {part!r}")
        return parts


def parse_template(text: str | None) -> Template:
    """Parse ``hierarchical``, ``flat`` or a template text; a ``UsageError`` names what is wrong."""
    source = NAMED_TEMPLATES.get(text or "hierarchical", text or HIERARCHICAL)
    if source.startswith("/") or "\\" in source:
        raise UsageError(f"path template {source!r} must be a relative path with '/' separators")
    components = tuple(_parse_component(source, c) for c in source.split("/"))
    if not any(isinstance(p, Field) and p.keyword == "SOPInstanceUID" for p in components[-1]):
        raise UsageError(f"path template {source!r}: the file name must contain {{SOPInstanceUID}}",
                         "so that no two instances share a file")
    return Template(source, components)


def _parse_component(source: str, component: str) -> tuple[str | Field, ...]:
    if component in ("", ".", "..") or component.startswith("."):
        raise UsageError(f"path template {source!r}: component {component!r} is empty, "
                         "'.' or '..', or starts with a dot")
    parts: list[str | Field] = []
    position = 0
    for match in _FIELD.finditer(component):
        parts += _literal(source, component[position:match.start()])
        parts.append(Field(_keyword(source, match.group(1))))
        position = match.end()
    parts += _literal(source, component[position:])
    return tuple(parts)


def _literal(source: str, text: str) -> list[str]:
    if not _LITERAL.fullmatch(text):
        raise UsageError(f"path template {source!r}: literal text {text!r} may only hold "
                         "A-Z a-z 0-9 . _ - and {Keyword} fields")
    return [text] if text else []


def _keyword(source: str, keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise UsageError(f"unknown DICOM keyword {{{keyword}}} in path template {source!r}",
                         "keywords are spelt as in PS3.6, e.g. {StudyInstanceUID}")
    if set(dictionary_VR(tag).split(" or ")) & _BINARY_VRS:  # e.g. Pixel Data is "OB or OW"
        raise UsageError(f"{{{keyword}}} in path template {source!r} is a sequence or binary "
                         "attribute and cannot name a file")
    return keyword


def is_inside(root: Path, path: Path | str) -> bool:
    """True when ``path`` (absolute, normalised) is ``root`` or below it."""
    root_s, path_s = os.path.normpath(root), os.path.normpath(path)
    return os.path.commonpath([root_s, path_s]) == root_s


class Layout:
    """A template bound to a resolved archive root: paths for instances and safe directory creation.

    Paths are strings here: every stored object goes through :meth:`target` and :meth:`make_parents`,
    and pathlib's parsing of each path it builds was a twentieth of a small object's CPU.
    """

    def __init__(self, root: Path, template: Template):
        self.root = Path(os.path.realpath(root))
        self.template = template
        self._prefix = os.path.join(str(self.root), "")  # the root and a separator: every target starts so

    def target(self, values) -> str:
        """The absolute path for an instance; never outside the root (UnsafePath otherwise)."""
        path = self._prefix + os.sep.join(self.template.render(values))
        if os.path.normpath(path) != path or not path.startswith(self._prefix) or path == self._prefix:
            raise UnsafePath(f"{path} is not inside the archive root {self.root}")
        return path

    def make_parents(self, path: str) -> Parents:
        """Create the directories above ``path`` (a :meth:`target`) one at a time; say which, and how the
        index names it.

        A symlink on the way must resolve inside the root: ``os.makedirs`` would happily create
        directories wherever a planted link points before any check could run. Each level is looked
        at with one ``lstat`` (a mkdir only where it is missing): this runs for every stored object,
        and with no symlink on the way the file's index key is its path relative to the root, which
        resolving it (a system call per level of the whole path) would give too.
        """
        if not path.startswith(self._prefix):
            raise UnsafePath(f"{path} is not inside the archive root {self.root}")
        relative = path[len(self._prefix):]
        created = []
        current = str(self.root)
        real = True
        for part in relative.split(os.sep)[:-1]:
            current = os.path.join(current, part)
            mode = _mode_of(current)
            if mode is None:
                try:
                    os.mkdir(current)
                    created.append(current)
                    continue
                except FileExistsError:  # made meanwhile: look again
                    mode = _mode_of(current) or 0
            if stat.S_ISLNK(mode):
                real = False
                if not is_inside(self.root, os.path.realpath(current)):
                    raise UnsafePath(f"{current} is a symlink that leads outside the archive root")
            elif not stat.S_ISDIR(mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), current)
        return Parents(created, relative.replace(os.sep, "/") if real else None)


class Parents(NamedTuple):
    """What :meth:`Layout.make_parents` did: the directories it created, and the file's index key
    when no symlink leads to it (None: resolve the path)."""

    created: list[str]
    key: str | None


def _mode_of(path: str) -> int | None:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None
