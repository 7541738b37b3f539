"""Reading PDUs: what the peer sent together is read together, and every PDU comes out whole and in order."""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
from types import SimpleNamespace

import pytest

from pacs_cli.dimse.reactor import READ_AHEAD, PollReadySocket


def pdu(body_length: int, fill: int) -> bytes:
    """A P-DATA-TF-shaped PDU: type, reserved byte, length, body."""
    return struct.pack(">BBL", 0x04, 0, body_length) + bytes([fill]) * body_length


@pytest.fixture
def pair():
    ours, peer = socket.socketpair()
    assoc = SimpleNamespace(dul=SimpleNamespace(event_queue=queue.Queue()), dimse=SimpleNamespace(_ready=[]))
    wrapped = PollReadySocket(assoc, client_socket=ours)
    yield wrapped, peer
    ours.close()
    peer.close()


def read_pdu(sock: PollReadySocket) -> bytes:
    header = sock.recv(6)
    if len(header) < 6:
        return bytes(header)
    return bytes(header) + bytes(sock.recv(struct.unpack(">BBL", header)[2]))


def send_in_background(peer: socket.socket, data: bytes) -> threading.Thread:
    sender = threading.Thread(target=peer.sendall, args=(data,))
    sender.start()
    return sender


def test_pdus_come_out_whole_and_in_order_whatever_their_size(pair):
    sock, peer = pair
    pdus = [pdu(length, number) for number, length in enumerate([10, 300, READ_AHEAD * 3 + 7, 5, READ_AHEAD - 6, 0])]
    sender = send_in_background(peer, b"".join(pdus))
    assert [read_pdu(sock) for _ in pdus] == pdus
    sender.join()
    assert not sock.read_ahead
    peer.close()
    assert read_pdu(sock) == b""  # the peer closed between PDUs: nothing, as pynetdicom's read gives


def counting_reads(monkeypatch) -> list[str]:
    """Every read of a socket, by the call that made it: ``readv`` on its descriptor, or ``recv_into``."""
    reads, readv, recv_into = [], os.readv, socket.socket.recv_into
    monkeypatch.setattr(os, "readv", lambda fd, buffers: reads.append("readv") or readv(fd, buffers))
    monkeypatch.setattr(socket.socket, "recv_into",
                        lambda self, *args: reads.append("recv_into") or recv_into(self, *args))
    return reads


def test_pdus_already_sent_are_read_in_one_system_call(pair, monkeypatch):
    sock, peer = pair
    pdus = [pdu(200, number) for number in range(50)]  # 50 pending C-FIND responses, say
    peer.sendall(b"".join(pdus))
    reads = counting_reads(monkeypatch)
    first = read_pdu(sock)
    assert first == pdus[0] and sock.read_ahead and sock.ready  # the rest is held, and says so
    assert [read_pdu(sock) for _ in pdus[1:]] == pdus[1:]
    assert reads == ["readv"]


def test_a_read_waits_by_the_sockets_timeout_only_when_nothing_has_come(pair, monkeypatch):
    """With a timeout, the bytes already there are read without a poll first; only a read that finds
    none (EAGAIN) waits in recv_into, and that one times out."""
    sock, peer = pair
    sock.socket.settimeout(0.2)
    reads = counting_reads(monkeypatch)
    peer.sendall(pdu(100, 1))
    assert read_pdu(sock) == pdu(100, 1)
    assert reads == ["readv"]
    with pytest.raises(TimeoutError):
        read_pdu(sock)
    assert reads == ["readv", "readv", "recv_into"]


def test_a_pdu_cut_short_by_the_peer_comes_out_short(pair):
    sock, peer = pair
    peer.sendall(pdu(1000, 1)[:500])
    peer.close()
    assert len(read_pdu(sock)) == 500  # the reader sees fewer bytes than announced: Evt17 in the DUL


def test_parts_are_sent_whole_and_in_order_however_the_socket_takes_them(pair):
    """send_parts gathers the parts of PDUs into sendmsg calls: a small send buffer takes them a piece at a
    time, cut anywhere, and more parts than one call may gather go in several."""
    sock, peer = pair
    sock.assoc.get_handlers = lambda event: []
    sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    parts = [bytes([number % 251]) * size for number, size in enumerate([6, 6, 100_000, 1, 0, 300_000, 7] * 200)]
    expected = b"".join(parts)
    received = bytearray()

    def read_all():
        while len(received) < len(expected):
            received.extend(peer.recv(1 << 20))

    events = sock.event_queue.qsize()  # the connection's own
    reader = threading.Thread(target=read_all)
    reader.start()
    sock.send_parts(parts)
    reader.join(timeout=30)
    assert bytes(received) == expected
    assert sock.event_queue.qsize() == events  # no Evt17: nothing failed
