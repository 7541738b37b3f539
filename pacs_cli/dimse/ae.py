"""Application entities and the one way every SCU opens an association.

:func:`associate` builds a requestor AE from a :class:`~pacs_cli.options.Connection`, turns every
way an association can fail into a typed :mod:`pacs_cli.errors` exception (exit code 3) with the
reason in words, and always releases or aborts, then shuts the AE down: pynetdicom's DUL thread
is not a daemon, so a forgotten association would keep the process alive.
"""

from __future__ import annotations

import logging
import socket
import ssl
from contextlib import contextmanager
from typing import Iterator

from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT
from pynetdicom.transport import AddressInformation

from pacs_cli.dimse import reactor
from pacs_cli.dimse import tls as tls_contexts
from pacs_cli.errors import (
    AssociationAborted,
    AssociationRejected,
    ConnectionFailed,
    NetworkError,
    NetworkTimeout,
    NoAcceptableContexts,
)
from pacs_cli.options import Connection, Timeouts

log = logging.getLogger("pacs_cli.dimse")

# (result source, reason) -> what to try; PS3.8 9.3.4 Table 9-21.
REJECTION_HINTS = {
    (1, 2): "the peer does not speak the DICOM application context",
    (1, 3): "the peer does not know our AE title: check -aet, or add it to the peer's configuration",
    (1, 7): "check -aec",
    (2, 2): "the peer does not support this protocol version",
    (3, 1): "the peer is congested: try again later",
    (3, 2): "the peer has too many associations open: try again later",
}


def nodelay(sock: socket.socket) -> None:
    """Turn Nagle off: DIMSE writes small segments that otherwise wait 40 ms for a delayed ACK."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ClientSocket(reactor.PollReadySocket):
    """pynetdicom's requestor socket, with TCP_NODELAY and the reason a connect failed kept.

    pynetdicom only logs why ``connect`` failed; we keep the exception to tell the user.
    """

    failure: OSError | None = None

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        sock = super()._create_socket(address)
        nodelay(sock)
        return sock

    def connect(self, primitive) -> None:
        """As pynetdicom's, but the OSError is recorded (same events, same queue results)."""
        try:
            if self.tls_args:
                context, server_hostname = self.tls_args
                self.socket = context.wrap_socket(self.socket, server_side=False,
                                                  server_hostname=server_hostname)
            self.socket.settimeout(self.assoc.connection_timeout)
            self.socket.connect(primitive.address_info.as_tuple)
            self.socket.settimeout(None)  # as pynetdicom: reads are paced by select()
            self.assoc.requestor.address_info = AddressInformation.from_tuple(self.socket.getsockname())
            self._is_connected = True
            evt.trigger(self.assoc, evt.EVT_CONN_OPEN, {"address": primitive.address_info.as_tuple})
            primitive.result = "Evt2"  # transport connection confirmed
        except OSError as exc:
            self.failure = exc
            if self.socket:
                self._shutdown_socket()
                self.socket = None
            primitive.result = "Evt17"  # transport connection closed
        finally:
            self.provider_queue.put(primitive)
            self._ready.set()


class RequestorAE(AE):
    """An AE whose requestor associations use :class:`ClientSocket` and are event-driven, receiving
    and answering C-STOREs (C-GET) through :mod:`~pacs_cli.dimse.receive`.

    pynetdicom creates the socket after the association and before its threads start: the
    one moment both can be set up.
    """

    def _create_socket(self, assoc, address, tls_args):
        sock = ClientSocket(assoc, address=address)
        sock.tls_args = tls_args
        reactor.install(assoc)
        return sock


def configure_libraries() -> None:
    """Per-message costs off: pynetdicom's logging handlers and identifier dumps unless at -vv, and
    pydicom's value validation, which costs a third of a C-STORE's CPU in command sets alone. Tools
    that pass datasets through do not judge their values; the peer decides."""
    from pydicom import config

    from pynetdicom import _config

    debug = logging.getLogger("pacs_cli").getEffectiveLevel() <= logging.DEBUG
    _config.LOG_HANDLER_LEVEL = "standard" if debug else "none"
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = debug
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE


