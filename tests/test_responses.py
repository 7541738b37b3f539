"""The hand-encoded C-STORE-RSP must be byte for byte what pynetdicom's own encoder sends."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from pacs_cli.dimse.responses import c_store_rsp_command, is_plain_store_response


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
