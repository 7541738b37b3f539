"""Option bundles shared by the commands: each hands the command one dataclass.

Names follow pynetdicom's apps with DCMTK's short aliases (``-aet``, ``-aec``, ``-to``, ``-ta``,
``-td``, ``-tn``, ``-pdu``), so people type what they already know. Every option can also come
from a ``PACS_*`` environment variable and from the config file.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import click

from pacs_cli.errors import UsageError

# 128 KiB, DCMTK's largest: large enough to stream, small enough to bound memory. At 256 KiB a
# receiver's kernel time was higher (this VM: a 268 MB object from `pacs storescu` 0.40 s against 0.32,
# 500 CT images 0.68 s against 0.61, medians of balanced pairs; bench/README.md).
DEFAULT_MAX_PDU = 131072
MIN_PDU, MAX_PDU = 4096, 16 * 1024 * 1024


@dataclass(frozen=True)
class Timeouts:
    """Seconds; ``connect`` covers TCP connect and TLS handshake, ``network`` an idle association."""

    connect: float = 10.0
    acse: float = 30.0
    dimse: float = 120.0
    network: float = 300.0


@dataclass(frozen=True)
class TLS:
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    ae_title: str

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Connection:
    """Everything an SCU needs to open an association."""

    peer: Peer
    calling_aet: str
    timeouts: Timeouts
    max_pdu: int
    tls: TLS | None


@dataclass(frozen=True)
class AccessPolicy:
    """Who may associate with an SCP. Empty tuples mean 'anyone'."""

    called_aets: tuple[str, ...] = ()
    calling_aets: tuple[str, ...] = ()
    networks: tuple = ()
    fault_reject: str | None = None  # "permanent" or "transient": reject every association

    def allows_address(self, host: str) -> bool:
        if not self.networks:
            return True
        address = ipaddress.ip_address(host.split("%")[0])
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class Listener:
    """Everything an SCP needs to listen."""

    host: str
    port: int
    ae_title: str
    timeouts: Timeouts
    max_pdu: int
    max_associations: int
    policy: AccessPolicy = AccessPolicy()
    tls: TLS | None = None
    max_per_address: int = 16
    max_object_mb: int = 0  # 0: no limit


def validate_ae_title(value: str) -> str:
    """PS3.5 AE VR: 1-16 characters of the default repertoire, no backslash or control characters."""
    title = value.strip()
    if not title:
        raise UsageError("an AE title cannot be empty or all spaces")
    if len(title) > 16:
        raise UsageError(f"AE title {value!r} is longer than 16 characters")
    if any(ch == "\\" or not 0x20 <= ord(ch) < 0x7F for ch in title):
        raise UsageError(f"AE title {value!r} may hold only printable ASCII and no backslash")
    return title


class AETitle(click.ParamType):
    name = "AETITLE"

    def convert(self, value, param, ctx):
        try:
            return validate_ae_title(str(value))
        except UsageError as exc:
            self.fail(exc.message, param, ctx)


AE_TITLE = AETitle()
SECONDS = click.FloatRange(min=0.1)


def _timeout_options(defaults: Timeouts):
    return [
        click.option("-to", "--connection-timeout", type=SECONDS, default=defaults.connect,
                     show_default=True, envvar="PACS_CONNECTION_TIMEOUT", show_envvar=True,
                     help="Seconds to wait for the TCP connection and TLS handshake."),
        click.option("-ta", "--acse-timeout", type=SECONDS, default=defaults.acse,
                     show_default=True, envvar="PACS_ACSE_TIMEOUT", show_envvar=True,
                     help="Seconds to wait for association negotiation and release."),
        click.option("-td", "--dimse-timeout", type=SECONDS, default=defaults.dimse,
                     show_default=True, envvar="PACS_DIMSE_TIMEOUT", show_envvar=True,
                     help="Seconds to wait for each DIMSE response (retrieves send one per sub-operation)."),
        click.option("-tn", "--network-timeout", type=SECONDS, default=defaults.network,
                     show_default=True, envvar="PACS_NETWORK_TIMEOUT", show_envvar=True,
                     help="Seconds an association may stay silent before it is aborted."),
    ]


def _tls_options():
    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    return [
        click.option("--tls-cert", type=path, envvar="PACS_TLS_CERT", show_envvar=True,
                     help="Our certificate (PEM); with --tls-key, for mutual TLS."),
        click.option("--tls-key", type=path, envvar="PACS_TLS_KEY", show_envvar=True,
                     help="The private key of --tls-cert (PEM)."),
        click.option("--tls-ca", type=path, envvar="PACS_TLS_CA", show_envvar=True,
                     help="CA certificates (PEM) to verify the peer with."),
        click.option("--tls", "use_tls", is_flag=True, envvar="PACS_TLS", show_envvar=True,
                     help="Use TLS (implied by any --tls-* option); system CAs unless --tls-ca."),
    ]


def _pdu_option():
    return click.option("-pdu", "--max-pdu", type=click.IntRange(MIN_PDU, MAX_PDU),
                        default=DEFAULT_MAX_PDU, show_default=True, envvar="PACS_MAX_PDU",
                        show_envvar=True, help="Largest PDU we accept, in bytes.")


def _apply(func, decorators):
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def connection_options(defaults: Timeouts = Timeouts(), optional: bool = False):
    """Add HOST PORT / --peer, AE titles, timeouts, max PDU and TLS; pass ``connection``.

    With ``optional``, a command given neither gets ``connection=None`` (``pacs find --db``).
    """

    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, host, port, peer, calling_aet, called_aet, connection_timeout,
                    acse_timeout, dimse_timeout, network_timeout, max_pdu, tls_cert, tls_key,
                    tls_ca, use_tls, **kwargs):
            ctx = click.get_current_context()
            timeouts = Timeouts(connection_timeout, acse_timeout, dimse_timeout, network_timeout)
            tls = TLS(tls_cert, tls_key, tls_ca) if use_tls or tls_cert or tls_key or tls_ca else None
            absent = not (host or port or peer)
            kwargs["connection"] = None if optional and absent else _resolve(
                ctx, host, port, peer, calling_aet, called_aet, timeouts, max_pdu, tls)
            return func(*args, **kwargs)

        return _apply(wrapper, [
            click.argument("host", required=False),
            click.argument("port", required=False, type=click.IntRange(1, 65535)),
            click.option("--peer", metavar="NAME", envvar="PACS_PEER", show_envvar=True,
                         help="A peer named in the config file, in place of HOST PORT."),
            click.option("-aet", "--calling-aet", type=AE_TITLE, default="PACS", show_default=True,
                         envvar="PACS_CALLING_AET", show_envvar=True, help="Our AE title."),
            click.option("-aec", "--called-aet", type=AE_TITLE, default="ANY-SCP", show_default=True,
                         envvar="PACS_CALLED_AET", show_envvar=True,
                         help="The peer's AE title (default: the --peer's, else ANY-SCP)."),
            *_timeout_options(defaults),
            _pdu_option(),
            *_tls_options(),
        ])

    return decorator


def _resolve(ctx, host, port, peer_name, calling_aet, called_aet, timeouts, max_pdu, tls):
    """Combine HOST PORT or --peer with the options; -aec given as option or env beats the peer's title."""
    if peer_name:
        if host or port:
            raise click.UsageError("give either HOST PORT or --peer, not both", ctx)
        entry = ctx.find_root().obj.config.peer(peer_name)
        if not given_explicitly(ctx, "called_aet"):
            called_aet = validate_ae_title(entry.ae_title)
        host, port = entry.host, entry.port
        if tls is None and (entry.tls or entry.tls_ca or entry.tls_cert):
            tls = TLS(*(Path(p) if p else None for p in (entry.tls_cert, entry.tls_key, entry.tls_ca)))
    elif not host or not port:
        raise click.UsageError("missing HOST and PORT (or --peer NAME)", ctx)
    if tls and bool(tls.cert) != bool(tls.key):
        raise click.UsageError("--tls-cert and --tls-key go together", ctx)
    return Connection(Peer(host, port, called_aet), calling_aet, timeouts, max_pdu, tls)


