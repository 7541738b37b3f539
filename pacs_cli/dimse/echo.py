"""Verification service (PS3.4 Annex A): C-ECHO."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pynetdicom import build_context
from pynetdicom.sop_class import Verification

from pacs_cli.dimse.ae import associate
from pacs_cli.errors import AssociationAborted, NetworkTimeout
from pacs_cli.options import Connection


@dataclass(frozen=True)
class EchoResult:
    number: int
    status: int
    seconds: float


def echo(connection: Connection, repeat: int = 1, interval: float = 0.0):
    """Yield one :class:`EchoResult` per C-ECHO, all over one association."""
    with associate(connection, [build_context(Verification)]) as assoc:
        for number in range(1, repeat + 1):
            if number > 1 and interval:
                time.sleep(interval)
            yield send_echo(assoc, number, connection)


def send_echo(assoc, number: int, connection: Connection) -> EchoResult:
    start = time.perf_counter()
    rsp = assoc.send_c_echo(msg_id=number)
    seconds = time.perf_counter() - start
    if "Status" not in rsp:
        if assoc.is_aborted:
            raise AssociationAborted(f"{connection.peer} aborted the association during C-ECHO")
        raise NetworkTimeout(
            f"no C-ECHO response from {connection.peer} within {connection.timeouts.dimse:g} s",
            "raise -td",
        )
    return EchoResult(number, rsp.Status, seconds)
