"""The SCP side shared by every server command: listening, access control, TLS, graceful stop.

pynetdicom's server is extended only through its extension points: a server class (TCP_NODELAY on
accepted sockets, the address allow list before anything is read, the TLS handshake moved out of
the accept loop) and a request handler (our ACSE with the AE-title policy). Handlers stay plain
functions in their service modules.
"""

from __future__ import annotations

import copy
import logging
import os
import select
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.acse import ACSE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu import P_DATA_TF as P_DATA_TF_PDU
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from pacs_cli.dimse import reactor
from pacs_cli.dimse import tls as tls_contexts
from pacs_cli.dimse import window
from pacs_cli.dimse.ae import RequestorAE, make_ae, nodelay
from pacs_cli.errors import PacsError
from pacs_cli.audit import AuditLog
from pacs_cli.hooks import EventLog
from pacs_cli.options import DEFAULT_MAX_PDU, AccessPolicy, Listener

log = logging.getLogger("pacs_cli.scp")

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 Table 9-21.
REJECT_CALLED_AET = (0x01, 0x01, 0x07)
REJECT_CALLING_AET = (0x01, 0x01, 0x03)
REJECT_PERMANENT = (0x01, 0x01, 0x01)
REJECT_TRANSIENT = (0x02, 0x01, 0x01)

P_DATA_TF = 0x04
NON_DATA_PDU_LIMIT = 1024 * 1024  # an A-ASSOCIATE-RQ with hundreds of contexts is ~50 KB
PDU_SLACK = 64  # senders that count the PDV header a little differently still get through


class Stats:
    """Counters for the summary line, shared by all association threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self.associations = self.stored = self.bytes = self.failed = 0
        self.last_activity = time.monotonic()

    def add(self, **counts) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)
            self.last_activity = time.monotonic()

    def counts(self) -> dict[str, int]:
        """What :meth:`add` takes: a worker process's totals, for the parent's summary."""
        with self._lock:
            return {name: getattr(self, name) for name in ("associations", "stored", "bytes", "failed")}

    def summary(self) -> str:
        size = f"{self.bytes / 1e6:.1f} MB" if self.bytes >= 1e5 else f"{self.bytes} bytes"
        return (f"{self.associations} association{'s' * (self.associations != 1)}, "
                f"{self.stored} instance{'s' * (self.stored != 1)} stored ({size}), {self.failed} failed")


NO_AUDIT = AuditLog(None, "")


def security_alert(server, address: str, message: str, calling: str = "") -> None:
    """One warning line, and a Security Alert (PS3.15 A.5.3.11) in the audit log."""
    log.warning("%s", message)
    getattr(server, "audit", NO_AUDIT).security_alert(address, message, calling)


def association_handlers(stats: Stats, events: EventLog, audit: AuditLog = NO_AUDIT):
    """Log and record each association's start and end (one line each at -v)."""

    def established(event):
        stats.add(associations=1)
        _log_association(event, "association from %s@%s:%s to %s accepted", "association-accepted")
        _audit(event, accepted=True)

    def ended(event, how):
        _log_association(event, f"association from %s@%s:%s to %s {how}", f"association-{how}")
        if how != "rejected":  # a rejection is audited as a security alert where it is decided
            _audit(event, accepted=False)

    def _audit(event, accepted):
        audit.association(event.assoc.requestor.ae_title, event.assoc.requestor.address_info.address, accepted)

    def _log_association(event, message, name):
        assoc = event.assoc
        calling, called = assoc.requestor.ae_title, assoc.acceptor.ae_title
        address = assoc.requestor.address_info
        log.info(message, calling, address.address, address.port, called)
        events.write(name, calling_aet=calling, called_aet=called, address=address.address)

    return [
        (evt.EVT_ESTABLISHED, established),
        (evt.EVT_RELEASED, ended, ["released"]),
        (evt.EVT_ABORTED, ended, ["aborted"]),
        (evt.EVT_REJECTED, ended, ["rejected"]),
    ]


