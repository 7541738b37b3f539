"""The hand-encoded C-STORE-RSP and C-FIND-RSP must be byte for byte what pynetdicom's own encoder sends."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_FIND_RSP, C_GET_RSP, C_MOVE_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from pacs_cli.dimse.responses import (
    c_find_rsp_command, c_retrieve_rsp_command, c_store_rsp_command, is_plain_retrieve_response,
    is_plain_store_response, message_pdus,
)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def response(status=0x0000, message_id=7, sop_class="1.2.840.10008.5.1.4.1.1.2",
             sop_instance="1.2.3.4.5", **optional) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    for keyword, value in optional.items():
        setattr(rsp, keyword, value)
    return rsp


def pynetdicom_command(primitive: C_STORE) -> bytes:
    """The command fragment pynetdicom puts on the wire, without the PDV's flag byte."""
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(1, 16382))
    ((_, pdv),) = pdata.presentation_data_value_list
    assert pdv[:1] == b"\x03"  # a command, last fragment
    return pdv[1:]


@pytest.mark.parametrize("status", [0x0000, 0x0111, 0xB000, 0xA700, 0xC000])
@pytest.mark.parametrize("message_id", [1, 65535])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4.5", "1.2.3.4.56", "1." + "2" * 62])
def test_bytes_match_pynetdicoms_encoder(status, message_id, sop_instance):
    primitive = response(status, message_id, sop_instance=sop_instance)
    assert is_plain_store_response(primitive)
    assert c_store_rsp_command(primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo, primitive.Status,
                               primitive.AffectedSOPInstanceUID) == pynetdicom_command(primitive)


@pytest.mark.parametrize("optional", [{"ErrorComment": "disk full"}, {"OffendingElement": [0x00080018]}])
def test_responses_with_optional_elements_take_pynetdicoms_path(optional):
    assert not is_plain_store_response(response(0xA700, **optional))


def test_requests_take_pynetdicoms_path():
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = "1.2", "1.2.3"
    assert not is_plain_store_response(request)


def pynetdicom_find_command(status: int, message_id: int, identifier: bool) -> bytes:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = STUDY_ROOT_FIND
    primitive.Status = status
    primitive.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ") if identifier else None
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("status,identifier", [(0xFF00, True), (0xFF01, True), (0x0000, False), (0xFE00, False)])
@pytest.mark.parametrize("message_id", [1, 65535])
def test_find_response_command_matches_pynetdicoms_encoder(status, identifier, message_id):
    assert (c_find_rsp_command(STUDY_ROOT_FIND, message_id, status, identifier)
            == pynetdicom_find_command(status, message_id, identifier))


def reassembled(pdus: list[bytes]) -> tuple[bytes, bytes]:
    """The command and the dataset carried by encoded P-DATA-TF PDUs, checking each PDV's flags."""
    parts = {0: b"", 1: b""}
    last = {0: False, 1: False}
    for pdu in pdus:
        offset = 6
        while offset < len(pdu):
            length, context_id, flags = struct.unpack_from(">LBB", pdu, offset)
            assert context_id == 3
            kind = flags & 1
            assert not last[kind], "a fragment after the last one"
            parts[kind] += pdu[offset + 6:offset + 4 + length]
            last[kind] = bool(flags & 2)
            offset += 4 + length
    assert last == {0: True, 1: True}
    return parts[1], parts[0]


@pytest.mark.parametrize("limit,dataset_size,expected_pdus", [
    (0, 300, 1), (16384, 300, 1), (16384, 16384 - 12 - 88, 1), (16384, 16384 - 11 - 88, 2),
    (4096, 10000, 4), (200, 0, 1), (60, 0, 3),
])
def test_message_pdus_fit_the_peers_limit(limit, dataset_size, expected_pdus):
    command = c_find_rsp_command(STUDY_ROOT_FIND, 9, 0xFF00, identifier=True)
    assert len(command) == 88
    dataset = bytes(range(256)) * (dataset_size // 256) + bytes(dataset_size % 256)
    pdus = []
    for values in message_pdus(3, command, dataset, limit):
        pdata = P_DATA()
        pdata.presentation_data_value_list.extend(values)
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        pdus.append(pdu.encode())
    assert len(pdus) == expected_pdus
    assert all(len(pdu) - 6 <= limit for pdu in pdus) or not limit
    assert reassembled(pdus) == (command, dataset)


@pytest.mark.parametrize("primitive_class,message_class", [(C_MOVE, C_MOVE_RSP), (C_GET, C_GET_RSP)])
@pytest.mark.parametrize("status,counts", [(0xFF00, (499, 1, 0, 0)), (0x0000, (None, 500, 0, 0)),
                                           (0xB000, (0, 498, 1, 1)), (0xFE00, (3, 2, None, None))])
def test_retrieve_response_command_matches_pynetdicoms_encoder(primitive_class, message_class, status, counts):
    primitive = primitive_class()
    primitive.MessageIDBeingRespondedTo, primitive.Status = 11, status
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    (primitive.NumberOfRemainingSuboperations, primitive.NumberOfCompletedSuboperations,
     primitive.NumberOfFailedSuboperations, primitive.NumberOfWarningSuboperations) = counts
    assert is_plain_retrieve_response(primitive)
    message = message_class()
    message.primitive_to_message(primitive)
    assert c_retrieve_rsp_command(primitive) == encode(message.command_set, True, True)


def test_retrieve_responses_with_an_identifier_or_a_comment_take_pynetdicoms_path():
    primitive = C_MOVE()
    primitive.MessageIDBeingRespondedTo, primitive.Status = 11, 0xA702
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    primitive.ErrorComment = "destination unknown"
    assert not is_plain_retrieve_response(primitive)
    primitive.ErrorComment = None
    primitive.Identifier = BytesIO(b"\x08\x00\x58\x00\x04\x00\x00\x001.2\x00")
    assert not is_plain_retrieve_response(primitive)