def given_explicitly(ctx, name: str) -> bool:
    """True when the user typed the option or set its environment variable."""
    source = ctx.get_parameter_source(name)
    return source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


class Network(click.ParamType):
    name = "NETWORK"

    def convert(self, value, param, ctx):
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            self.fail(f"{value!r} is not an IP address or network (e.g. 10.0.0.0/8)", param, ctx)


def listener_options(default_port: int = 11112, default_aet: str = "PACS"):
    """Options every SCP shares: where to listen, who may connect, timeouts, TLS; pass ``listener``."""

    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, host, port, ae_title, connection_timeout, acse_timeout, dimse_timeout,
                    network_timeout, max_pdu, tls_cert, tls_key, tls_ca, use_tls, max_associations,
                    max_per_address, max_object_mb, accept_called_aet, allow_calling_aet, allow_ip, fault_reject,
                    **kwargs):
            timeouts = Timeouts(connection_timeout, acse_timeout, dimse_timeout, network_timeout)
            tls = TLS(tls_cert, tls_key, tls_ca) if use_tls or tls_cert or tls_key or tls_ca else None
            policy = AccessPolicy(tuple(accept_called_aet), tuple(allow_calling_aet), tuple(allow_ip),
                                  fault_reject)
            kwargs["listener"] = Listener(host, port, ae_title, timeouts, max_pdu, max_associations, policy, tls,
                                          max_per_address, max_object_mb)
            return func(*args, **kwargs)

        return _apply(wrapper, [
            click.option("--host", default="0.0.0.0", show_default=True, envvar="PACS_LISTEN_HOST",
                         show_envvar=True, help="Address to listen on."),
            click.option("-p", "--port", type=click.IntRange(0, 65535), default=default_port,
                         show_default=True, envvar="PACS_PORT", show_envvar=True,
                         help="Port to listen on; 0 picks a free port and prints it."),
            click.option("-aet", "--ae-title", type=AE_TITLE, default=default_aet, show_default=True,
                         envvar="PACS_AE_TITLE", show_envvar=True, help="Our AE title."),
            *_timeout_options(Timeouts()),
            _pdu_option(),
            *_tls_options(),
            click.option("--max-associations", type=click.IntRange(1, 500), default=32, show_default=True,
                         help="Associations served at once; more are rejected as transient."),
            click.option("--max-per-address", type=click.IntRange(1, 500), default=16, show_default=True,
                         help="Connections open at once from one IP address; more are closed at once."),
            click.option("--max-object-mb", type=click.IntRange(0), default=0, show_default=True,
                         help="Abort an association whose dataset grows past this many MB (0: no limit)."),
            click.option("--accept-called-aet", type=AE_TITLE, multiple=True, metavar="AETITLE",
                         help="Answer only to these called AE titles (repeatable; default: any)."),
            click.option("--allow-calling-aet", type=AE_TITLE, multiple=True, metavar="AETITLE",
                         help="Accept only these calling AE titles (repeatable; default: any)."),
            click.option("--allow-ip", type=Network(), multiple=True,
                         help="Accept connections only from these addresses or networks (repeatable)."),
            click.option("--fault-reject", type=click.Choice(["permanent", "transient"]),
                         help="Fault injection: reject every association."),
        ])

    return decorator


