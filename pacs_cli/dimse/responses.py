"""C-STORE responses encoded straight to bytes, the one DIMSE message an archive sends per object.

pynetdicom builds a pydicom dataset for every response, encodes it once to learn the command group
length and once more to send it: measured, a quarter of ``pacs storescp``'s CPU per small object.
A plain C-STORE-RSP (PS3.7 9.3.1.2: the two UIDs, the message ID, a status, no optional elements) is
a fixed run of Implicit VR Little Endian elements; :class:`FastResponseDIMSE` writes those bytes and
hands them to pynetdicom's P-DATA primitive and DUL as pynetdicom would. A sender's C-STORE-RQ from
a file goes out through :mod:`~pacs_cli.dimse.requests` the same way. Anything else (a response with
an Error Comment, other requests, DIMSE logging at -vv) takes pynetdicom's own path. The bytes are
checked against pynetdicom's encoder in tests/test_responses.py and tests/test_requests.py.
"""

from __future__ import annotations

import struct

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from pacs_cli.dimse import requests

C_STORE_RSP = 0x8001
NO_DATASET = 0x0101
LAST_COMMAND_FRAGMENT = b"\x03"  # PS3.8 E.2: command, last fragment
OPTIONAL_KEYWORDS = ("ErrorComment", "ErrorID", "OffendingElement")
_UL = struct.Struct("<HHLL")
_US = struct.Struct("<HHLH")


def c_store_rsp_command(sop_class_uid, message_id: int, status: int, sop_instance_uid) -> bytes:
    """The command set of a plain C-STORE-RSP, Implicit VR Little Endian (PS3.7 E.1-1, 9.3.1.2)."""
    body = b"".join((
        _ui(0x0002, sop_class_uid),
        _US.pack(0x0000, 0x0100, 2, C_STORE_RSP),
        _US.pack(0x0000, 0x0120, 2, message_id),
        _US.pack(0x0000, 0x0800, 2, NO_DATASET),
        _US.pack(0x0000, 0x0900, 2, status),
        _ui(0x1000, sop_instance_uid),
    ))
    return _UL.pack(0x0000, 0x0000, 4, len(body)) + body


def _ui(element: int, uid) -> bytes:
    value = requests.ui_value(uid)
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def is_plain_store_response(primitive) -> bool:
    return (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status is not None and primitive.AffectedSOPClassUID is not None
            and primitive.AffectedSOPInstanceUID is not None
            and all(getattr(primitive, keyword, None) is None for keyword in OPTIONAL_KEYWORDS))


class FastResponseDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending plain C-STORE responses from :func:`c_store_rsp_command`."""

    def send_msg(self, primitive, context_id: int) -> None:
        if requests.is_file_request(primitive) and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            requests.send_file_request(self, primitive, context_id)  # a sender's C-STORE-RQ from a file
            return
        if not (is_plain_store_response(primitive) and self.send_store_response(
                context_id, primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo,
                primitive.Status, primitive.AffectedSOPInstanceUID)):
            super().send_msg(primitive, context_id)

    def send_store_response(self, context_id: int, sop_class_uid, message_id: int, status: int,
                            sop_instance_uid) -> bool:
        """Send a plain C-STORE-RSP as bytes; False (nothing sent) when pynetdicom must send it:
        DIMSE logging at -vv needs its message object, and a command must fit one PDU."""
        if self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            return False
        command = c_store_rsp_command(sop_class_uid, message_id, status, sop_instance_uid)
        limit = self.maximum_pdu_size
        if limit and len(command) > limit - 6:  # pynetdicom's one-fragment rule
            return False
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, LAST_COMMAND_FRAGMENT + command))
        self.dul.send_pdu(pdata)
        return True
