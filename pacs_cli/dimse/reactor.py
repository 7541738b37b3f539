"""Event-driven waiting for pynetdicom's association and DUL threads.

pynetdicom 3.0.4 polls. Its DUL thread sleeps 1 ms whenever it finds nothing to do, its
association thread sleeps 1 ms on every turn of its loop, and ending an association waits in
10 ms steps: measured, about 5 ms per DIMSE round trip and 17 ms per associate and release,
which caps one association at a few hundred small objects a second whatever the CPU.

Here both threads block until there is work. The DUL thread waits in ``poll()`` on its peer
socket and on a wake-up socket that every queue feeding it writes to; the association thread
waits on an event that every queue feeding it sets. Everything else (the state machine, PDU
encoding and decoding, the reactors' bodies) stays pynetdicom's, except P-DATA-TF PDUs in the
data transfer state: received ones go straight to :mod:`~pacs_cli.dimse.receive` (whose staged
C-STOREs are answered in this thread when the association's is idle, or by
:meth:`EventDrivenAssociation._serve_request`), and sent ones are encoded and written here
(:meth:`EventDrivenDUL._send_pdata_directly`) or, when nothing is queued before them, by the thread
that sends them (:meth:`EventDrivenDUL.write_pdata`), the state machine having nothing to do for them;
a thread that sends requests and waits for each response reads the responses itself, the DUL thread
having lent it the socket (:meth:`EventDrivenDUL.read_until_message`).
:func:`install` swaps the queues and the classes of one association before its threads start,
for requestors (:class:`~pacs_cli.dimse.ae.RequestorAE`) and acceptors (the server's request
handler) alike.

The overridden loops and PDU read follow pynetdicom 3.0.4's ``DULServiceProvider.run_reactor``,
``_read_pdu_data`` and ``fsm.DT_1`` and ``Association._run_reactor`` step for step; re-check them
when pynetdicom is upgraded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import select
import socket
import struct
import termios
import threading
import time

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket
from pynetdicom.utils import make_target

from pacs_cli.dimse import receive
from pacs_cli.dimse.substore import SendsStoredFiles

LOGGER = logging.getLogger("pynetdicom.dul")

# Longest a thread blocks without looking around: the association thread checks its idle
# timer and whether the DUL thread is still alive no more often than this.
IDLE_CHECK = 0.1
READ_AHEAD = 1 << 16  # bytes asked for by a read of less: the PDUs a peer has sent already, at once
MAX_GATHER = 512  # buffers per sendmsg, under every system's IOV_MAX (1024 on Linux)
_PDU_HEADER = struct.Struct(">BBL")
_PDV_ITEM = struct.Struct(">LB")


class WakeupSocket:
    """One end the DUL thread polls beside its peer socket; a byte written to the other wakes it.

    A socket pair rather than a pipe: once closed, a late ``set()`` fails cleanly instead of
    writing into whatever file reused the descriptor number.
    """

    def __init__(self):
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def set(self) -> None:
        try:
            self._writer.send(b"\0")
        except OSError:  # full: a wake-up is pending anyway; closed: the reactor has ended
            pass

    def drain(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class SignallingQueue(queue.Queue):
    """A queue that wakes its consumer on every put."""

    def __init__(self, wake, items=()):
        super().__init__()
        self._wake = wake
        self.queue.extend(items)

    def put(self, item, block=True, timeout=None) -> None:
        super().put(item, block, timeout)
        self._wake()


class Checkpoint(threading.Event):
    """The association reactor's pause gate: closing it wakes the reactor so it can pause.

    pynetdicom's SCU methods clear the gate, then spin until the reactor reports it has
    paused; a reactor blocked waiting for work must notice at once.
    """

    def __init__(self, wake: threading.Event):
        super().__init__()
        self.set()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake.set()


class PollReadySocket(AssociationSocket):
    """``ready`` with ``poll()`` (pynetdicom's ``select()`` fails once descriptors pass 1024), reads
    that take what the peer has already sent in one system call, and a lock around every send.

    pynetdicom reads a PDU with at least two ``recv`` calls, its header and then its body in 4 KiB
    pieces, each appended to a growing buffer: a C-FIND SCU's DUL thread made three system calls
    per response, and a 0.5 MB C-STORE into ``pacs getscu`` well over a hundred. Here a read short of
    :data:`READ_AHEAD` bytes asks for that many, and what comes past the PDU is kept for the next
    read (``ready`` counts it); a longer one goes straight into the PDU's buffer. The PDUs read are
    the same; only the system calls differ.

    Every send holds ``send_lock``, so that a thread other than the DUL's may write a P-DATA-TF PDU
    itself (:meth:`EventDrivenDUL.write_pdata`) without cutting into one the DUL is writing.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_up()

    @classmethod
    def adopt(cls, sock: AssociationSocket) -> None:
        """Make a socket object pynetdicom built (an acceptor's) one of this class."""
        sock.__class__ = cls
        sock._set_up()

    def _set_up(self) -> None:
        self.send_lock = threading.RLock()
        self._ahead = memoryview(b"")
        self._reused = bytearray()
        self.polled_readable = False  # the DUL's wait saw the socket readable: ``ready`` need not look again

    def send(self, bytestream: bytes) -> None:
        with self.send_lock:
            super().send(bytestream)

    def send_parts(self, parts: list) -> None:
        """:meth:`send` of the parts joined, without joining them: one ``sendmsg`` gathers them (a join
        copied every fragment of a file once more on its way out). Over TLS, or with an EVT_DATA_SENT
        handler (which is given the bytes), they are joined and sent as pynetdicom sends."""
        if self.over_tls or self.socket is None or self.assoc.get_handlers(evt.EVT_DATA_SENT):
            self.send(b"".join(parts))
            return
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        with self.send_lock:
            try:
                while views:
                    sent = self.socket.sendmsg(views[:MAX_GATHER])
                    while views and sent >= len(views[0]):
                        sent -= len(views.pop(0))
                    if sent:
                        views[0] = views[0][sent:]
            except Exception:  # noqa: BLE001 - as pynetdicom's send: Evt17, the transport connection is lost
                self.event_queue.put("Evt17")

    @property
    def over_tls(self) -> bool:
        """An SSL socket (it has ``pending``): bytes may wait decrypted where ``poll`` cannot see them,
        and two threads must not read and write it at once."""
        return getattr(self.socket, "pending", None) is not None

    @property
    def unsent(self) -> int:
        """Bytes written that the peer has not acknowledged yet (Linux SIOCOUTQ); 0 where it cannot be asked."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.socket.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError, AttributeError):
            return 0

    def serve_held(self) -> None:
        """Serve the C-STOREs held to be stored together (:meth:`receive.StagingDIMSE.serve_ready`):
        before a read that would wait for the peer or finds it gone, and before a PDU goes to
        pynetdicom. Nothing else answers them."""
        dimse = self.assoc.dimse
        if dimse._ready:
            dimse.serve_ready()

    def more_to_read(self) -> bool:
        """True when bytes from the peer are here: read ahead, or waiting in the socket."""
        if not (self._ahead or self.polled_readable):
            self.polled_readable = self._readable_now()
        return bool(self._ahead) or self.polled_readable

    @property
    def read_ahead(self) -> bool:
        """True when bytes of the next PDU were read already: nothing to wait for."""
        return bool(self._ahead)

    @property
    def ready(self) -> bool:
        if self.socket is None or self._is_connected is False:
            return False
        if self._ahead or self.polled_readable:
            self.polled_readable = False
            return True
        return self._readable_now()

    def _readable_now(self) -> bool:
        if self.socket is None:
            return False
        if self.over_tls and self.socket.pending():  # bytes decrypted but unread
            return True
        try:
            poller = select.poll()
            poller.register(self.socket, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False

    def recv(self, nr_bytes: int, reuse: bool = False) -> bytearray | memoryview:
        """``nr_bytes`` bytes, or fewer when the peer closed the connection (as pynetdicom's); a slice of
        what was read ahead when it holds them all, so a PDU read with its neighbours is never copied.

        ``reuse``: into a buffer this socket keeps for the next such read, valid until then, for a
        caller done with the bytes before it reads again. A new bytearray is zero-filled before the
        read overwrites it: for the 256 KiB PDUs of 0.5 MB images, 2% of a receiver's CPU in memset.
        """
        if len(self._ahead) >= nr_bytes:
            data, self._ahead = self._ahead[:nr_bytes], self._ahead[nr_bytes:]
            return data
        if reuse:
            if len(self._reused) < nr_bytes:
                self._reused = bytearray(nr_bytes)
            view = memoryview(self._reused)[:nr_bytes]
            return view[:self._read_into(view)]
        data = bytearray(nr_bytes)
        with memoryview(data) as view:
            got = self._read_into(view)
        del data[got:]
        return data

    def _read_into(self, view: memoryview) -> int:
        """Fill ``view`` from what was read ahead, then from the socket; the bytes filled."""
        wanted, got = len(view), 0
        if self._ahead:
            got = len(self._ahead)
            view[:got] = self._ahead
            self._ahead = memoryview(b"")
        while got < wanted:
            if wanted - got >= READ_AHEAD:
                count = self._socket_read(view[got:])
                if not count:
                    break
                got += count
                continue
            ahead = memoryview(bytearray(READ_AHEAD))  # a new buffer: slices of the last may still be in use
            count = self._socket_read(ahead)
            if not count:
                break
            taken = min(count, wanted - got)
            view[got:got + taken] = ahead[:taken]
            got += taken
            self._ahead = ahead[taken:count]
        return got

    def _socket_read(self, view: memoryview) -> int:
        """One read from the socket into ``view``: the bytes read, 0 once the peer closed.

        ``recv_into``, without its ``poll()`` when the bytes are there already: a socket with a
        timeout polls before every read, though the reactor reads only once its own poll saw the
        socket readable: a system call per read for nothing (22 per 0.5 MB image received). A plain
        socket with a timeout is non-blocking underneath, so ``readv`` on its
        descriptor returns what is there, or EAGAIN, and only then does ``recv_into`` wait, by its
        timeout; a blocking one blocks in either. TLS reads go through the SSL object.
        """
        if not self.over_tls:
            try:
                count = os.readv(self.socket.fileno(), [view])
            except BlockingIOError:
                pass
            else:
                if not count:
                    self.serve_held()
                return count
        self.serve_held()
        return self.socket.recv_into(view)


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL, blocking in ``poll()`` instead of sleeping between looks."""

    _wakeup: WakeupSocket
    state_changed: threading.Event

    def run_reactor(self) -> None:
        try:
            self._run_until_killed()
        finally:
            self._wakeup.close()
            dimse = self.assoc.dimse
            receive.discard_staged(getattr(dimse.message, "_data_set_file", None))
            for request in dimse.unserved():
                receive.discard_staged(request._dataset_file)
            self.assoc._wake.set()

    def _run_until_killed(self) -> None:
        self._idle_timer.start()
        self.assoc._dul_ready.set()
        while not self._kill_thread:
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._send_pdata_directly():
                    continue
                if not self._process_recv_primitive() and self._read_unless_lent():
                    self._idle_timer.restart()
            except Exception as exc:  # noqa: BLE001 - as pynetdicom: abort rather than die silently
                self._abort_after(exc)
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait_for_work()
                continue
            # an action may take a P-DATA primitive off the queue and send it, or close the socket a
            # thread it is lent to reads (read_until_message): it waits for that read to end
            with self._send_lock, self._reading:
                self.state_machine.do_action(event)
            self.state_changed.set()
            if self.state_machine.current_state == "Sta1":
                self._release_waiting_acceptor()

    def _send_pdata_directly(self) -> bool:
        """DT-1 (PS3.8 9.2) for a P-DATA primitive in Sta6, its P-DATA-TF PDU encoded here.

        pynetdicom queues an Evt9 for each (a wake-up of this thread), runs the state machine, and
        builds a PDU object whose items it encodes and joins: per PDU, about as much CPU as the rest
        of sending a 16 KB fragment of a file. DT-1 stays in Sta6 and only sends the PDU, so that is
        all this does, in the order pynetdicom would (primitives first, and only when no event waits).
        An EVT_PDU_SENT handler (-vv), which needs pynetdicom's PDU object, keeps pynetdicom's path.
        """
        pending = self.to_provider_queue.queue
        if not pending or type(pending[0]) is not P_DATA or not self._pdata_skips_state_machine():
            return False
        with self._send_lock:  # taken off the queue and sent in one go: write_pdata cannot come between
            primitive = self.to_provider_queue.get(False)
            self.socket.send(encode_pdata_tf(primitive.presentation_data_value_list))  # Evt17 on failure
        self.state_changed.set()  # a PDU went out: senders holding back (find.wait_for_the_network) go on
        return True

    def write_pdata(self, values: list[tuple[int, bytes | bytearray]]) -> bool:
        """DT-1 for one P-DATA-TF PDU of (context ID, PDV value) items in the calling thread; False
        (nothing sent) when it must be queued.

        Queued, each PDU cost a wake-up of this thread through its wake-up socket and a hand-over
        of the GIL both ways: per PDU about as much as reading and sending it (a sender of small
        objects, or of 0.5 MB ones in a peer's 16 KB PDUs). Written here only in the data transfer
        state with nothing queued or pending before it (the lock keeps that true while it is
        written), without PDU handlers (-vv), and not over TLS from another thread: one SSL
        connection must not be read and written by two threads at once.
        """
        return self.write_pdus([values])

    def write_pdus(self, pdus: list[list[tuple[int, bytes | bytearray]]]) -> bool:
        """:meth:`write_pdata` for several PDUs, in one system call."""
        if threading.current_thread() is not self and self.socket.over_tls:
            return False
        with self._send_lock:
            if self.to_provider_queue.queue or not self._pdata_skips_state_machine():
                return False
            self.socket.send_parts([part for values in pdus for part in pdata_tf_parts(values)])
        return True

    def _pdata_skips_state_machine(self) -> bool:
        """DT-1 only sends the PDU in the data transfer state with no event waiting before it; a
        handler of PDU events (-vv) needs pynetdicom's PDU object."""
        return (self.state_machine.current_state == "Sta6" and not self.event_queue.queue
                and not self.assoc.get_handlers(evt.EVT_PDU_SENT))

    @property
    def _send_lock(self) -> threading.RLock:
        return self.socket.send_lock

    def _read_unless_lent(self) -> bool:
        """pynetdicom's look for a PDU, unless a thread waiting for a message reads them itself."""
        if self._lent:
            return False
        with self._reading:
            return not self._lent and self._is_transport_event()

    def read_until_message(self, messages: queue.Queue, timeout: float | None) -> float:
        """Read the peer's PDUs in the calling thread until ``messages`` has one or ``timeout``
        seconds have passed; the seconds spent (0 where the DUL thread must read them).

        A thread waiting for a response (a sender whose peer grants no window: each file waits for
        the last one's answer) was woken by the DUL thread, itself woken by the peer: two thread
        hand-overs per object. Here the waiting thread reads the socket itself, and the socket
        stays lent to it until :meth:`return_socket` (the end of ``requests.sending``): the DUL
        thread leaves it out of its wait meanwhile, so it is not woken for each response either.
        Only P-DATA-TF PDUs in the data transfer state are read here, taken as the DUL takes them;
        anything else (an A-ABORT, a closed connection, a state change) gives the socket back to the
        DUL thread, whose answer the caller then waits for, as do TLS (an SSL connection is read and
        written by one thread) and -vv's PDU handlers.
        """
        if not self._may_lend():
            self.return_socket()
            return 0.0
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        if not self._lent:
            self._lent = True
            self._lends += 1
        with self._reading:
            while not messages.queue and self._may_lend() and self._peer_readable(deadline):
                self._read_pdu_data()
                self._idle_timer.restart()
        if not messages.queue:
            self.return_socket()
        return time.monotonic() - started

    def _may_lend(self) -> bool:
        socket_ = self.socket
        return (socket_ is not None and socket_.socket is not None and not socket_.over_tls
                and not self._kill_thread and not self.assoc.dimse._ready and self._takes_pdata_directly())

    def _peer_readable(self, deadline: float | None) -> bool:
        """Wait for the peer's bytes until ``deadline``; False when none came by then. Called holding
        ``_reading``, which the state machine's actions (those that close the socket) wait for."""
        if self.socket.read_ahead:
            return True
        left = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
        try:
            poller = select.poll()
            poller.register(self.socket.socket, select.POLLIN)
            return bool(poller.poll(left))
        except (OSError, ValueError):
            return False

    def return_socket(self) -> None:
        """The DUL thread reads the peer again (and looks at it anew: what its last wait saw may be
        read already)."""
        if not self._lent:
            return
        with self._reading:
            self._lent = False
            self._lends += 1
            self.socket.polled_readable = False
        self._wakeup.set()

    def _read_pdu_data(self) -> None:
        """pynetdicom's read of one PDU, with P-DATA-TF in the data transfer state taken directly.

        pynetdicom decodes every PDU into an object, a primitive and a state machine event; for
        P-DATA-TF in Sta6 that event's action (DT-2, PS3.8 9.2) only hands the PDVs to DIMSE and
        stays in Sta6, so :mod:`~pacs_cli.dimse.receive` takes them from the receive buffer. Other
        PDUs, other states, or handlers bound to PDU events go pynetdicom's way, as do the errors
        (Evt17 for a connection lost mid-PDU, Evt19 for a PDU that cannot be decoded).
        Staged C-STOREs held to be stored together are served before a read waits for the peer,
        and before a PDU goes pynetdicom's way (:meth:`PollReadySocket.serve_held`).
        """
        try:
            header = self.socket.recv(6)
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(header) != 6:  # closed between PDUs: the usual end of a connection
            self.event_queue.put("Evt17")
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type != 0x04:
            self.socket.serve_held()
        if not 0x01 <= pdu_type <= 0x07:
            LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        direct = pdu_type == 0x04 and self._takes_pdata_directly()  # consumed before the next read
        try:
            body = self.socket.recv(length, reuse=direct)
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            LOGGER.error(f"The received PDU is shorter than expected ({6 + len(body)} of {6 + length} bytes)")
            self.event_queue.put("Evt17")
            return
        if direct and self._takes_pdata_directly():  # again: held stores served during the read may end it
            self._receive_pdata(memoryview(body))
            return
        self.socket.serve_held()
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
        except Exception as exc:  # noqa: BLE001 - as pynetdicom: any decoding failure is Evt19
            LOGGER.error("Unable to decode the received PDU data: %s", exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)  # first: read by a borrowing thread, the event may be acted on at once
        self.event_queue.put(event)

    def _takes_pdata_directly(self) -> bool:
        """Whether DT-2 may be skipped for a P-DATA-TF PDU; asked twice per PDU on both sides, so the
        event queue is looked at without its lock (a deque's length, as ``Queue.empty`` reads it)."""
        assoc = self.assoc
        return (self.state_machine.current_state == "Sta6" and not self.event_queue.queue
                and not assoc.get_handlers(evt.EVT_DATA_RECV) and not assoc.get_handlers(evt.EVT_PDU_RECV))

    def _receive_pdata(self, body: memoryview) -> None:
        """DT-2 for one P-DATA-TF PDU; a malformed one is Evt19, as pynetdicom's decoder makes it."""
        try:
            pdvs = receive.split_pdvs(body)
            self.check_pdvs(pdvs)
        except ValueError as exc:
            LOGGER.error("Unable to decode the received PDU data: %s", exc)
            self.event_queue.put("Evt19")
            return
        if not self.assoc.dimse.receive_pdvs(pdvs):
            self.event_queue.put("Evt19")

    def check_pdvs(self, pdvs: list) -> None:
        """Raise ValueError to refuse a P-DATA-TF PDU's PDVs (a server's limits); here none."""

    def _release_waiting_acceptor(self) -> None:
        """End at once an acceptor whose connection closed before its A-ASSOCIATE-RQ was read.

        pynetdicom's acceptor thread waits ``acse_timeout`` for the request even after the DUL
        aborted or lost the connection (a refused request, a dropped oversized PDU), and holds a
        slot of ``maximum_associations`` meanwhile: a few such peers lock everyone out for 30 s.
        An empty answer is what that wait returns on a timeout, so it ends the same way, now.
        """
        assoc = self.assoc
        if assoc.is_acceptor and assoc.requestor.primitive is None and self.to_user_queue.empty():
            self.to_user_queue.put(None)

    def _abort_after(self, exc: Exception) -> None:
        """pynetdicom's own reaction to an exception in its loop: A-ABORT, stop both threads."""
        LOGGER.error("Exception in DUL.run(), aborting association")
        LOGGER.exception(exc)
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        self.socket.send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True

    def _wait_for_work(self) -> None:
        """Block until the peer sends, a primitive is queued, or the ARTIM timer runs out."""
        lends, lent = self._lends, self._lent  # lent: the peer's bytes are another thread's to wait for
        if not lent and self.socket is not None and self.socket.read_ahead:
            return  # the next PDU has come already
        if not lent and self.assoc.dimse._ready:  # stores held to be stored together: read on while the peer sends
            if self.socket is None or not self.socket.more_to_read():
                self.assoc.dimse.serve_ready()  # nothing waits for the peer while they wait for their answers
            return
        poller = select.poll()
        poller.register(self._wakeup, select.POLLIN)
        peer = self.socket.socket if self.socket is not None and not lent else None
        if peer is not None and peer.fileno() >= 0:
            poller.register(peer, select.POLLIN)
        woken = dict(poller.poll(min(IDLE_CHECK, _artim_left(self.artim_timer)) * 1000))
        if self._wakeup.fileno() in woken:
            self._wakeup.drain()  # only then: an empty drain is a system call and an exception
        if peer is not None and woken.get(peer.fileno(), 0) & select.POLLIN and self._lends == lends:
            # one poll per wait, not a second one in ``ready``; POLLIN only: a socket not connected
            # yet reports POLLHUP, and a flag left from then made a silent peer's first read block;
            # not when the socket was lent meanwhile: the borrower may have read what was there
            self.socket.polled_readable = True

    def kill_dul(self) -> None:
        self._kill_thread = True
        self._wakeup.set()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._wakeup.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True


def encode_pdata_tf(values: list[tuple[int, bytes]]) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5) of (presentation context ID, PDV value) items, as pynetdicom
    encodes it; each value starts with its message control header."""
    return b"".join(pdata_tf_parts(values))


def pdata_tf_parts(values: list[tuple[int, bytes]]) -> list:
    """The pieces of :func:`encode_pdata_tf`'s PDU, in order: headers, and the values themselves."""
    parts = [b""]
    for context_id, value in values:
        parts += (_PDV_ITEM.pack(len(value) + 1, context_id), value)
    parts[0] = _PDU_HEADER.pack(0x04, 0x00, sum(map(len, parts)))
    return parts


def _artim_left(timer) -> float:
    """Seconds until the ARTIM timer fires, or IDLE_CHECK when it is not running."""
    running = timer.timeout is not None and timer._start_time is not None and timer._end_time is None
    return max(timer.remaining, 0.0) if running else IDLE_CHECK


class EventDrivenAssociation(SendsStoredFiles, Association):
    """pynetdicom's association, waiting on an event instead of sleeping 1 ms a turn.

    It also makes pausing exact. pynetdicom's SCU methods close the reactor's checkpoint and
    wait for a ``_is_paused`` flag the reactor sets *before* it waits at the checkpoint, so a
    reactor that has just passed the checkpoint still reads as paused, goes on to take a message
    off the queue, and steals the response the SCU is waiting for (seen against DCMTK: a C-STORE
    or C-ECHO response lost, then a DIMSE timeout). Here the reactor takes its turns under a
    lock and gives up a turn when it finds the checkpoint closed inside it, and ``_is_paused``
    is True only when that lock is free: once it reads True, the reactor cannot touch the queue
    until the checkpoint opens again.
    """

    _wake: threading.Event
    _turn: threading.Lock
    _reacting: bool  # the reactor loop runs: the association is established, its handlers have run

    @property
    def _is_paused(self) -> bool:
        if threading.current_thread() is self:  # a handler of ours sending a request itself
            return True
        if not self._turn.acquire(blocking=False):
            return False
        self._turn.release()
        return True

    @_is_paused.setter
    def _is_paused(self, value: bool) -> None:
        """pynetdicom sets the flag where it believes the reactor is; the lock knows."""

    def _run_reactor(self) -> None:
        self._reacting = True
        worked = True
        while not self._kill:
            if not worked:
                self._wake.wait(IDLE_CHECK)
                self._wake.clear()
            self._reactor_checkpoint.wait()
            with self._turn:
                if not self._reactor_checkpoint.is_set():
                    continue  # paused between the wait and the lock: the SCU goes first
                worked = self._take_turn()
            if worked is None:
                return

    def _serve_request(self, msg, context_id: int) -> None:
        if not (getattr(msg, "_pacs_staged", False) and receive.serve_staged(self, msg, context_id)):
            super()._serve_request(msg, context_id)

    def _take_turn(self) -> bool | None:
        """One look at the queues: True if a message was served, None once the association ended."""
        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)
            receive.discard_staged(getattr(msg, "_dataset_file", None))
        if self._ended_by_release() or self._ended_by_abort() or self._ended_by_dul():
            return None
        if self.dul.idle_timer_expired():
            self._end_idle()
            return None
        return bool(msg)

    def _ended_by_release(self) -> bool:
        if not (self.is_established and self.acse.is_release_requested()):
            return False
        self.acse.send_release(is_response=True)
        logging.getLogger("pynetdicom.assoc").info("Association Released")
        self.is_released = True
        self.is_established = False
        evt.trigger(self, evt.EVT_RELEASED, {})
        self.kill()
        return True

    def _ended_by_abort(self) -> bool:
        if not self.acse.is_aborted():
            return False
        self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for subscribers, as in pynetdicom
        self.is_aborted = True
        self.is_established = False
        evt.trigger(self, evt.EVT_ABORTED, {})
        self.kill()
        return True

    def _ended_by_dul(self) -> bool:
        if self.dul.is_alive():
            return False
        self.kill()
        return True

    def _end_idle(self) -> None:
        logging.getLogger("pynetdicom.assoc").error("Network timeout reached")
        if self.network_timeout_response == "A-RELEASE":
            self.release()
        else:
            self.abort()
        self.kill()

    def kill(self) -> None:
        """As pynetdicom's, but waiting for the DUL to reach Sta1 on its state changes."""
        self._reactor_checkpoint.set()
        self._kill = True
        self.is_established = False
        self._wake.set()
        while self.dul.is_alive() and not self.dul.stop_dul():
            self.dul.state_changed.wait(0.01)
            self.dul.state_changed.clear()


