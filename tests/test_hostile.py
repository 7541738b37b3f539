"""Hostile peers against `pacs storescp`: it drops them, keeps serving, and never shows a traceback.

Each test ends with the invariants of shared/notes/reliability.md: a fresh C-ECHO is answered, nothing
is left in staging, and stderr holds no traceback.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

import pdus
from test_storescp import StoreSCP


@pytest.fixture
def scp(tmp_path):
    server = StoreSCP(tmp_path, "-ta", "2", "--max-per-address", "4", "--host", "127.0.0.1")
    yield server
    server.proc.stop()


def assert_still_serving(server: StoreSCP, source="127.0.0.1") -> None:
    ae = AE(ae_title="CHECK")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = 5
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS", bind_address=(source, 0))
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
        ae.shutdown()
    assert server.staging_leftovers() == []


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def finish(server: StoreSCP) -> str:
    _, err = server.stop()
    assert "Traceback" not in err
    return err


def test_pdu_longer_than_advertised_is_dropped_before_buffering(scp):
    with socket.create_connection(("127.0.0.1", scp.port)) as sock:
        sock.sendall(b"\x04\x00" + struct.pack(">I", 0x7FFFFFF0))
        try:
            sock.sendall(bytes(4 * 1024 * 1024))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_within(sock, 5)
    assert_still_serving(scp)
    assert "PDU of 2147483632 bytes announced" in finish(scp)


@pytest.mark.parametrize("how", ["header-then-silence", "one-byte-drip"])
def test_stalled_pdu_is_dropped_at_the_deadline(scp, how):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", scp.port)) as sock:
        if how == "header-then-silence":
            sock.sendall(b"\x01\x00" + struct.pack(">I", 200))
            assert closed_within(sock, 8)
        else:
            sock.sendall(b"\x01\x00\x00\x00\x00\xc8")
            for _ in range(20):
                time.sleep(0.5)
                try:
                    sock.sendall(b"\x00")
                except (BrokenPipeError, ConnectionResetError):
                    break
            assert closed_within(sock, 2)
    assert time.monotonic() - start < 9
    assert_still_serving(scp)
    finish(scp)


def test_idle_sockets_from_one_address_do_not_lock_out_others(scp):
    idle = [socket.create_connection(("127.0.0.1", scp.port)) for _ in range(12)]
    try:
        assert_still_serving(scp, source="127.0.0.2")
    finally:
        for sock in idle:
            sock.close()
    finish(scp)


def test_malformed_command_set_gets_an_abort_not_a_traceback(scp):
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PACS")
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    garbage = b"\xff\xff\xff\xff" * 8
    pdv = struct.pack(">IBB", len(garbage) + 2, context_id, 0x03) + garbage
    assoc.dul.socket.socket.sendall(b"\x04\x00" + struct.pack(">I", len(pdv)) + pdv)
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted or not assoc.is_established
    ae.shutdown()
    assert_still_serving(scp)
    finish(scp)


BAD_REQUESTS = {
    "context without transfer syntax": pdus.associate_rq([pdus.presentation_context(1, pdus.VERIFICATION, [])]),
    "even context ID": pdus.associate_rq([pdus.presentation_context(2, pdus.VERIFICATION, [pdus.IMPLICIT_LE])]),
    "non-DICOM application context": pdus.associate_rq(application_context=b"1.2.3"),
    "duplicate context IDs": pdus.associate_rq([pdus.presentation_context(1, pdus.VERIFICATION, [pdus.IMPLICIT_LE])] * 2),
    "300 contexts with wrapped IDs": pdus.associate_rq(
        [pdus.presentation_context((2 * i + 1) % 256, pdus.VERIFICATION, [pdus.IMPLICIT_LE]) for i in range(300)]),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_invalid_association_request_gets_an_a_abort(scp, name):
    """Plain pynetdicom hangs on the first, kills its reactor on the second and accepts the rest."""
    with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as sock:
        sock.sendall(BAD_REQUESTS[name])
        assert sock.recv(1) == b"\x07"  # A-ABORT PDU type, PS3.8 9.3.8
    assert_still_serving(scp)
    assert "aborted association request from 127.0.0.1" in finish(scp)


def test_valid_raw_request_is_accepted(scp):
    """The builder itself makes a request that a pacs storescp accepts (A-ASSOCIATE-AC)."""
    with socket.create_connection(("127.0.0.1", scp.port), timeout=5) as sock:
        sock.sendall(pdus.associate_rq())
        assert sock.recv(1) == b"\x02"
    finish(scp)