def run_options(func):
    """When an SCP stops by itself and what it records: --ready-file, --exit-after, --idle-exit, --events,
    --audit-log."""
    return _apply(func, [
        click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write HOST:PORT here once listening."),
        click.option("--exit-after", type=click.IntRange(min=1), metavar="N",
                     help="Stop after N objects have been stored."),
        click.option("--idle-exit", type=click.FloatRange(min=0.1), metavar="SECONDS",
                     help="Stop after this long with no association."),
        click.option("--events", type=click.Path(dir_okay=False, path_type=Path),
                     help="Append one JSON line per association and per object to this file."),
        click.option("--audit-log", type=click.Path(dir_okay=False, path_type=Path), envvar="PACS_AUDIT_LOG",
                     show_envvar=True,
                     help="Append an audit record (PS3.15 A.5 / IHE ATNA fields, JSON lines) per event."),
    ])


def archive_options(func):
    """The archive directory and its index, shared by storescp, index and find --db."""
    return _apply(func, [
        click.option("--dir", "archive_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=Path("archive"), show_default=True, envvar="PACS_ARCHIVE_DIR",
                     show_envvar=True, help="Archive directory."),
        click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
                     envvar="PACS_DB", show_envvar=True,
                     help="Index database (default: ARCHIVE/index.sqlite)."),
    ])