def rejection_for(policy: AccessPolicy, called: str, calling: str) -> tuple[int, int, int] | None:
    """The A-ASSOCIATE-RJ to send, or None to go on negotiating."""
    if policy.fault_reject:
        return REJECT_TRANSIENT if policy.fault_reject == "transient" else REJECT_PERMANENT
    if policy.called_aets and called not in policy.called_aets:
        return REJECT_CALLED_AET
    if policy.calling_aets and calling not in policy.calling_aets:
        return REJECT_CALLING_AET
    return None


def prefer_requestor_order(requested, supported) -> None:
    """Accept the transfer syntax the peer proposed first, not the first of ours.

    pynetdicom picks by the acceptor's order; a sender proposing [JPEG 2000, Explicit LE] for a
    JPEG 2000 file would then have to decompress. Taking the peer's preference keeps the
    object as it was sent, which is what an archive must store. ``supported`` is this
    association's own list, but its contexts are the server's (``SharedContexts``): a context
    reordered is replaced in the list by a copy, so no other association sees the order.
    """
    ours = {cx.abstract_syntax: number for number, cx in enumerate(supported)}
    for rq in requested:
        number = ours.pop(rq.abstract_syntax, None)  # the first context proposed for a SOP class decides
        if number is None:
            continue
        cx = supported[number]
        preferred = [ts for ts in rq.transfer_syntax if ts in cx.transfer_syntax]
        order = preferred + [ts for ts in cx.transfer_syntax if ts not in preferred]
        if order != cx.transfer_syntax:
            supported[number] = cx = copy.copy(cx)
            cx.transfer_syntax = order  # a new list: the server's context keeps its own


class SharedContexts(list):
    """The server's supported contexts, handed to each association without pynetdicom's deepcopy.

    pynetdicom deep-copies them for every association it accepts: ~6 ms for storescp's ~150
    contexts, a third of the CPU accepting an association cost. Negotiation only reads them,
    but for ``prefer_requestor_order``, which replaces what it changes with copies of its own.
    """

    def __deepcopy__(self, memo) -> list:
        return list(self)


class PolicyACSE(ACSE):
    """pynetdicom's ACSE, checking our AE-title policy first.

    pynetdicom can only require one called AE title (its own); we accept a list and answer
    with the title the peer called, as DCMTK's storescp does.
    """

    def __init__(self, assoc, policy: AccessPolicy):
        super().__init__(assoc)
        self.policy = policy

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        called, calling = request.called_ae_title.strip(), request.calling_ae_title.strip()
        self.requestor.ae_title = calling
        rejection = rejection_for(self.policy, called, calling)
        if rejection:
            address = self.requestor.address_info.address
            security_alert(self.assoc._server, address,
                           f"rejected association from {calling}@{address} to {called}", calling)
            self.send_reject(*rejection)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        self.acceptor.ae_title = called
        prefer_requestor_order(self.requestor.requested_contexts, self.acceptor.supported_contexts)
        super()._negotiate_as_acceptor()

    def _check_async_ops(self):
        """pynetdicom answers every proposal with the synchronous mode (1, 1); see window.grant."""
        return window.grant(self.requestor)


DEADLINE_SLACK = 1.0  # seconds a PDU read may run past its deadline (see GuardedSocket._socket_read)