def install(assoc: Association, dul_class: type[EventDrivenDUL] = EventDrivenDUL) -> None:
    """Make ``assoc`` event-driven; call before its threads start, after its socket is set."""
    dul = assoc.dul
    assoc._wake = threading.Event()
    assoc._turn = threading.Lock()
    assoc._reacting = False
    dul._wakeup = WakeupSocket()
    dul.state_changed = threading.Event()
    dul._reading = threading.Lock()  # held by whichever thread reads the peer's PDUs
    dul._lent = False  # a thread waiting for a message reads them (EventDrivenDUL.read_until_message)
    dul._lends = 0  # counts lendings and returns: the DUL's wait tells a stale readiness by it
    wake_dul, wake_assoc = dul._wakeup.set, _setter(assoc._wake)
    dul.to_provider_queue = SignallingQueue(wake_dul, dul.to_provider_queue.queue)
    dul.event_queue = SignallingQueue(wake_dul, dul.event_queue.queue)
    dul.to_user_queue = SignallingQueue(wake_assoc, dul.to_user_queue.queue)
    assoc.dimse.msg_queue = SignallingQueue(wake_assoc, assoc.dimse.msg_queue.queue)
    assoc._reactor_checkpoint = Checkpoint(assoc._wake)
    dul.__class__ = dul_class
    receive.install(assoc)
    dul._target = make_target(dul.run_reactor)  # pynetdicom bound its own loop as the thread's target
    assoc.__class__ = EventDrivenAssociation


def _setter(event: threading.Event):
    """``event.set`` for a queue's every put, skipped while the event is set: each set takes the
    event's lock and notifies, and a message queue fed per C-FIND response set it every time for a
    consumer that clears it only once it wakes (clear, then look at the queue: nothing is missed)."""
    def wake() -> None:
        if not event.is_set():
            event.set()

    return wake
