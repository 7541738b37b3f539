"""Assembling an SCP process: the archive, the services on one port, the hooks, the settings
pynetdicom only takes process-wide."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import _config, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from pacs_cli.archive import Archive
from pacs_cli.audit import AuditLog
from pacs_cli.dimse import find, mpps, retrieve, store, worklist
from pacs_cli.dimse.server import RunLimits, Server, Stats, association_handlers
from pacs_cli.hooks import CommandRunner, EventLog
from pacs_cli.options import Listener
from pacs_cli.worklist.scp import open_store as open_worklist


@dataclass(frozen=True)
class StoreSettings:
    archive_dir: Path
    db_path: Path | None
    template: str  # "hierarchical", "flat" or a path template
    on_duplicate: str
    fsync: bool
    events: Path | None
    exec_on_store: str | None
    faults: store.Faults
    query: bool = True  # answer Patient/Study Root C-FIND, C-MOVE and C-GET from the archive on the same port
    max_results: int | None = None  # C-FIND: more matches than this end with 0xA700
    worklist: Path | None = None  # also serve Modality Worklist and MPPS from this item directory
    audit_log: Path | None = None
    destinations: Mapping[str, retrieve.Destination] = field(default_factory=dict)  # C-MOVE, by AE title


def configure_pynetdicom(staging_dir: Path) -> None:
    """Receive C-STOREs straight into files in the archive's own filesystem."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(staging_dir)  # pynetdicom's chunked receive writes its temp file here


class StorageSCP:
    """storescp: Verification, Storage and (unless ``query`` is off) Q/R FIND, MOVE and GET on one port,
    in front of an :class:`Archive`."""

    def __init__(self, listener: Listener, settings: StoreSettings, listening_socket=None):
        self.listener = listener
        self.archive = Archive.open(settings.archive_dir, settings.db_path, template=settings.template,
                                    on_duplicate=settings.on_duplicate, fsync=settings.fsync)
        self.archive.index.checkpoint_in_background()
        configure_pynetdicom(self.archive.staging_dir)
        self.stats = Stats()
        self.events = EventLog(settings.events)
        self.runner = CommandRunner(settings.exec_on_store)
        self.audit = AuditLog(settings.audit_log, listener.ae_title)
        handlers = [
            *association_handlers(self.stats, self.events, self.audit),
            *store.handlers(self.archive, self.stats, self.events, self.runner, settings.faults, self.audit),
            *[(ended, lambda event: self.archive.index.release_thread()) for ended in (evt.EVT_RELEASED,
                                                                                     evt.EVT_ABORTED)],
        ]
        contexts = [build_context(Verification), *store.storage_contexts()]
        find_services = []
        if settings.query:
            find_services.append((find.handlers(self.archive.index, find.QueryOptions(settings.max_results),
                                                 self.events, self.audit), find.query_contexts()))
            handlers += retrieve.handlers(self.archive, retrieve.RetrieveOptions(settings.destinations,
                                                                                 listener.max_pdu), self.events, self.audit)
            contexts += retrieve.retrieve_contexts()
            for cx in contexts:
                # C-GET sends C-STOREs back to the requester: accept the SCP role it proposes for a
                # storage class, and the plain SCU role too (PS3.7 D.3.3.4)
                if cx.abstract_syntax not in (Verification, *(m.uid for m in retrieve.BY_UID.values())):
                    cx.scu_role = cx.scp_role = True
        self.worklist = None
        if settings.worklist:
            self.worklist = open_worklist(settings.worklist, None)
            find_services.append((worklist.handlers(self.worklist, self.events, self.audit),
                                  worklist.worklist_contexts()))
            handlers += mpps.handlers(self.worklist, self.events, self.audit, self.stats)
            contexts += mpps.mpps_contexts()
        for service_handlers, service_contexts in find_services:
            contexts += service_contexts
        handlers += route_c_find(find_services)
        self.server = Server(listener, contexts, handlers, self.audit, listening_socket)

    def run(self, limits: RunLimits, on_ready) -> None:
        try:
            self.server.run(self.stats, limits, on_ready)
        finally:
            self.runner.close()
            self.events.close()
            self.audit.close()
            self.archive.close()
            if self.worklist is not None:
                self.worklist.close()


def route_c_find(services) -> list:
    """pynetdicom binds one EVT_C_FIND handler per AE: send each request to the service of its SOP class.

    ``services`` holds (handlers, contexts) pairs; every other event of a service is bound as it is.
    """
    routes, others = {}, []
    for service_handlers, service_contexts in services:
        for entry in service_handlers:
            if entry[0] is evt.EVT_C_FIND:
                routes.update({str(cx.abstract_syntax): entry for cx in service_contexts})
            else:
                others.append(entry)
    if not routes:
        return others

    def handle_find(event):
        _, handler, args = routes[str(event.request.AffectedSOPClassUID)]
        return handler(event, *args)

    return [*others, (evt.EVT_C_FIND, handle_find)]