class GuardedSocket(reactor.PollReadySocket):
    """pynetdicom's acceptor socket with the limits a server facing the network needs.

    pynetdicom reads whatever PDU length the peer announces and waits forever for it. Here a
    PDU longer than we advertised (PS3.8 D.1: the maximum length bounds P-DATA-TF PDUs) is
    refused before anything is buffered, and a whole PDU must arrive within ``pdu_deadline``
    seconds, so a peer sending six bytes and going quiet, or one byte every few seconds, is
    dropped. Raising OSError makes pynetdicom close the connection as for any transport error.
    """

    max_pdu = DEFAULT_MAX_PDU
    pdu_deadline = 30.0
    _pdu_type = None

    def recv(self, nr_bytes: int, reuse: bool = False) -> bytearray | memoryview:
        limit = self.max_pdu + PDU_SLACK if self._pdu_type == P_DATA_TF else NON_DATA_PDU_LIMIT
        if nr_bytes > 6 and nr_bytes > limit:
            security_alert(self.assoc._server, self._peer(),
                           f"dropped {self._peer()}: PDU of {nr_bytes} bytes announced, limit {limit}")
            raise OSError(f"PDU of {nr_bytes} bytes exceeds the limit of {limit}")
        self._deadline = time.monotonic() + self.pdu_deadline
        data = super().recv(nr_bytes, reuse)
        if nr_bytes == 6 and len(data) == 6:
            self._pdu_type = data[0]
        return data

    def _socket_read(self, view: memoryview) -> int:
        """One read by the PDU's deadline.

        The socket's timeout is set only when a read could otherwise run more than
        :data:`DEADLINE_SLACK` past the deadline: setting it is a system call, and with one per read
        it was a third of a PDU's system calls.
        """
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                security_alert(self.assoc._server, self._peer(),
                               f"dropped {self._peer()}: PDU not complete within {self.pdu_deadline:g} s")
                raise TimeoutError(f"PDU not received within {self.pdu_deadline:g} s")
            timeout = self.socket.gettimeout()
            if timeout is None or timeout > remaining + DEADLINE_SLACK:
                self.socket.settimeout(remaining)
            try:
                return super()._socket_read(view)
            except TimeoutError:  # a timeout left shorter than this PDU's: look at the deadline again
                self.socket.settimeout(max(self._deadline - time.monotonic(), 0.001))

    def _peer(self) -> str:
        address = self.assoc.requestor.address_info
        return f"{address.address}:{address.port}"


APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1, the only DICOM application context


class GuardedDUL(reactor.EventDrivenDUL):
    """pynetdicom's DUL, refusing an A-ASSOCIATE-RQ that pynetdicom would choke on.

    pynetdicom hangs on a presentation context without a transfer syntax and kills its reactor
    thread on an even context ID. Raising here lands in pynetdicom's own "invalid PDU" path
    (Evt19), so its state machine answers with an A-ABORT (PS3.8 9.3.1, Table 9-10).
    """

    max_object = 0  # bytes of one message's dataset; 0: no limit
    _object_bytes = 0

    def _decode_pdu(self, bytestream):
        pdu, event = super()._decode_pdu(bytestream)
        if isinstance(pdu, P_DATA_TF_PDU):
            self.check_pdvs([(item.presentation_context_id, item.presentation_data_value)
                             for item in pdu.presentation_data_value_items])
        if isinstance(pdu, A_ASSOCIATE_RQ):
            problem = association_request_problem(pdu)
            if problem:
                address = self.assoc.requestor.address_info
                security_alert(self.assoc._server, address.address,
                               f"aborted association request from {address.address}: {problem}")
                raise ValueError(problem)
        return pdu, event

    def check_pdvs(self, pdvs: list) -> None:
        """Refuse a dataset past ``max_object`` bytes while it arrives: received in chunks, an object
        costs no memory, but it can still fill the archive's disk; an A-ABORT ends it (PS3.8 9.3.8)."""
        if not self.max_object:
            return
        for _, value in pdvs:
            if value[0] & 0x01:  # the message control header: a command fragment starts a new message
                self._object_bytes = 0
                continue
            self._object_bytes += len(value) - 1
            if self._object_bytes > self.max_object:
                address = self.assoc.requestor.address_info.address
                security_alert(self.assoc._server, address,
                               f"aborted association from {address}: dataset larger than "
                               f"{self.max_object // 1_000_000} MB (--max-object-mb)")
                raise ValueError("dataset larger than --max-object-mb")


def association_request_problem(pdu) -> str | None:
    """What makes this A-ASSOCIATE-RQ unacceptable (PS3.8 9.3.2), or None."""
    try:
        request = pdu.to_primitive()
    except Exception as exc:  # noqa: BLE001 - pynetdicom raises ValueError, TypeError, ...
        return f"malformed: {exc}"
    if request.application_context_name != APPLICATION_CONTEXT:
        return f"application context {request.application_context_name} is not DICOM's"
    contexts = request.presentation_context_definition_list
    ids = [cx.context_id for cx in contexts]
    if not contexts or len(ids) != len(set(ids)):
        return "no presentation context, or duplicate context IDs"
    if any(not cx.abstract_syntax or not cx.transfer_syntax for cx in contexts):
        return "a presentation context without abstract or transfer syntax"
    return None