def make_ae(ae_title: str, timeouts: Timeouts, cls=AE) -> AE:
    """An AE with all four timeouts set: pynetdicom's default connect timeout is 'forever'."""
    configure_libraries()
    ae = cls(ae_title=ae_title)
    ae.connection_timeout = timeouts.connect
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    return ae


def resolve(host: str, port: int) -> str:
    """The IP address pynetdicom needs (it does not resolve names itself)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionFailed(f"cannot resolve host {host!r}: {exc.strerror}", "check the host name") from None
    return info[0][4][0]


@contextmanager
def associate(connection: Connection, contexts, evt_handlers=(), ext_neg=None) -> Iterator:
    """Yield an established association to ``connection.peer``; release it after, abort on error."""
    peer = connection.peer
    ae = make_ae(connection.calling_aet, connection.timeouts, cls=RequestorAE)
    received = []
    handlers = [(evt.EVT_ACSE_RECV, lambda event: received.append(event.primitive)), *evt_handlers]
    tls_args = (tls_contexts.client_context(connection.tls), None) if connection.tls else None
    try:
        assoc = ae.associate(resolve(peer.host, peer.port), peer.port, contexts=contexts,
                             ae_title=peer.ae_title, max_pdu=connection.max_pdu,
                             tls_args=tls_args, evt_handlers=handlers, ext_neg=ext_neg)
        _raise_unless_established(assoc, connection, received)
        log.info("association accepted by %s", peer)
        try:
            yield assoc
        except BaseException:
            assoc.abort()
            raise
        if assoc.is_established:
            assoc.release()
    finally:
        ae.shutdown()


def _raise_unless_established(assoc, connection: Connection, received: list) -> None:
    if assoc.is_established:
        return
    peer = connection.peer
    failure = getattr(assoc.dul.socket, "failure", None)
    if failure is not None:
        raise _connect_error(failure, connection)
    if assoc.is_rejected:
        raise _rejection(assoc.acceptor.primitive, peer)
    if any(isinstance(p, (A_ABORT, A_P_ABORT)) for p in received):
        raise AssociationAborted(f"{peer} aborted the association request", _abort_hint(connection))
    if assoc.acceptor.primitive is not None and assoc.acceptor.primitive.result == 0:
        proposed = sorted({cx.abstract_syntax.name for cx in assoc.requestor.requested_contexts})
        raise NoAcceptableContexts(
            f"{peer} accepted none of the proposed presentation contexts ({', '.join(proposed)})",
            "the peer does not offer this service, or not with these transfer syntaxes",
        )
    raise NetworkTimeout(
        f"no answer to the association request from {peer} within {connection.timeouts.acse:g} s",
        "check that the port is a DICOM port, or raise -ta",
    )


def _abort_hint(connection: Connection) -> str:
    """An abort before any answer is most often a TLS mismatch; say what to try."""
    if connection.tls is None:
        return "if the peer expects TLS, add --tls or --tls-ca"
    if connection.tls.cert is None:
        return "the peer may require a client certificate: add --tls-cert and --tls-key"
    return "the peer may not trust our certificate, or not accept TLS on this port"


def _connect_error(exc: OSError, connection: Connection) -> NetworkError:
    where = f"{connection.peer.host}:{connection.peer.port}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        return ConnectionFailed(f"TLS handshake with {where} failed: {reason}",
                                "check --tls-ca, --tls-cert and --tls-key, and that the peer speaks TLS")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return NetworkTimeout(f"cannot connect to {where}: no answer within {connection.timeouts.connect:g} s",
                              "check the address and firewall, or raise -to")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailed(f"cannot connect to {where}: connection refused",
                                "is the SCP running and listening on that port?")
    return ConnectionFailed(f"cannot connect to {where}: {exc.strerror or exc}")


def _rejection(primitive, peer) -> AssociationRejected:
    """PS3.8 A-ASSOCIATE-RJ result, source and reason, in words, with the likely fix."""
    hint = REJECTION_HINTS.get((primitive.result_source, primitive.diagnostic))
    words = f"{primitive.reason_str} [{primitive.result_str}, source: {primitive.source_str}]"
    return AssociationRejected(f"association rejected by {peer}: {words}", hint,
                               transient=primitive.result == 0x02)
