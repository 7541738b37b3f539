"""TLS contexts for both roles, following the BCP 195 profile of PS3.15: TLS 1.2 or later."""

from __future__ import annotations

import ssl

from pacs_cli.errors import UsageError
from pacs_cli.options import TLS


def client_context(tls: TLS) -> ssl.SSLContext:
    """Verify the peer with --tls-ca (or the system CAs); present our certificate for mutual TLS.

    Host names are not checked: DICOM peers are configured by address and AE title, and their
    certificates rarely name the address (DCMTK does not check either).
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_str(tls.ca))
        ctx.check_hostname = False
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert:
            ctx.load_cert_chain(str(tls.cert), _str(tls.key))
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot load TLS certificates: {_reason(exc)}", "check --tls-cert/--tls-key/--tls-ca") from None
    return ctx


def server_context(tls: TLS) -> ssl.SSLContext:
    """Serve with our certificate; with --tls-ca, require and verify client certificates (mutual TLS)."""
    if not tls.cert or not tls.key:
        raise UsageError("a TLS server needs --tls-cert and --tls-key")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=_str(tls.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot load TLS certificates: {_reason(exc)}", "check --tls-cert/--tls-key/--tls-ca") from None
    return ctx


def _str(path) -> str | None:
    return str(path) if path else None


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
