"""``pacs storescp --workers N``: one port served by N processes, each a whole storage SCP.

One process serves its associations under one GIL, so parallel associations shared one core however
many the machine had (measured: ``--associations 2`` no faster than 1 into one receiver). Here the
parent binds the port and forks N workers that accept on that one socket (the kernel hands each
connection to one of them), as DCMTK's ``storescp --fork`` gives each association a process of its
own, but with the processes started once. Each worker opens the archive itself: the index is SQLite
in WAL mode, whose write transactions (BEGIN IMMEDIATE) serialise the workers' stores, duplicate
check included, and the staging directory's lock keeps a worker from sweeping another's files.

The parent forwards SIGTERM (and Ctrl-C, which the workers ignore) as SIGTERM to every worker, each
of which stops gracefully, and adds their counts up for the summary line.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import time
from dataclasses import dataclass

from pacs_cli.archive import Archive
from pacs_cli.audit import AuditLog
from pacs_cli.dimse.server import RunLimits, Stats, bind_shared, write_atomically
from pacs_cli.errors import PacsError
from pacs_cli.hooks import EventLog
from pacs_cli.options import Listener

log = logging.getLogger("pacs_cli.scp")

STOP_GRACE = 35.0  # seconds a worker has to stop: its own 30 s for associations in flight, and some


@dataclass
class AuditFailures:
    """The workers' failed audit records, added up (what ``serve`` checks after the run)."""

    failures: int = 0


class WorkerPool:
    """Runs a :class:`~pacs_cli.scp.StorageSCP` in each of ``count`` processes on one listening socket."""

    def __init__(self, listener: Listener, settings, count: int):
        self.listener, self.settings, self.count = listener, settings, count
        # What a worker opens is checked here first, so a bad path is the same usage error as without workers.
        archive = Archive.open(settings.archive_dir, settings.db_path, template=settings.template,
                               on_duplicate=settings.on_duplicate, fsync=settings.fsync)  # migrated and swept too
        self.root = archive.root
        archive.close()
        EventLog(settings.events).close()
        AuditLog(settings.audit_log, listener.ae_title).close()
        self.socket = bind_shared(listener)
        self.stats = Stats()
        self.audit = AuditFailures()

    def run(self, limits: RunLimits, on_ready) -> None:
        """Serve until SIGTERM or Ctrl-C (re-raised as KeyboardInterrupt), or until a worker dies."""
        context = multiprocessing.get_context("fork")
        channel = context.Queue()
        workers = [context.Process(target=_work, args=(self.listener, self.settings, self.socket, channel, n),
                                   name=f"pacs-worker-{n}") for n in range(self.count)]
        stop: list[int] = []
        previous = signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
        try:
            for worker in workers:
                worker.start()
            self._wait_until_ready(workers, channel)
            host, port = self.socket.getsockname()[:2]
            if limits.ready_file:
                write_atomically(limits.ready_file, f"{host}:{port}\n")
            on_ready(host, port)
            while not stop and all(worker.is_alive() for worker in workers):
                self._take_reports(channel, timeout=0.1)
            if not stop:
                raise PacsError("a worker process ended unexpectedly; the others were stopped",
                                "its error is above")
        finally:
            self._stop(workers, channel)
            self.socket.close()
            signal.signal(signal.SIGTERM, previous)

    def _wait_until_ready(self, workers, channel) -> None:
        ready = 0
        while ready < len(workers):
            if not all(worker.is_alive() for worker in workers):
                raise PacsError("a worker process could not start", "its error is above")
            ready += self._take_reports(channel, timeout=0.1).count("ready")

    def _take_reports(self, channel, timeout: float) -> list[str]:
        """The workers' messages that came within ``timeout``: 'ready', or their counts when they end."""
        kinds = []
        try:
            while True:
                kind, payload = channel.get(timeout=timeout)
                kinds.append(kind)
                if kind == "done":
                    counts, audit_failures = payload
                    self.stats.add(**counts)
                    self.audit.failures += audit_failures
                timeout = 0
        except queue.Empty:
            return kinds

    def _stop(self, workers, channel) -> None:
        """SIGTERM to every worker still running, their counts taken as they end; killed past the grace."""
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(worker.is_alive() for worker in workers) and time.monotonic() < deadline:
            self._take_reports(channel, timeout=0.1)
        for worker in workers:
            if worker.is_alive():
                log.warning("worker %s did not stop within %.0f s: killed", worker.name, STOP_GRACE)
                worker.kill()
            worker.join()
        self._take_reports(channel, timeout=0.2)


def _work(listener: Listener, settings, sock, channel, number: int) -> None:
    """One worker: a whole storage SCP on the shared socket, until SIGTERM; an error is one line."""
    from pacs_cli.scp import StorageSCP

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler came with the fork; the SCP sets its own
    _stop_with(parent=os.getppid())
    try:
        scp = StorageSCP(listener, settings, sock)
    except Exception as exc:  # noqa: BLE001 - reported as one line, the parent stops the others
        log.error("worker %d could not start: %s", number, exc)
        log.debug("worker %d", number, exc_info=exc)
        raise SystemExit(1) from None
    try:
        scp.run(RunLimits(), lambda host, port: channel.put(("ready", number)))
    finally:
        channel.put(("done", (scp.stats.counts(), scp.audit.failures)))
        channel.close()
        channel.join_thread()


PR_SET_PDEATHSIG = 1  # prctl(2): a signal for this process when its parent ends


def _stop_with(parent: int) -> None:
    """SIGTERM this worker when the parent ends, however it ends (kill -9 too): an orphan would go on
    accepting on the port with nobody to stop it. Linux only; elsewhere the parent's own stop is all."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
