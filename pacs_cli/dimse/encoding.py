"""DICOM elements of text values encoded straight to bytes (PS3.5 7.1), for the messages sent per object.

pydicom encodes a dataset element by element through its value classes, validation and character-set
machinery: measured, a third of a millisecond for a ten-key C-FIND response identifier, more than the
query that found it. The command sets of C-STORE and the identifiers of C-FIND responses are short runs
of UI and text values, so they are written here with ``struct``. :class:`FlatEncoder` refuses (None)
whatever it cannot write exactly as pydicom would, and the caller then takes pydicom's path; the bytes
are checked against pydicom's encoder in tests/test_encoding.py.
"""

from __future__ import annotations

import struct

from pacs_cli.vrs import CHARACTER_SET_VRS, LONG_LENGTH_VRS, TEXT_VRS

_IMPLICIT = struct.Struct("<HHL")
_COMMAND_US = struct.Struct("<HHLH")
_GROUP_LENGTH = struct.Struct("<HHLL")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2sxxL")
_TAG = struct.Struct("<HH")
_SHORT_LENGTH, _LONG_LENGTH = struct.Struct("<H"), struct.Struct("<L")


def ui_value(uid) -> bytes:
    """A UI value as encoded: padded with NUL to an even length (PS3.5 6.2)."""
    value = str(uid).encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def text_value(text: str, codec: str = "ascii") -> bytes:
    """An AE, SH or other text value as encoded: padded with a space to an even length (PS3.5 6.2)."""
    value = str(text).encode(codec)
    return value + b" " if len(value) % 2 else value


def element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    """One element: its tag, (explicit) VR, length and the already padded ``value``."""
    group, number = tag >> 16, tag & 0xFFFF
    if implicit:
        return _IMPLICIT.pack(group, number, len(value)) + value
    if vr in LONG_LENGTH_VRS:
        return _EXPLICIT_LONG.pack(group, number, vr.encode("ascii"), len(value)) + value
    if len(value) > 0xFFFF:
        raise ValueError(f"a {vr} value of {len(value)} bytes does not fit a 2-byte length")
    return _EXPLICIT_SHORT.pack(group, number, vr.encode("ascii"), len(value)) + value


def command_set(*elements: bytes) -> bytes:
    """A command set (group 0000, Implicit VR Little Endian, PS3.7 6.3.1) from its elements in tag
    order, led by its Command Group Length."""
    body = b"".join(elements)
    return _GROUP_LENGTH.pack(0x0000, 0x0000, 4, len(body)) + body


def command_us(number: int, value: int) -> bytes:
    """A US element of a command set: (0000,``number``)."""
    return _COMMAND_US.pack(0x0000, number, 2, value)


def command_ui(number: int, uid) -> bytes:
    """A UI element of a command set: (0000,``number``)."""
    return element(number, "UI", ui_value(uid), implicit=True)


def command_text(number: int, text: str) -> bytes:
    """An AE or other text element of a command set: (0000,``number``)."""
    return element(number, "AE", text_value(text), implicit=True)


class FlatEncoder:
    """Datasets of text elements whose tags and VRs are known in advance, Little Endian: a C-FIND
    SCP's responses to one request, one per match. Each element's header up to its length, how its
    length is packed, its padding and its codec are worked out once; per dataset only the values are
    encoded.

    Text VRs are written as given (several values already joined by ``\\``), those of
    :data:`~pacs_cli.vrs.CHARACTER_SET_VRS` with ``codec``, the others in ASCII; an empty value of any
    VR is zero length (an SQ: an empty sequence of defined length, as pydicom writes it). A non-empty
    value of a binary VR, non-ASCII text where only ASCII is allowed, or a value too long for its
    length field gives None: pydicom must encode that dataset.
    """

    def __init__(self, elements: list[tuple[int, str]], implicit: bool, codec: str):
        self._steps = [self._step(tag, vr, implicit, codec) for tag, vr in elements]

    @staticmethod
    def _step(tag: int, vr: str, implicit: bool, codec: str) -> tuple[bytes, object, bytes, str | None]:
        """(header up to the length, its packer, padding, codec or None where only an empty value fits)."""
        prefix = _TAG.pack(tag >> 16, tag & 0xFFFF)
        if implicit:
            length = _LONG_LENGTH
        elif vr in LONG_LENGTH_VRS:
            prefix, length = prefix + vr.encode("ascii") + b"\x00\x00", _LONG_LENGTH
        else:
            prefix, length = prefix + vr.encode("ascii"), _SHORT_LENGTH
        if vr in TEXT_VRS:
            return prefix, length.pack, b" ", codec if vr in CHARACTER_SET_VRS else "ascii"
        return prefix, length.pack, b"\x00", "ascii" if vr == "UI" else None

    def encode(self, texts: list[str]) -> bytes | None:
        """The dataset of these values, one per element in order; None when pydicom must encode it."""
        parts = []
        try:
            for (prefix, pack, padding, codec), text in zip(self._steps, texts):
                if not text:
                    value = b""
                elif codec is None:
                    return None  # a binary VR given as text: pydicom converts it
                else:
                    value = text.encode(codec)
                    if len(value) % 2:
                        value += padding
                parts += (prefix, pack(len(value)), value)
        except (UnicodeEncodeError, struct.error):  # struct.error: too long for a 2-byte length
            return None
        return b"".join(parts)
