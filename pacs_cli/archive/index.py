"""The archive's SQLite index: schema, numbered migrations, and every SQL statement the archive runs.

Nothing else in ``pacs_cli/archive`` writes SQL, except the C-FIND conditions :mod:`.matching` builds
and :meth:`Index.find` runs. Table and column names come only from :mod:`pacs_cli.archive.schema` (our
constants); every value is a bound parameter.

Connections
    One per thread (``threading.local``), never shared: WAL journal, a 30 s busy timeout, foreign
    keys on. A thread's connection is closed when the thread ends (the thread-local is dropped), so
    short-lived association threads do not leak file descriptors; :meth:`Index.close` closes the rest.

Writes
    :meth:`Index.write` runs ``BEGIN IMMEDIATE`` ... ``COMMIT``: one writer at a time across threads
    *and* processes (storescp and ``pacs index`` may share an index), and the duplicate check made
    inside it cannot be overtaken by another writer. Before committing, the :class:`Writer` prunes
    series, studies and patients left without children and recomputes the derived columns
    (ModalitiesInStudy, the Number Of ... Related ... counts) of every row it touched, so they are
    consistent whenever a reader sees them.

Migrations
    Functions named ``mNNN_description``, applied in order and recorded in ``_pacs_migrations``
    (the pattern of simonw/llm's migrations.py), all inside one ``BEGIN IMMEDIATE`` so two processes
    creating the same index at once cannot both apply one. Never edit an applied migration: add one.
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from typing import NamedTuple
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pacs_cli.archive import matching, schema
from pacs_cli.archive.schema import IMAGE, LEVELS, PATIENT, SERIES, STUDY

DB_NAME = "index.sqlite"  # in the archive directory, unless --db says otherwise
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another (a `pacs index` batch, another process)
MIGRATIONS_TABLE = "_pacs_migrations"
MAX_PARAMS = 500  # values per IN (...) list, well under SQLite's limit
CHECKPOINT_INTERVAL = 0.2  # seconds between background checkpoints (a few thousand WAL pages at full speed)
WRITER_CHECKPOINT_PAGES = 16384  # the writers' own checkpoint, should the background one fall behind (64 MB)
WRITER_LOCK_SUFFIX = "-lock"  # beside the database: the file its writers queue on (_WriterQueue)
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal", WRITER_LOCK_SUFFIX)  # SQLite's files, and ours

log = logging.getLogger(__name__)

_ALIASES = matching.TABLE_ALIASES  # p, st, se, i: the matching conditions are written against these
_FROM_ALL = ("instances i JOIN series se ON i.series_pk = se.pk "
             "JOIN studies st ON se.study_pk = st.pk JOIN patients p ON st.patient_pk = p.pk")
# C-FIND: one row per entity of the level, joined to its ancestors (whose keys may be matched too).
_FROM_LEVEL = {
    PATIENT: "patients p",
    STUDY: "studies st JOIN patients p ON st.patient_pk = p.pk",
    SERIES: "series se JOIN studies st ON se.study_pk = st.pk JOIN patients p ON st.patient_pk = p.pk",
    IMAGE: _FROM_ALL,
}
_SELECT_ALL = ", ".join(
    [f"{_ALIASES[c.level]}.{c.column}" for c in schema.COLUMNS]
    + [f"i.{name}" for name in schema.FILE_COLUMNS]
    + ["i.pk AS instance_pk", "se.pk AS series_pk", "st.pk AS study_pk", "p.pk AS patient_pk"]
)
_UID_WHERE = {IMAGE: "i.sop_instance_uid = ?", SERIES: "se.series_instance_uid = ?",
              STUDY: "st.study_instance_uid = ?"}


def _now() -> str:
    return _utc_second(int(time.time()))


@functools.lru_cache(maxsize=1)
def _utc_second(second: int) -> str:
    """ISO 8601 in UTC, formatted once per second: a receiver stamps hundreds of rows a second."""
    return datetime.datetime.fromtimestamp(second, datetime.timezone.utc).isoformat()


# --------------------------------------------------------------------------------------------
# Migrations


MIGRATIONS: list = []
migration = MIGRATIONS.append


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the pending migrations in one write transaction.

    sqlite-utils, which the migrations create tables with, is imported only when one is pending:
    opening an index that is up to date (every ``pacs find --db``) costs no more than sqlite3.
    Needs sqlite-utils >= 4.0: from 4.0 ``table.create()`` and friends use savepoints inside an open
    transaction (``db.atomic()``, sqlite-utils #755); 3.x would commit ours half way through.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        applied = _applied(conn)
        pending = [fn for fn in MIGRATIONS if applied is None or fn.__name__ not in applied]
        if pending:
            import sqlite_utils

            db = sqlite_utils.Database(conn, execute_plugins=False)
            if applied is None:
                db[MIGRATIONS_TABLE].create({"name": str, "applied_at": str}, pk="name")
            for fn in pending:
                fn(db)
                conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (name, applied_at) VALUES (?, ?)",
                             (fn.__name__, _now()))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _applied(conn: sqlite3.Connection) -> set[str] | None:
    """The names of the applied migrations; None in a new index, which has no table for them yet."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                          (MIGRATIONS_TABLE,)).fetchone()
    return {name for (name,) in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")} if exists else None


def _create(db, table: str, columns: dict, foreign_key: tuple | None = None) -> None:
    """A table whose text columns default to '' and counts to 0, all NOT NULL (see schema.py)."""
    db[table].create(
        {"pk": int, **columns}, pk="pk",
        not_null=set(columns),
        defaults={name: ("" if kind is str else 0) for name, kind in columns.items()},
        foreign_keys=[foreign_key] if foreign_key else None,
    )


@migration
def m001_initial(db):
    _create(db, "patients", {
        "patient_id": str, "issuer_of_patient_id": str, "patient_name": str, "patient_name_norm": str,
        "patient_birth_date": str, "patient_sex": str,
        "number_of_patient_related_studies": int, "number_of_patient_related_series": int,
        "number_of_patient_related_instances": int, "updated_at": str,
    })
    _create(db, "studies", {
        "patient_pk": int, "study_instance_uid": str, "study_date": str, "study_time": str,
        "accession_number": str, "study_id": str, "referring_physician_name": str,
        "referring_physician_name_norm": str, "study_description": str, "modalities_in_study": str,
        "sop_classes_in_study": str, "number_of_study_related_series": int,
        "number_of_study_related_instances": int, "updated_at": str,
    }, ("patient_pk", "patients", "pk"))
    _create(db, "series", {
        "study_pk": int, "series_instance_uid": str, "modality": str, "series_number": str,
        "series_description": str, "body_part_examined": str, "series_date": str, "series_time": str,
        "number_of_series_related_instances": int, "updated_at": str,
    }, ("study_pk", "studies", "pk"))
    _create(db, "instances", {
        "series_pk": int, "sop_instance_uid": str, "sop_class_uid": str, "instance_number": str,
        "specific_character_set": str, "transfer_syntax_uid": str,
        "path": str, "size": int, "mtime_ns": int, "received_at": str, "calling_aet": str, "source": str,
    }, ("series_pk", "series", "pk"))
    for table, columns, unique in [
        ("patients", ["patient_id", "issuer_of_patient_id"], True),
        ("patients", ["patient_name"], False),
        ("patients", ["patient_name_norm"], False),
        ("studies", ["study_instance_uid"], True),
        ("studies", ["patient_pk"], False),
        ("studies", ["study_date"], False),
        ("studies", ["accession_number"], False),
        ("series", ["series_instance_uid"], True),
        ("series", ["study_pk"], False),
        ("series", ["modality"], False),
        ("instances", ["sop_instance_uid"], True),
        ("instances", ["series_pk"], False),
        ("instances", ["path"], True),  # two rows can never claim one file
        ("instances", ["sop_class_uid"], False),
    ]:
        db[table].create_index(columns, unique=unique)


# --------------------------------------------------------------------------------------------
# The index


class _Connection(sqlite3.Connection):
    """A connection :class:`Index` can keep in a WeakSet: sqlite3's own take no weak references."""


class _ThreadConnection:
    """One thread's connection, closed when the thread ends and its thread-local values go.

    The holder is in no reference cycle, so it goes at once, where the connection itself (whose
    statement cache is a cycle) would wait for a garbage collection with its descriptor open. That
    covers threads that never call :meth:`Index.release_thread`: a DUL thread that served a store.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __del__(self):
        self.conn.close()


class _Checkpointer:
    """The thread of :meth:`Index.checkpoint_in_background`."""

    def __init__(self, index: Index, interval: float):
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(index, interval), name="pacs-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _run(self, index: Index, interval: float) -> None:
        failure = None
        try:
            while not self._stopping.wait(interval):
                try:
                    index.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    failure = None
                except sqlite3.Error as exc:  # a full disk: the WAL keeps the commits, the next round retries
                    if str(exc) != failure:
                        log.warning("cannot checkpoint the index %s: %s", index.path, exc)
                    failure = str(exc)
        finally:
            index.release_thread()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()


class _WriterQueue:
    """Lines up an index's writers, threads and processes, in the kernel before BEGIN IMMEDIATE.

    SQLite's busy handler retries a locked database after sleeping 1, 2, 5, 10... ms: the processes
    of `pacs storescp --workers 2`, committing hundreds of stores a second each, found each other's
    lock often and slept (3,657 sleeps for 3,000 small objects, 2.4 ms each, under strace). A writer
    waiting here is woken as the holder leaves: a thread lock among this process's threads, then
    ``flock`` on ``<index>-lock`` among processes (each opens its own Index, as SQLite's connections
    must not cross a fork). The lock is a file of its own, not the database: closing any descriptor
    of that would drop SQLite's own POSIX locks. Where the file cannot be created, writers fall back
    to SQLite's busy handler alone; writers that do not come through here (another tool) still meet
    BEGIN IMMEDIATE.

    The wait has no timeout, as DCMTK's dcmqrdb waits on its index's flock: a writer stopped inside
    its transaction holds the others until it goes on or ends (the kernel drops its lock). Polling
    the lock instead, 20 µs to 1 ms apart with SQLite's 30 s limit, cost two processes storing 1,500
    objects each 12% more wall time and 10% more CPU than waiting in flock; SQLite's busy handler
    left one of them behind the other (1.0–1.1 s and 1.4 s, against 1.15 s for both here).
    """

    def __init__(self, path: Path):
        self._path = f"{path}{WRITER_LOCK_SUFFIX}"
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._opened = False
        self._holder: int | None = None  # the thread whose turn it is

    @contextmanager
    def turn(self) -> Iterator[None]:
        if self._holder == threading.get_ident():  # a write inside a write: SQLite's error, not a deadlock
            raise sqlite3.OperationalError("cannot start a transaction within a transaction")
        with self._threads:
            fd = self._fd if self._opened else self._open()
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int | None:
        """The lock file's descriptor, opened by the first writer (readers never create the file)."""
        self._opened = True
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.debug("writers of the index queue in SQLite's busy handler only: %s", exc)
        return self._fd

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._opened = None, False


class InstanceRow(NamedTuple):
    """One instance a C-MOVE or C-GET sends: its file, and the patient and study the audit names."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    patient_id: str
    study_instance_uid: str


@dataclass(frozen=True)
class FileInfo:
    """What the instances row says about the file itself."""

    path: str  # relative to the archive root when inside it ('/' separators), else absolute
    size: int
    mtime_ns: int
    calling_aet: str = ""
    source: str = "store"  # "store" (received by the SCP) or "index" (found by `pacs index`)


class Index:
    """The SQLite index of one archive, safe to use from many threads: one connection each to read,
    one for the whole process to write (:meth:`write`)."""

    def __init__(self, path: Path, synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous
        self._local = threading.local()
        self._open: weakref.WeakSet = weakref.WeakSet()
        self._guard = threading.Lock()
        self._closed = False
        self._checkpointer: _Checkpointer | None = None
        self._writers = _WriterQueue(self.path)
        self._writer: sqlite3.Connection | None = None  # opened by the first write

    @classmethod
    def open(cls, path: Path, synchronous: str = "NORMAL") -> Index:
        """Open (creating if needed) the index at ``path``, in WAL mode, migrated to the latest schema."""
        index = cls(path, synchronous)
        conn = index.conn
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the file
        migrate(conn)
        return index

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        holder = getattr(self._local, "holder", None)
        if holder is None:
            if self._closed:
                raise self._closed_error()
            holder = _ThreadConnection(self._connect())
            self._local.holder = holder
            with self._guard:
                self._open.add(holder.conn)
        return holder.conn

    def _closed_error(self) -> sqlite3.ProgrammingError:
        return sqlite3.ProgrammingError(f"the index {self.path} is closed")

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False so close() may close connections of finished threads, and the
        # writer serve every thread in turn; each connection is used by one thread at a time.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False, factory=_Connection)
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")  # one of two constants
            if self._checkpointer is not None:
                conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")  # a constant
            return conn
        except BaseException:
            conn.close()
            raise

    def checkpoint_in_background(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Copy the WAL into the database from a thread of its own, not from the committing writer.

        SQLite's automatic checkpoint runs in the commit that crosses 1,000 WAL pages, and with
        synchronous=NORMAL it fsyncs the WAL and the database: a store committed every ~120th object
        waited for two fsyncs, 0.1 ms of every small object's receiving on average, with the reactor
        thread stalled. Here a passive checkpoint (which never blocks a writer) runs every
        ``interval``; connections opened from now on checkpoint themselves only past
        WRITER_CHECKPOINT_PAGES, should this thread fall behind or stop. For servers: start it before
        their threads open connections.
        """
        if self._checkpointer is None:
            self._checkpointer = _Checkpointer(self, interval)
            holder = getattr(self._local, "holder", None)
            if holder is not None:  # the calling thread's connection, opened before
                holder.conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")

    def close(self) -> None:
        """Close every connection still open; later use raises."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self._closed = True
        self._writers.close()
        self._writer = None
        with self._guard:
            connections = list(self._open)
            self._open.clear()
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def release_thread(self) -> None:
        """Close the calling thread's connection now; it reopens on next use.

        A connection left to the garbage collector lingers (its statement cache is a reference
        cycle), and while any connection of this process holds the WAL's shared lock, SQLite keeps
        the descriptors of closed ones parked: each association's thread closes its own when the
        association ends, and the opener closes its own after migrating, so the descriptors of a
        busy server come back down when it goes idle.
        """
        holder = getattr(self._local, "holder", None)
        if holder is None:
            return
        self._local.holder = None
        with self._guard:
            self._open.discard(holder.conn)
        holder.conn.close()

    def own_files(self) -> list[Path]:
        """The database and the files beside it that belong to it."""
        return [self.path, *(self.path.with_name(self.path.name + s) for s in COMPANION_SUFFIXES)]

    def open_connections(self) -> int:
        """How many connections are open (threads that ended have closed theirs)."""
        with self._guard:
            return len(self._open)

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """One write transaction (BEGIN IMMEDIATE), after this index's writers before it (see
        :class:`_WriterQueue`); derived columns settled before COMMIT."""
        with self._writers.turn():
            conn = self._writer_connection()
            conn.execute("BEGIN IMMEDIATE")
            writer = Writer(conn)
            try:
                yield writer
                writer.settle()
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def _writer_connection(self) -> sqlite3.Connection:
        """The connection every write of this process goes through, one at a time (the writers' turn).

        A connection's page cache is valid only until another connection commits: with a connection per
        thread, two associations storing into one process re-read each other's pages before each
        write (strace: 57,105 preads for 3,000 stores over two associations, none over one; receiver
        CPU 1.28 against 0.88 ms per object). One writing connection keeps its cache across them.
        """
        if self._writer is None:
            if self._closed:
                raise self._closed_error()
            conn = self._connect()
            with self._guard:
                self._open.add(conn)
            self._writer = conn
        return self._writer

    # -- reads ---------------------------------------------------------------------------

    def instance(self, sop_instance_uid: str) -> dict | None:
        """Everything the index knows about one instance, all levels joined; None if unknown."""
        return _instance(self.conn, sop_instance_uid)

    def level_of(self, uid: str) -> str | None:
        """IMAGE, SERIES or STUDY when some row has ``uid`` as its unique key."""
        return _level_of(self.conn, uid)

    def file_states(self, paths: list[str]) -> dict[str, tuple[int, int, str]]:
        """For indexed ``paths``: (size, mtime_ns, sop_instance_uid), for incremental indexing."""
        states = {}
        for chunk in _chunks(paths, MAX_PARAMS):
            marks = ", ".join("?" * len(chunk))
            for path, size, mtime_ns, uid in self.conn.execute(
                    f"SELECT path, size, mtime_ns, sop_instance_uid FROM instances WHERE path IN ({marks})",
                    chunk):
                states[path] = (size, mtime_ns, uid)
        return states

    def files(self) -> Iterator[tuple[str, str, int, int]]:
        """Every instance as (sop_instance_uid, path, size, mtime_ns), streamed."""
        yield from self.conn.execute(
            "SELECT sop_instance_uid, path, size, mtime_ns FROM instances ORDER BY pk")

    def stats(self) -> dict:
        """Counts per level, bytes, and instances per modality and per SOP class."""
        conn = self.conn
        counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in schema.TABLES.values()}
        total = conn.execute("SELECT coalesce(sum(size), 0) FROM instances").fetchone()[0]
        modalities = conn.execute(
            "SELECT se.modality, count(DISTINCT se.pk), count(i.pk), coalesce(sum(i.size), 0) "
            "FROM series se JOIN instances i ON i.series_pk = se.pk GROUP BY se.modality ORDER BY se.modality"
        ).fetchall()
        sop_classes = conn.execute(
            "SELECT sop_class_uid, count(*), coalesce(sum(size), 0) FROM instances "
            "GROUP BY sop_class_uid ORDER BY count(*) DESC, sop_class_uid").fetchall()
        return {
            **counts,
            "bytes": total,
            "modalities": [dict(zip(("modality", "series", "instances", "bytes"), row)) for row in modalities],
            "sop_classes": [dict(zip(("sop_class_uid", "instances", "bytes"), row)) for row in sop_classes],
        }

    def find(self, query: matching.Query) -> Iterator[dict[str, str]]:
        """Stream the entities of ``query.level`` that match, one row each, as keyword -> string.

        Each level has its own table, so a row is one patient, study, series or instance: never one
        per instance below it (the qrscp sample app's mistake). Rows come straight from the cursor in
        the order they were first stored, so a C-FIND SCP can answer the first match before the last
        is read and stop between rows on C-CANCEL. Every column of the level and of the levels above
        is returned; the caller picks what the identifier asked for. Use the generator in the thread
        that iterates it: the connection is that thread's.
        """
        conn = self._query_connection()
        columns = [c for c in schema.COLUMNS if LEVELS.index(c.level) <= LEVELS.index(query.level)]
        sql = (f"SELECT {', '.join(matching.column_ref(c) for c in columns)} FROM {_FROM_LEVEL[query.level]} "
               f"WHERE {query.where} ORDER BY {_ALIASES[query.level]}.pk")
        cursor = conn.execute(sql, query.params)
        try:
            for row in cursor:
                yield {c.keyword: "" if value is None else str(value) for c, value in zip(columns, row)}
        finally:
            cursor.close()

    def instances(self, query: matching.Query) -> list[InstanceRow]:
        """Every instance at or below the entities ``query`` matches, in the order they were stored:
        what a C-MOVE or C-GET sends. A list, not a stream: the SCP needs the count and the
        presentation contexts before the first sub-operation (PS3.4 C.4.2.3), and the rows are small.
        """
        conn = self._query_connection()
        sql = (f"SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.path, p.patient_id, "
               f"st.study_instance_uid FROM {_FROM_ALL} WHERE {query.where} ORDER BY i.pk")
        return [InstanceRow(*row) for row in conn.execute(sql, query.params)]

    def _query_connection(self) -> sqlite3.Connection:
        """This thread's connection, with the SQL functions C-FIND matching calls (TM/DT, PN groups).

        Registered on first use only, so connections that never query stay as they were.
        """
        conn = self.conn
        if getattr(self._local, "query_functions", None) is not conn:
            for name, arguments, function in matching.sql_functions():
                conn.create_function(name, arguments, function, deterministic=True)
            self._local.query_functions = conn
        return conn

    def migrations(self) -> list[str]:
        """Names of the applied migrations, in order."""
        return [row[0] for row in self.conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY rowid")]


def _instance(conn, sop_instance_uid: str) -> dict | None:
    cursor = conn.execute(f"SELECT {_SELECT_ALL} FROM {_FROM_ALL} WHERE i.sop_instance_uid = ?",
                          (sop_instance_uid,))
    row = cursor.fetchone()
    return dict(zip((d[0] for d in cursor.description), row)) if row else None


def _level_of(conn, uid: str) -> str | None:
    for level in (IMAGE, SERIES, STUDY):
        key = schema.UNIQUE_KEYS[level]
        if conn.execute(f"SELECT 1 FROM {key.table} WHERE {key.column} = ?", (uid,)).fetchone():
            return level
    return None


def _rollback(conn) -> None:
    """Roll back if a transaction is open; never mask the exception being handled."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------------------------
# Writing


class Writer:
    """The statements of one write transaction; remembers which rows need their derived columns redone."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._series: set[int] = set()
        self._studies: set[int] = set()
        self._patients: set[int] = set()
        self._moves = 0  # rows moved to another parent: their old and new parents are recounted
        self._added: list[_Addition] = []  # new instances whose parents' counts go up at settle()

    def instance(self, sop_instance_uid: str) -> dict | None:
        return _instance(self.conn, sop_instance_uid)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """One part of the transaction that fails alone: undone (ROLLBACK TO) if it raises, the rest kept."""
        self.conn.execute("SAVEPOINT part")
        added = len(self._added)
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO part")
            del self._added[added:]
            raise
        finally:
            self.conn.execute("RELEASE part")

    def level_of(self, uid: str) -> str | None:
        return _level_of(self.conn, uid)

    def owner_of_path(self, path: str) -> str | None:
        """The SOP Instance UID of the row that claims ``path``, if any."""
        row = self.conn.execute("SELECT sop_instance_uid FROM instances WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def put(self, values: Mapping[str, str], file: FileInfo, known_new: bool = False) -> None:
        """Insert or update the instance and its series, study and patient (one set of statements).

        At the patient, study and series levels a non-empty new value replaces the stored one and an
        empty one keeps it; the instance row is replaced whole. A study (series) whose new instance
        names another patient (study) moves there, and the old parent is settled. ``known_new``: the
        caller found no row with this SOP Instance UID in this transaction (a store's duplicate
        check), so the instance row is inserted without looking for it again.
        """
        moves, now = self._moves, _now()
        known, study_lists = self._known_series(values)
        patient_pk, _ = self._upsert(PATIENT, values, None, None, now, known)
        study_pk, new_study = self._upsert(STUDY, values, "patient_pk", patient_pk, now, known)
        series_pk, new_series = self._upsert(SERIES, values, "study_pk", study_pk, now, known)
        new_instance = self._upsert_instance(values, file, series_pk, now, known_new)
        if new_instance and self._moves == moves:
            self._count_addition(values, patient_pk, study_pk, series_pk, new_study, new_series,
                                 study_lists if _same_modality(values, known) else None)
        else:
            self._series.add(series_pk)
            self._studies.add(study_pk)
            self._patients.add(patient_pk)

    def _count_addition(self, values, patient_pk: int, study_pk: int, series_pk: int, new_study: bool,
                        new_series: bool, study_lists: tuple[str, str] | None) -> None:
        """Remember one more instance for its parents' derived columns, applied at settle().

        settle() recounts every instance of a touched study, patient and series: fine for a move or
        a removal, but for the common case (a new instance, nothing moved) it made each store cost
        time proportional to the size of its study. The counts go up by the instances added instead,
        in one statement per row for the whole transaction (three per instance were a third of a
        small object's statements), the SOP classes join the study's list, and only Modalities in
        Study, which depends on the study's few series, is recomputed, unless ``study_lists`` (the
        study's stored SOP classes and modalities) says it cannot have changed.
        """
        self._added.append(_Addition(patient_pk, study_pk, series_pk, new_study, new_series,
                                     values.get("SOPClassUID", ""), study_lists))

    def _apply_additions(self) -> None:
        """The counts and lists of every row :meth:`_count_addition` remembered, one statement per row."""
        series: dict[int, int] = {}
        studies: dict[int, _StudyAddition] = {}
        patients: dict[int, list[int]] = {}
        for added in self._added:
            series[added.series_pk] = series.get(added.series_pk, 0) + 1
            study = studies.setdefault(added.study_pk, _StudyAddition())
            study.add(added)
            patient = patients.setdefault(added.patient_pk, [0, 0, 0])
            patient[0] += added.new_study
            patient[1] += added.new_series
            patient[2] += 1
        self._added.clear()
        self.conn.executemany("UPDATE series SET number_of_series_related_instances = "
                              "number_of_series_related_instances + ? WHERE pk = ?",
                              [(count, pk) for pk, count in series.items()])
        for pk, study in studies.items():
            stored_classes, modality_list = study.stored_lists or self.conn.execute(_STUDY_LISTS, (pk, pk)).fetchone()
            classes = set(filter(None, stored_classes.split("\\"))) | study.classes
            modalities = set(filter(None, (modality_list or "").split("\\")))
            self.conn.execute(
                "UPDATE studies SET modalities_in_study = ?, sop_classes_in_study = ?, "
                "number_of_study_related_series = number_of_study_related_series + ?, "
                "number_of_study_related_instances = number_of_study_related_instances + ? WHERE pk = ?",
                ("\\".join(sorted(modalities)), "\\".join(sorted(classes)), study.series, study.instances, pk))
        self.conn.executemany(
            "UPDATE patients SET number_of_patient_related_studies = number_of_patient_related_studies + ?, "
            "number_of_patient_related_series = number_of_patient_related_series + ?, "
            "number_of_patient_related_instances = number_of_patient_related_instances + ? WHERE pk = ?",
            [(*counts, pk) for pk, counts in patients.items()])

    def _known_series(self, values) -> tuple[dict[str, tuple], tuple[str, str] | None]:
        """The series, study and patient rows of an instance whose series is stored already under the
        study and patient it names, by level, as each level's select returns them, and the study's
        SOP classes and modalities as stored; ({}, None) otherwise.

        One statement where the levels' own selects are three, and the study's lists a fourth: the
        next instance of a series, the common case, finds them all here.
        """
        row = self.conn.execute(_KNOWN_SERIES.select, [values.get(keyword, "") for keyword in _KNOWN_SERIES.keys]
                                ).fetchone()
        if row is None:
            return {}, None
        rows, start = {}, 0
        for level, width in _KNOWN_SERIES.widths:
            rows[level], start = row[start:start + width], start + width
        return rows, row[start:]

    def _upsert(self, level: str, values, parent_column: str | None, parent_pk: int | None,
                now: str, known: dict[str, tuple]) -> tuple[int, bool]:
        """The row's pk, and whether it was created (``known``: rows :meth:`_known_series` found).

        An existing row is updated only in the columns whose value changes (a non-empty new value
        that differs): rewriting every column rewrote the entries of each index on them, most of the
        pages a store's transaction wrote, for the next instance of a series that changes nothing.
        """
        sql = _level_sql(level, parent_column)
        columns = _value_columns(level, values)
        if parent_column:
            columns[parent_column] = parent_pk
        row = known.get(level) or self.conn.execute(
            sql.select, [values.get(keyword, "") for keyword in sql.key_keywords]).fetchone()
        if row is None:
            columns["updated_at"] = now
            return self.conn.execute(sql.insert(columns), list(columns.values())).fetchone()[0], True
        stored = dict(zip(sql.stored_columns, row[1:]))
        if parent_column and stored[parent_column] != parent_pk:
            self._touch_parent(level, stored[parent_column])
        changed = {name: value for name, value in columns.items() if value != "" and value != stored[name]}
        if not changed and stored["updated_at"] == now:
            return row[0], False  # the next instance of a series within the same second changes nothing here
        changed["updated_at"] = now
        self.conn.execute(f"UPDATE {sql.table} SET {', '.join(f'{name} = ?' for name in changed)} WHERE pk = ?",
                          [*changed.values(), row[0]])
        return row[0], False

    def _upsert_instance(self, values, file: FileInfo, series_pk: int, now: str, known_new: bool) -> bool:
        """Insert or replace the instance row; True if it is new."""
        columns = _value_columns(IMAGE, values)
        columns.update(series_pk=series_pk, path=file.path, size=file.size, mtime_ns=file.mtime_ns,
                       received_at=now, calling_aet=file.calling_aet, source=file.source)
        old = None if known_new else self.conn.execute(
            "SELECT pk, series_pk FROM instances WHERE sop_instance_uid = ?", (columns["sop_instance_uid"],)).fetchone()
        names = list(columns)
        if old is None:
            self.conn.execute(f"INSERT INTO instances ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                              [columns[n] for n in names])
            return True
        if old[1] != series_pk:
            self._touch_parent(IMAGE, old[1])
        self.conn.execute(f"UPDATE instances SET {', '.join(f'{n} = ?' for n in names)} WHERE pk = ?",
                          [*columns.values(), old[0]])
        return False

    def _touch_parent(self, level: str, parent_pk: int) -> None:
        """Remember the former parent of a moved row, and its ancestors, for settle()."""
        self._moves += 1
        if level == IMAGE:
            self._touch_series(parent_pk)
        elif level == SERIES:
            self._touch_study(parent_pk)
        elif level == STUDY:
            self._patients.add(parent_pk)

    def _touch_series(self, series_pk: int) -> None:
        self._series.add(series_pk)
        row = self.conn.execute("SELECT study_pk FROM series WHERE pk = ?", (series_pk,)).fetchone()
        if row:
            self._touch_study(row[0])

    def _touch_study(self, study_pk: int) -> None:
        self._studies.add(study_pk)
        row = self.conn.execute("SELECT patient_pk FROM studies WHERE pk = ?", (study_pk,)).fetchone()
        if row:
            self._patients.add(row[0])

    def delete(self, uid: str, level: str) -> list[tuple[str, str]]:
        """Delete every instance at or below ``uid`` (IMAGE, SERIES or STUDY); return (uid, path) of each."""
        rows = self.conn.execute(
            f"SELECT i.pk, i.sop_instance_uid, i.path, i.series_pk FROM {_FROM_ALL} WHERE {_UID_WHERE[level]}",
            (uid,)).fetchall()
        for chunk in _chunks([r[0] for r in rows], MAX_PARAMS):
            self.conn.execute(f"DELETE FROM instances WHERE pk IN ({', '.join('?' * len(chunk))})", chunk)
        for series_pk in {r[3] for r in rows}:
            self._touch_series(series_pk)
        return [(r[1], r[2]) for r in rows]

    def delete_instance(self, sop_instance_uid: str) -> None:
        self.delete(sop_instance_uid, IMAGE)

    def settle(self) -> None:
        """Count the instances added, drop parents left empty, then recompute derived columns of the
        rows still there (after the additions: a recount includes them)."""
        self._apply_additions()
        for pk in list(self._series):
            if not self._exists("instances", "series_pk", pk):
                self.conn.execute("DELETE FROM series WHERE pk = ?", (pk,))
                self._series.discard(pk)
        for pk in list(self._studies):
            if not self._exists("series", "study_pk", pk):
                self.conn.execute("DELETE FROM studies WHERE pk = ?", (pk,))
                self._studies.discard(pk)
        for pk in list(self._patients):
            if not self._exists("studies", "patient_pk", pk):
                self.conn.execute("DELETE FROM patients WHERE pk = ?", (pk,))
                self._patients.discard(pk)
        for pk in self._series:
            self._refresh_series(pk)
        for pk in self._studies:
            self._refresh_study(pk)
        for pk in self._patients:
            self._refresh_patient(pk)
        self._series.clear()
        self._studies.clear()
        self._patients.clear()

    def settle_all(self) -> None:
        """Settle every row: used by repair, after files were removed behind the index's back."""
        for table, target in (("series", self._series), ("studies", self._studies), ("patients", self._patients)):
            target.update(pk for (pk,) in self.conn.execute(f"SELECT pk FROM {table}"))
        self.settle()

    def _exists(self, table: str, column: str, pk: int) -> bool:
        return self.conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ? LIMIT 1", (pk,)).fetchone() is not None

    def _refresh_series(self, pk: int) -> None:
        self.conn.execute(
            "UPDATE series SET number_of_series_related_instances = "
            "(SELECT count(*) FROM instances WHERE series_pk = ?) WHERE pk = ?", (pk, pk))

    def _refresh_study(self, pk: int) -> None:
        modalities = [m for (m,) in self.conn.execute(
            "SELECT DISTINCT modality FROM series WHERE study_pk = ? AND modality != ''", (pk,))]
        classes = [c for (c,) in self.conn.execute(
            "SELECT DISTINCT i.sop_class_uid FROM instances i JOIN series se ON i.series_pk = se.pk "
            "WHERE se.study_pk = ? AND i.sop_class_uid != ''", (pk,))]
        self.conn.execute(
            "UPDATE studies SET modalities_in_study = ?, sop_classes_in_study = ?, "
            "number_of_study_related_series = (SELECT count(*) FROM series WHERE study_pk = ?), "
            "number_of_study_related_instances = (SELECT count(*) FROM instances i "
            "  JOIN series se ON i.series_pk = se.pk WHERE se.study_pk = ?) WHERE pk = ?",
            ("\\".join(sorted(modalities)), "\\".join(sorted(classes)), pk, pk, pk))

    def _refresh_patient(self, pk: int) -> None:
        self.conn.execute(
            "UPDATE patients SET "
            "number_of_patient_related_studies = (SELECT count(*) FROM studies WHERE patient_pk = ?), "
            "number_of_patient_related_series = (SELECT count(*) FROM series se "
            "  JOIN studies st ON se.study_pk = st.pk WHERE st.patient_pk = ?), "
            "number_of_patient_related_instances = (SELECT count(*) FROM instances i "
            "  JOIN series se ON i.series_pk = se.pk JOIN studies st ON se.study_pk = st.pk "
            "  WHERE st.patient_pk = ?) WHERE pk = ?", (pk, pk, pk, pk))


# A study's SOP classes as stored and its series' distinct modalities, in one statement.
_STUDY_LISTS = ("SELECT sop_classes_in_study, (SELECT group_concat(modality, '\\') FROM (SELECT DISTINCT "
                "modality FROM series WHERE study_pk = ? AND modality != '')) FROM studies WHERE pk = ?")


class _Addition(NamedTuple):
    """One new instance, for its parents' counts and its study's lists (:meth:`Writer._count_addition`)."""

    patient_pk: int
    study_pk: int
    series_pk: int
    new_study: bool
    new_series: bool
    sop_class: str
    study_lists: tuple[str, str] | None  # the study's stored SOP classes and modalities; None: look again


class _StudyAddition:
    """What a transaction's new instances add to one study."""

    def __init__(self) -> None:
        self.series = self.instances = 0
        self.classes: set[str] = set()
        self.stored_lists: tuple[str, str] | None = None  # None once an instance could not tell: read again

    def add(self, added: _Addition) -> None:
        self.stored_lists = added.study_lists if not self.instances else self.stored_lists and added.study_lists
        self.series += added.new_series
        self.instances += 1
        if added.sop_class:
            self.classes.add(added.sop_class)


class _LevelSQL(NamedTuple):
    """The statements of :meth:`Writer._upsert` for one level, built once."""

    table: str
    key_keywords: list[str]
    stored_columns: list[str]  # what ``select`` returns after the pk: the columns an update may change, updated_at
    select: str

    def insert(self, columns: dict) -> str:
        return (f"INSERT INTO {self.table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                "RETURNING pk")


@functools.cache
def _level_sql(level: str, parent_column: str | None) -> _LevelSQL:
    table = schema.TABLES[level]
    keys = [c for c in schema.columns_of(level, "dataset") if c.key == "U"]
    if level == PATIENT:
        keys.append(schema.BY_KEYWORD["IssuerOfPatientID"])
    stored = list(_value_columns(level, {})) + ([parent_column] if parent_column else []) + ["updated_at"]
    where = " AND ".join(f"{c.column} = ?" for c in keys)
    return _LevelSQL(table, [c.keyword for c in keys], stored,
                     f"SELECT pk, {', '.join(stored)} FROM {table} WHERE {where}")


class _SeriesSQL(NamedTuple):
    """The statement of :meth:`Writer._known_series`, built once."""

    select: str
    keys: list[str]  # keywords of its parameters
    widths: list[tuple[str, int]]  # (level, columns) in the order the row holds them


def _known_series_sql() -> _SeriesSQL:
    aliases = {SERIES: "se", STUDY: "st", PATIENT: "p"}
    levels = [(SERIES, "study_pk"), (STUDY, "patient_pk"), (PATIENT, None)]
    selected, keys, conditions, widths = [], [], [], []
    for level, parent_column in levels:
        sql, alias = _level_sql(level, parent_column), aliases[level]
        names = ["pk", *sql.stored_columns]
        selected += [f"{alias}.{name}" for name in names]
        widths.append((level, len(names)))
        key_columns = [schema.BY_KEYWORD[keyword].column for keyword in sql.key_keywords]
        conditions += [f"{alias}.{column} = ?" for column in key_columns]
        keys += sql.key_keywords
    selected += ["st.sop_classes_in_study", "st.modalities_in_study"]  # the study's lists, after the levels
    return _SeriesSQL(f"SELECT {', '.join(selected)} FROM series se JOIN studies st ON se.study_pk = st.pk "
                      f"JOIN patients p ON st.patient_pk = p.pk WHERE {' AND '.join(conditions)}", keys, widths)


def _same_modality(values: Mapping[str, str], known: dict[str, tuple]) -> bool:
    """Whether the instance leaves its stored series' Modality as it is (an empty value keeps it), so
    that the study's Modalities In Study, made of its series' modalities, stays as stored too."""
    if SERIES not in known:
        return False
    modality = values.get("Modality", "")
    return not modality or modality == known[SERIES][_SERIES_MODALITY]


def _value_columns(level: str, values: Mapping[str, str]) -> dict:
    """column -> value for one level's columns read from the file, PN columns with their _norm twin."""
    columns = {}
    for keyword, column, norm_column in _read_columns(level):
        value = values.get(keyword, "") or ""
        columns[column] = value
        if norm_column:
            columns[norm_column] = schema.normalise_pn(value)
    return columns


@functools.cache
def _read_columns(level: str) -> tuple[tuple[str, str, str | None], ...]:
    """(keyword, column, PN twin) of a level's columns read from the file: four levels per store."""
    return tuple((c.keyword, c.column, c.norm_column) for c in schema.COLUMNS
                 if c.level == level and c.source != "derived")


_KNOWN_SERIES = _known_series_sql()
_SERIES_MODALITY = 1 + _level_sql(SERIES, "study_pk").stored_columns.index(schema.BY_KEYWORD["Modality"].column)