class PolicyRequestHandler(RequestHandler):
    """Runs the TLS handshake here, in the connection's own thread, under a deadline."""

    def handle(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.settimeout(self.server.handshake_timeout)
                self.request.do_handshake()
                self.request.settimeout(None)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "reason", None) or exc
                security_alert(self.server, self.client_address[0],
                               f"TLS handshake with {self.client_address[0]} failed: {reason}")
                return
        super().handle()

    def _create_association(self):
        assoc = super()._create_association()
        assoc.acse = PolicyACSE(assoc, self.server.policy)
        # pynetdicom builds its own socket object (and queues the connection event once);
        # we give that object our recv() rather than building a second one.
        GuardedSocket.adopt(assoc.dul.socket)
        reactor.install(assoc, dul_class=GuardedDUL)
        assoc.dul.max_object = self.server.max_object
        assoc.dul.socket.max_pdu = self.ae.maximum_pdu_size
        assoc.dul.socket.pdu_deadline = self.server.pdu_deadline
        return assoc


class PolicyServer(ThreadedAssociationServer):
    daemon_threads = True
    policy = AccessPolicy()
    handshake_timeout = 10.0
    pdu_deadline = 30.0
    max_per_address = 16
    max_object = 0
    listening_socket: socket.socket | None = None  # bound and listening already: shared by worker processes
    _last_accept = float("-inf")  # time.monotonic() of this server's last accept

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = SharedContexts(self.contexts)

    def server_bind(self) -> None:
        if self.listening_socket is None:
            super().server_bind()
            return
        self.socket.close()
        self.socket = self.listening_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.listening_socket is None:
            super().server_activate()

    def server_close(self) -> None:
        """A shared socket is only closed here: shutting it down would stop every worker's accepting."""
        if self.listening_socket is None:
            super().server_close()
        else:
            self.socket.close()

    def get_request(self):
        if self.listening_socket is not None:
            self._leave_it_to_a_less_busy_worker()
        client, address = self.socket.accept()  # BlockingIOError when another worker took it: ignored
        self._last_accept = time.monotonic()
        nodelay(client)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def _load(self) -> int:
        """The associations this worker serves, one more while the one accepted moments ago has no
        thread yet."""
        return len(self.active_associations) + (time.monotonic() - self._last_accept < JUST_ACCEPTED)

    def _leave_it_to_a_less_busy_worker(self) -> None:
        """Wait before accepting, longer the busier this worker is, while the connection is still
        there to take.

        Every worker sharing the socket is woken by a connection and any may take it, so two
        associations opened together landed in one worker about half the time and shared its one GIL
        while the other idled (`pacs storescu -a 2` into `--workers 2`: 2,900–3,800 small objects/s
        in those runs against 4,600–4,700 when split). An idle worker takes a connection at once, one
        serving N associations gives the others N × LOAD_GRACE (at most MAX_GRACE) to take it first.
        The price: while every worker is busy, each new connection waits that long to be accepted.
        """
        deadline = time.monotonic() + min(self._load() * LOAD_GRACE, MAX_GRACE)
        while time.monotonic() < deadline and _pending(self.socket):
            time.sleep(0.001)

    def verify_request(self, request, client_address) -> bool:
        """Before anything is read: the allow list, and a cap per address.

        The cap keeps one host's idle or half-open connections from filling
        ``maximum_associations`` (which pynetdicom counts before negotiation) and locking
        everyone else out.
        """
        host = client_address[0]
        if not self.policy.allows_address(host):
            security_alert(self, host, f"refused connection from {host}: address not allowed")
            return False
        open_here = sum(1 for assoc in self.active_associations if assoc.requestor.address_info.address == host)
        if open_here >= self.max_per_address:
            security_alert(self, host, f"refused connection from {host}: {open_here} connections already open from there")
            return False
        return True


LOAD_GRACE = 0.01  # seconds per association it serves that a worker leaves a new connection to the others
MAX_GRACE = 0.05
JUST_ACCEPTED = 0.1  # seconds after an accept that count as an association before its thread shows


