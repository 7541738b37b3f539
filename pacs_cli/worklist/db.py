"""The worklist and its MPPS instances in SQLite: every SQL statement of the worklist is here.

One file (``WORKLIST_DIR/worklist.sqlite`` unless ``--db``) holds:

==================  ==================================================================================
worklist_sources    one row per item file: path, size and mtime, to see which files changed
worklist_items      one row per item: the matching keys of Table K.6-1 outside the step, and the
                    item as DICOM JSON
worklist_steps      one row per Scheduled Procedure Step (the worklist *is* the steps: a C-FIND gets
                    one response per step); its matching keys and DICOM JSON
step_status         the status MPPS gave a step (keyed by accession, requested procedure and step
                    ID), kept apart from the files so a reload does not forget it
mpps                one row per Performed Procedure Step: UID, status, DICOM JSON, when, who
migrations          the numbered migrations applied
==================  ==================================================================================

Files are read into the tables by :meth:`WorklistDB.sync`, which rereads only the files whose size or
mtime changed and drops the items of files that are gone; the SCP calls it before each query.

C-FIND keys become SQL through :func:`pacs_cli.archive.matching.key_condition`, the archive's own
matching (single values, wild cards, date and time ranges, case- and accent-insensitive names); its
column references are "p.column" for the first Q/R level and "st.column" for the second, so the
queries here alias the items table ``p`` and the steps table ``st``. Values are always bound
parameters. Each operation opens its own connection (WAL, busy timeout) and closes it (see
:class:`WorklistDB`); writes are ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import datetime
import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from pacs_cli.archive import matching, schema
from pacs_cli.archive.schema import PATIENT, STUDY, Column
from pacs_cli.worklist import items as item_files

DB_NAME = "worklist.sqlite"
BUSY_TIMEOUT = 30.0
SCHEDULED = item_files.SCHEDULED

# Matching keys (PS3.4 Table K.6-1) held as columns; any other key is returned, not matched.
ITEM_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "RequestingPhysician", "ReferringPhysicianName", "RequestedProcedureID", "RequestedProcedureDescription",
    "RequestedProcedurePriority", "StudyInstanceUID", "AdmissionID", "CurrentPatientLocation",
)
STEP_KEYWORDS = (
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
    "Modality", "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID", "ScheduledStationName", "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepStatus",
)


def _snake(keyword: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", keyword).lower()


def _column(keyword: str, level: str) -> Column:
    return Column(keyword, level, _snake(keyword), dictionary_VR(tag_for_keyword(keyword)))


# PATIENT and STUDY only choose the table aliases p and st in matching.column_ref (see the docstring).
ITEM_COLUMNS = {kw: _column(kw, PATIENT) for kw in ITEM_KEYWORDS}
STEP_COLUMNS = {kw: _column(kw, STUDY) for kw in STEP_KEYWORDS}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def _columns_of(ds: Dataset, columns: Mapping[str, Column]) -> dict[str, str]:
    row = {}
    for keyword, column in columns.items():
        row[column.column] = _text(ds, keyword)
        if column.vr == "PN":
            row[column.norm_column] = schema.normalise_pn(row[column.column])
    return row


def to_json(ds: Dataset) -> str:
    return json.dumps(ds.to_json_dict(), ensure_ascii=False)


def from_json(text: str) -> Dataset:
    return Dataset.from_json(text)


def step_key(accession: str, procedure_id: str, step_id: str) -> str:
    """How MPPS finds a step: accession number, requested procedure ID, step ID (PS3.4 F.7.2.1)."""
    return json.dumps([accession, procedure_id, step_id])


# --------------------------------------------------------------------------------------------
# Migrations

MIGRATIONS: list = []
migration = MIGRATIONS.append


def _table(db, name: str, columns: dict, pk="pk", foreign_key=None) -> None:
    db[name].create(columns, pk=pk, not_null={c for c in columns if c != pk},
                    defaults={c: ("" if kind is str else 0) for c, kind in columns.items() if c != pk},
                    foreign_keys=[foreign_key] if foreign_key else None)


def _text_columns(columns: Mapping[str, Column]) -> dict:
    out = {}
    for column in columns.values():
        out[column.column] = str
        if column.vr == "PN":
            out[column.norm_column] = str
    return out


@migration
def m001_worklist(db):
    _table(db, "worklist_sources", {"path": str, "size": int, "mtime_ns": int, "error": str}, pk="path")
    _table(db, "worklist_items", {"pk": int, "source": str, "position": int, "dataset": str,
                                  **_text_columns(ITEM_COLUMNS)})
    _table(db, "worklist_steps", {"pk": int, "item_pk": int, "position": int, "step_key": str, "dataset": str,
                                  **_text_columns(STEP_COLUMNS)}, foreign_key=("item_pk", "worklist_items", "pk"))
    db["worklist_items"].create_index(["source"])
    db["worklist_steps"].create_index(["item_pk"])
    db["worklist_steps"].create_index(["step_key"])
    _table(db, "step_status", {"step_key": str, "status": str, "mpps_uid": str, "updated_at": str}, pk="step_key")
    _table(db, "mpps", {"sop_instance_uid": str, "status": str, "dataset": str, "calling_aet": str,
                        "created_at": str, "updated_at": str}, pk="sop_instance_uid")


def migrate(db: sqlite_utils.Database) -> None:
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not db["migrations"].exists():
            db["migrations"].create({"name": str, "applied_at": str}, pk="name")
        applied = {row["name"] for row in db.query("SELECT name FROM migrations")}
        for fn in MIGRATIONS:
            if fn.__name__ not in applied:
                fn(db)
                conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (fn.__name__, _now()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# --------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class Match:
    """One worklist answer: the item without its steps, and the one step matched."""

    item: Dataset
    step: Dataset


@dataclass(frozen=True)
class SyncReport:
    loaded: int = 0
    removed: int = 0
    errors: tuple[str, ...] = ()


class WorklistDB:
    """The worklist directory's SQLite store; safe to use from several threads.

    Each operation opens its own connection and closes it when done, rather than each thread keeping
    one for the life of the process: an idle WAL connection holds a lock on the database file, and
    while one is open SQLite parks (does not close) the file descriptor of every other connection
    that closes; and a thread's connection is only closed when a garbage collection finds it (a
    ``sqlite3.Connection`` sits in a reference cycle with its statement cache). Association threads
    that each kept theirs left their descriptors behind for good. Opening costs well under a
    millisecond, and worklist traffic is a few messages per procedure.
    """

    def __init__(self, path: Path, directory: Path | None = None):
        self.path = Path(path)
        self.directory = Path(directory) if directory else None
        self._sync_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: Path, directory: Path | None = None) -> WorklistDB:
        store = cls(path, directory)
        with store._connection() as db:
            db.conn.execute("PRAGMA journal_mode=WAL")
            migrate(db)
        return store

    @contextmanager
    def _connection(self) -> Iterator[sqlite_utils.Database]:
        """A connection for one operation, closed after it (see the class docstring)."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"the worklist database {self.path} is closed")
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            for name, arity, function in matching.sql_functions():
                conn.create_function(name, arity, function, deterministic=True)
            yield sqlite_utils.Database(conn, execute_plugins=False)
        finally:
            conn.close()

    def _query(self, sql: str, params=()) -> list[dict]:
        with self._connection() as db:
            return list(db.query(sql, params))

    def close(self) -> None:
        """Later use raises; there is no connection left open to close."""
        self._closed = True

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            conn = db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # --- item files ---------------------------------------------------------------------------

    def sync(self) -> SyncReport:
        """Reread the item files that changed, forget those that are gone; errors are reported, not raised."""
        if self.directory is None:
            return SyncReport()
        with self._sync_lock:
            suffixes = item_files.suffixes()
            # Sources are named relative to the directory: the database survives moving both.
            found = {p.relative_to(self.directory).as_posix(): p.stat() for p in sorted(self.directory.rglob("*"))
                     if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")}
            known = {row["path"]: row for row in self._query("SELECT path, size, mtime_ns FROM worklist_sources")}
            loaded, errors = 0, []
            for path, stat in found.items():
                row = known.get(path)
                if row and row["size"] == stat.st_size and row["mtime_ns"] == stat.st_mtime_ns:
                    continue
                try:
                    datasets, error = item_files.read_items(self.directory / path), ""
                except item_files.ItemError as exc:
                    datasets, error = [], str(exc)
                    errors.append(error)
                self._replace_source(path, stat.st_size, stat.st_mtime_ns, datasets, error)
                loaded += len(datasets)
            gone = [path for path in known if path not in found]
            for path in gone:
                self._replace_source(path, None, None, [], "")
            return SyncReport(loaded, len(gone), tuple(errors))

    def _replace_source(self, path: str, size, mtime_ns, datasets: list[Dataset], error: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM worklist_steps WHERE item_pk IN (SELECT pk FROM worklist_items WHERE source = ?)",
                         (path,))
            conn.execute("DELETE FROM worklist_items WHERE source = ?", (path,))
            conn.execute("DELETE FROM worklist_sources WHERE path = ?", (path,))
            if size is None:
                return
            conn.execute("INSERT INTO worklist_sources (path, size, mtime_ns, error) VALUES (?, ?, ?, ?)",
                         (path, size, mtime_ns, error))
            for position, ds in enumerate(datasets):
                self._insert_item(conn, path, position, ds)

    def _insert_item(self, conn, source: str, position: int, ds: Dataset) -> None:
        steps = list(ds.ScheduledProcedureStepSequence)
        item = Dataset()
        item.update(ds)
        del item.ScheduledProcedureStepSequence
        row = {"source": source, "position": position, "dataset": to_json(item), **_columns_of(ds, ITEM_COLUMNS)}
        pk = _insert(conn, "worklist_items", row)
        for number, step in enumerate(steps):
            key = step_key(_text(ds, "AccessionNumber"), _text(ds, "RequestedProcedureID"),
                           _text(step, "ScheduledProcedureStepID"))
            step_row = {"item_pk": pk, "position": number, "step_key": key, "dataset": to_json(step),
                        **_columns_of(step, STEP_COLUMNS)}
            _insert(conn, "worklist_steps", step_row)
        # What MPPS said about these steps outlives the reload of their file.
        conn.execute("UPDATE worklist_steps SET scheduled_procedure_step_status = "
                     "(SELECT status FROM step_status WHERE step_status.step_key = worklist_steps.step_key) "
                     "WHERE item_pk = ? AND step_key IN (SELECT step_key FROM step_status)", (pk,))

    # --- queries ------------------------------------------------------------------------------

    def find(self, item_keys: Mapping[str, str], step_keys: Mapping[str, str]) -> Iterator[Match]:
        """The steps matching the keys (keyword -> value), read from the cursor as they are yielded.

        Raises matching.BadKeyValue for a value that cannot be matched (a malformed date range).
        """
        conditions = [c for kw, value in item_keys.items() if kw in ITEM_COLUMNS
                      if (c := matching.key_condition(ITEM_COLUMNS[kw], value, kw)) is not None]
        conditions += [c for kw, value in step_keys.items() if kw in STEP_COLUMNS
                       if (c := matching.key_condition(STEP_COLUMNS[kw], value, kw)) is not None]
        where = " AND ".join(f"({c.sql})" for c in conditions) or "1"
        params = [p for c in conditions for p in c.params]
        sql = ("SELECT p.dataset AS item, st.dataset AS step, st.scheduled_procedure_step_status AS status "
               "FROM worklist_items AS p JOIN worklist_steps AS st ON st.item_pk = p.pk "
               f"WHERE {where} ORDER BY p.source, p.position, st.position")
        with self._connection() as db:
            cursor = db.conn.execute(sql, params)
            try:
                for item, step, status in cursor:
                    step_ds = from_json(step)
                    step_ds.ScheduledProcedureStepStatus = status
                    yield Match(from_json(item), step_ds)
            finally:
                cursor.close()

    def steps(self) -> list[dict]:
        """Every step with its item's keys, for ``--list``."""
        return self._query(
            "SELECT p.source, p.patient_id, p.patient_name, p.accession_number, p.requested_procedure_id, "
            "st.scheduled_procedure_step_id, st.scheduled_station_ae_title, st.modality, "
            "st.scheduled_procedure_step_start_date, st.scheduled_procedure_step_start_time, "
            "st.scheduled_procedure_step_status, st.scheduled_procedure_step_description "
            "FROM worklist_items AS p JOIN worklist_steps AS st ON st.item_pk = p.pk "
            "ORDER BY p.source, p.position, st.position")

    def accessions_in(self, source: str) -> list[str]:
        return [row["accession_number"] for row in self._query(
            "SELECT accession_number FROM worklist_items WHERE source = ?", [source])]

    def source_errors(self) -> list[str]:
        return [row["error"] for row in self._query("SELECT error FROM worklist_sources WHERE error != ''")]

    def sources_of(self, accession: str) -> list[str]:
        """The files holding items with this accession number (for ``--remove``)."""
        return [row["source"] for row in self._query(
            "SELECT DISTINCT source FROM worklist_items WHERE accession_number = ?", [accession])]

    # --- MPPS ---------------------------------------------------------------------------------

    def mpps(self, uid: str) -> tuple[str, Dataset] | None:
        rows = self._query("SELECT status, dataset FROM mpps WHERE sop_instance_uid = ?", [uid])
        return (rows[0]["status"], from_json(rows[0]["dataset"])) if rows else None

    def mpps_rows(self) -> list[dict]:
        return self._query("SELECT sop_instance_uid, status, calling_aet, created_at, updated_at FROM mpps "
                           "ORDER BY created_at, sop_instance_uid")

    def create_mpps(self, uid: str, ds: Dataset, status: str, calling_aet: str) -> bool:
        """Store a new step and mark its scheduled steps; False if the UID exists (nothing written)."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM mpps WHERE sop_instance_uid = ?", (uid,)).fetchone():
                return False
            now = _now()
            conn.execute("INSERT INTO mpps (sop_instance_uid, status, dataset, calling_aet, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (uid, status, to_json(ds), calling_aet, now, now))
            self._mark_steps(conn, uid, ds, status, now)
        return True

    def update_mpps(self, uid: str, ds: Dataset, status: str, expected_status: str) -> bool:
        """Replace the step if its status is still ``expected_status``; False if another N-SET came first."""
        with self._write() as conn:
            now = _now()
            changed = conn.execute("UPDATE mpps SET status = ?, dataset = ?, updated_at = ? "
                                   "WHERE sop_instance_uid = ? AND status = ?",
                                   (status, to_json(ds), now, uid, expected_status)).rowcount
            if changed:
                self._mark_steps(conn, uid, ds, status, now)
        return bool(changed)

    def _mark_steps(self, conn, uid: str, ds: Dataset, status: str, now: str) -> None:
        """The scheduled steps this MPPS performs follow its status (PS3.4 F.7.2.1: linked by accession
        number, requested procedure ID and step ID in the Scheduled Step Attributes Sequence)."""
        for item in ds.get("ScheduledStepAttributesSequence", []):
            wanted = {"accession_number": _text(item, "AccessionNumber"),
                      "requested_procedure_id": _text(item, "RequestedProcedureID"),
                      "scheduled_procedure_step_id": _text(item, "ScheduledProcedureStepID")}
            given = {column: value for column, value in wanted.items() if value}
            if not given:
                continue  # an unscheduled step: nothing to link
            where = " AND ".join(f"{'p' if column != 'scheduled_procedure_step_id' else 'st'}.{column} = ?"
                                 for column in given)
            keys = [row[0] for row in conn.execute(
                "SELECT st.step_key FROM worklist_items AS p JOIN worklist_steps AS st ON st.item_pk = p.pk "
                f"WHERE {where}", list(given.values()))]
            for key in set(keys):
                conn.execute("INSERT INTO step_status (step_key, status, mpps_uid, updated_at) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (step_key) DO UPDATE SET status = excluded.status, "
                             "mpps_uid = excluded.mpps_uid, updated_at = excluded.updated_at",
                             (key, status, uid, now))
                conn.execute("UPDATE worklist_steps SET scheduled_procedure_step_status = ? WHERE step_key = ?",
                             (status, key))


def _insert(conn, table: str, row: dict) -> int:
    # Column names come from ITEM_COLUMNS/STEP_COLUMNS above, never from a file or the network.
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    return conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values())).lastrowid
