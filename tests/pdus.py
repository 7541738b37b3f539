"""Raw PDUs for hostile tests, laid out as PS3.8 9.3 describes them, so that each can be bent."""

from __future__ import annotations

import struct

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"


def item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def presentation_context(context_id: int, abstract: bytes, syntaxes: list[bytes]) -> bytes:
    body = struct.pack(">BBBB", context_id, 0, 0, 0) + item(0x30, abstract)
    return item(0x20, body + b"".join(item(0x40, ts) for ts in syntaxes))


def associate_rq(contexts: list[bytes] | None = None, called=b"PACS", calling=b"HOSTILE",
                 application_context: bytes = APPLICATION_CONTEXT, version: int = 1, max_pdu: int = 16384,
                 window: int | None = None) -> bytes:
    """An A-ASSOCIATE-RQ; ``window``: the requests it asks to have outstanding (PS3.7 D.3.3.3), none by default."""
    contexts = contexts if contexts is not None else [presentation_context(1, VERIFICATION, [IMPLICIT_LE])]
    window_item = item(0x53, struct.pack(">HH", window, 1)) if window is not None else b""
    user_info = item(0x50, item(0x51, struct.pack(">I", max_pdu)) + window_item)
    body = (struct.pack(">HH", version, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
            + item(0x10, application_context) + b"".join(contexts) + user_info)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body