def _pending(listening: socket.socket) -> bool:
    """A connection waits on the listening socket (readable), not yet accepted by any worker."""
    poller = select.poll()  # not select.select: a busy server's descriptors may pass 1024
    poller.register(listening, select.POLLIN)
    return bool(poller.poll(0))


@dataclass(frozen=True)
class RunLimits:
    """When a server stops by itself (CI jobs): after N objects, or after S idle seconds."""

    exit_after: int | None = None
    idle_exit: float | None = None
    ready_file: Path | None = None


class Server:
    """A running SCP: start it, wait for it, stop it gracefully."""

    def __init__(self, listener: Listener, contexts, handlers, audit: AuditLog = NO_AUDIT,
                 listening_socket: socket.socket | None = None):
        self.listener = listener
        self.audit = audit
        self.ae: AE = make_ae(listener.ae_title, listener.timeouts, cls=RequestorAE)  # C-MOVE sub-associations as pacs's own
        self.ae.maximum_pdu_size = listener.max_pdu
        self.ae.maximum_associations = listener.max_associations
        ssl_context = tls_contexts.server_context(listener.tls) if listener.tls else None
        server_class = PolicyServer
        if listening_socket is not None:
            server_class = type("SharedSocketServer", (PolicyServer,), {"listening_socket": listening_socket})
        try:
            self.server = self.ae.make_server(
                (listener.host, listener.port), evt_handlers=list(handlers), contexts=contexts,
                ssl_context=ssl_context, server_class=server_class, request_handler=PolicyRequestHandler)
        except OSError as exc:
            raise _cannot_listen(listener, exc) from None
        self.server.policy = listener.policy
        self.server.audit = audit
        self.server.handshake_timeout = listener.timeouts.connect
        self.server.pdu_deadline = listener.timeouts.acse
        self.server.max_per_address = listener.max_per_address
        self.server.max_object = listener.max_object_mb * 1_000_000
        self.ae._servers.append(self.server)
        self._thread = threading.Thread(target=self.server.serve_forever, name="pacs-accept", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    def start(self) -> None:
        self._thread.start()

    def active(self) -> int:
        return len(self.server.active_associations)

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let running associations finish for up to ``grace`` s, abort the rest."""
        self.server.shutdown()
        deadline = time.monotonic() + grace
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.ae.shutdown()

    def run(self, stats: Stats, limits: RunLimits, on_ready) -> None:
        """Serve until SIGTERM, Ctrl-C or a limit; then stop gracefully (KeyboardInterrupt re-raised)."""
        # A list, not a threading.Event: the handler runs in the main thread, and Event.set() there can
        # deadlock on the lock the interrupted Event.wait() holds (seen: a storescp deaf to SIGTERM).
        stop: list[int] = []
        previous = signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
        self.start()
        self.audit.application(started=True)
        host, port = self.address
        if limits.ready_file:
            write_atomically(limits.ready_file, f"{host}:{port}\n")
        on_ready(host, port)
        try:
            while not stop and not self._limit_reached(stats, limits):
                time.sleep(0.1)
        finally:
            self.stop()
            self.audit.application(started=False)
            signal.signal(signal.SIGTERM, previous)

    def _limit_reached(self, stats: Stats, limits: RunLimits) -> bool:
        if limits.exit_after is not None and stats.stored >= limits.exit_after:
            return True
        idle = time.monotonic() - stats.last_activity
        return limits.idle_exit is not None and not self.active() and idle >= limits.idle_exit


def bind_shared(listener: Listener) -> socket.socket:
    """A socket bound to the listener's address and listening, for worker processes to share.

    Non-blocking: every worker is woken by a connection and all but one find nothing to accept,
    which socketserver takes in its stride (an OSError from accept is ignored).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listener.host, listener.port))
        sock.listen(PolicyServer.request_queue_size)
    except OSError as exc:
        sock.close()
        raise _cannot_listen(listener, exc) from None
    sock.setblocking(False)
    return sock


def _cannot_listen(listener: Listener, exc: OSError) -> PacsError:
    return PacsError(f"cannot listen on {listener.host}:{listener.port}: {exc.strerror}",
                     "is another SCP already using that port? --port 0 picks a free one")


def write_atomically(path: Path, text: str) -> None:
    """A CI script polling for the file never reads it half-written."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
