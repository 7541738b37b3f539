"""Assembling ``pacs mwl-scp``: Verification, Modality Worklist FIND and MPPS on one port, in front of
a :class:`~pacs_cli.worklist.db.WorklistDB` (as :mod:`pacs_cli.scp` assembles storescp)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from pacs_cli.audit import AuditLog
from pacs_cli.dimse import mpps, worklist
from pacs_cli.dimse.server import RunLimits, Server, Stats, association_handlers
from pacs_cli.errors import UsageError
from pacs_cli.hooks import EventLog
from pacs_cli.options import Listener
from pacs_cli.worklist.db import DB_NAME, WorklistDB


@dataclass(frozen=True)
class WorklistSettings:
    directory: Path
    db_path: Path | None = None
    events: Path | None = None
    audit_log: Path | None = None


def open_store(directory: Path, db_path: Path | None) -> WorklistDB:
    """The worklist database of ``directory`` (created with it), its files read in."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the worklist directory {directory}: {exc.strerror}") from None
    store = WorklistDB.open(db_path or directory / DB_NAME, directory)
    store.sync()
    return store


class WorklistSCP:
    def __init__(self, listener: Listener, settings: WorklistSettings):
        self.listener = listener
        self.store = open_store(settings.directory, settings.db_path)
        self.stats = Stats()
        self.events = EventLog(settings.events)
        self.audit = AuditLog(settings.audit_log, listener.ae_title)
        handlers = [
            *association_handlers(self.stats, self.events, self.audit),
            *worklist.handlers(self.store, self.events, self.audit),
            *mpps.handlers(self.store, self.events, self.audit, self.stats),
        ]
        contexts = [build_context(Verification), *worklist.worklist_contexts(), *mpps.mpps_contexts()]
        self.server = Server(listener, contexts, handlers, self.audit)

    def run(self, limits: RunLimits, on_ready) -> None:
        try:
            self.server.run(self.stats, limits, on_ready)
        finally:
            self.events.close()
            self.audit.close()
            self.store.close()
