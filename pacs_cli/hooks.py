"""What an SCP tells the outside world: the JSON-lines event log and ``--exec-on-store`` commands.

Both serve CI jobs that assert on what arrived; neither may slow an association down.
"""

from __future__ import annotations

import json
import logging
import queue
import shlex
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path

from pacs_cli.errors import UsageError

log = logging.getLogger("pacs_cli.scp")

EXEC_PLACEHOLDERS = ("path", "calling_aet", "study_uid", "series_uid", "sop_instance_uid", "sop_class_uid")


class JsonLines:
    """An append-only file of JSON objects, one per line, each flushed as it is written.

    A failed write is logged and counted, never silently dropped, and never raised into the
    association that caused it.
    """

    def __init__(self, path: Path | None, what: str):
        self.what = what
        self.failures = 0
        self._lock = threading.Lock()
        try:
            self._file = open(path, "a", encoding="utf-8") if path else None
        except OSError as exc:
            raise UsageError(f"cannot open {what} {path}: {exc.strerror}") from None

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def append(self, record: dict) -> None:
        if self._file is None:
            return
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except OSError as exc:
                self.failures += 1
                log.error("%s: a record could not be written (%s)", self.what, exc.strerror or exc)

    def close(self) -> None:
        if self._file:
            try:
                self._file.close()
            except OSError as exc:
                log.error("%s: cannot close (%s)", self.what, exc.strerror or exc)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class EventLog(JsonLines):
    """``--events``: one line per association and per object, for CI jobs to assert on."""

    def __init__(self, path: Path | None):
        super().__init__(path, "events file")

    def write(self, event: str, **fields) -> None:
        if self.enabled:
            self.append({"event": event, "time": utc_now(), **fields})


class CommandRunner:
    """Runs a command per stored file, in order, on a worker thread, so associations never wait.

    The template is split like a shell would split it, then each placeholder (``{path}``,
    ``{calling_aet}``, ``{study_uid}``, ...) is filled per argument: values never pass through a
    shell, so hostile identifiers cannot inject commands.
    """

    def __init__(self, template: str | None):
        self._argv = _parse_template(template) if template else None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="pacs-exec", daemon=True)
        if self._argv:
            self._thread.start()

    def submit(self, **values) -> None:
        if self._argv:
            self._queue.put([arg.format(**values) for arg in self._argv])

    def close(self) -> None:
        """Wait for the commands already queued."""
        if self._argv:
            self._queue.put(None)
            self._thread.join()

    def _work(self) -> None:
        while (argv := self._queue.get()) is not None:
            try:
                result = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
            except OSError as exc:
                log.error("--exec-on-store: cannot run %s: %s", argv[0], exc.strerror)
                continue
            if result.returncode:
                log.warning("--exec-on-store: %s exited with %d", argv[0], result.returncode)


def _parse_template(template: str) -> list[str]:
    try:
        argv = shlex.split(template)
        for arg in argv:
            arg.format(**{name: "" for name in EXEC_PLACEHOLDERS})
    except ValueError as exc:
        raise UsageError(f"--exec-on-store: {exc}") from None
    except KeyError as exc:
        raise UsageError(f"--exec-on-store: unknown placeholder {{{exc.args[0]}}}",
                         "use " + ", ".join(f"{{{name}}}" for name in EXEC_PLACEHOLDERS)) from None
    if not argv:
        raise UsageError("--exec-on-store: empty command")
    return argv
