"""The archive: receive a staged Part 10 file, check it, move it into place atomically, index it.

The storage SCP receives each C-STORE with pynetdicom's chunked receive into a temp file inside
:attr:`Archive.staging_dir` (``<root>/.incoming``, same file system, so the final ``os.replace`` is an
atomic rename), then calls :meth:`Archive.store_file`:

1. read the header only (``stop_before_pixels`` + ``specific_tags``), outside any lock;
2. check it: the hierarchy UIDs exist, the dataset's SOP Class/Instance UIDs equal the command's;
3. under the archive lock and inside one ``BEGIN IMMEDIATE`` transaction: duplicate check, directory
   creation, ``os.replace`` into place, optional fsync of the directory, index rows; ``COMMIT``.

The staged bytes are moved, never decoded or rewritten. Whatever fails, the staged file is removed and
nothing is left under the final name or in the index; a replaced file is restored from a hard link
taken before the rename. Several association threads may call ``store_file`` at once; two copies of
one SOP Instance UID arriving together are serialised by the lock and the write transaction.

Stale staging files (left by a crash or an abort pynetdicom did not clean) are swept at open. When
another process has the same archive open (it holds a shared ``flock`` on ``.incoming/.lock``), only
files untouched for STALE_AFTER are swept, so its transfers in flight survive.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pydicom.uid import UID

from pacs_cli.archive import errors
from pacs_cli.archive.errors import (
    ArchiveError, ArchiveUnavailable, DuplicateRejected, InvalidInstance, NotFound, OutOfResources,
)
from pacs_cli.archive.header import Header, HeaderError, StagedHead, read_header
from pacs_cli.archive.index import DB_NAME, FileInfo, Index, Writer
from pacs_cli.archive.layout import Layout, UnsafePath, is_inside, parse_template
from pacs_cli.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; sweep by age only
    fcntl = None

log = logging.getLogger("pacs_cli.archive")

STAGING = ".incoming"
STALE_AFTER = 24 * 3600.0  # seconds; longer than any association may stay silent


class DuplicatePolicy(str, enum.Enum):
    """What ``store_file`` does with a SOP Instance UID that is already stored."""

    REJECT = "reject"    # keep the first copy, raise DuplicateRejected
    REPLACE = "replace"  # the new copy replaces file and row
    IGNORE = "ignore"    # keep the first copy, report "ignored"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StoreOutcome:
    """What ``store_file`` did. ``path`` is the final absolute path (the kept one when ignored)."""

    kind: str  # "stored" | "replaced" | "ignored"
    path: Path
    size: int
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class StoreRequest:
    """One staged file for :meth:`Archive.store_files`, with what :meth:`Archive.store_file` takes."""

    staged: str
    calling_aet: str
    sop_class_uid: str
    sop_instance_uid: str
    head: StagedHead | None = None


class _Placed(NamedTuple):
    """One store done inside a transaction, with what undoes it and what follows its COMMIT."""

    outcome: StoreOutcome
    final: str
    backup: Path | None
    created: list[str]
    old_file: Path | None

    @property
    def moved(self) -> bool:
        """The staged file was renamed into place (an ignored duplicate is left where it was)."""
        return self.outcome.kind != "ignored"


@dataclass(frozen=True)
class Removal:
    """What ``remove`` did: rows removed, files deleted (under the root) and kept (outside it)."""

    uid: str
    level: str
    instances: int
    deleted: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Problem:
    kind: str  # "missing" (row, no file) | "changed" (size/mtime differ) | "unindexed" (file, no row)
    path: str
    sop_instance_uid: str = ""
    detail: str = ""


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    checked_rows: int = 0
    checked_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def of_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]


@dataclass(frozen=True)
class Repair:
    """What ``repair`` did: rows of missing files dropped, and the summary of the files re-read."""

    removed: int
    summary: object | None  # a scan.ScanSummary, None when nothing needed re-reading


class Archive:
    """A directory of Part 10 files laid out by a path template, with its SQLite index."""

    # So that callers holding only an Archive can write ``except archive.DuplicateRejected``.
    DuplicateRejected = DuplicateRejected
    InvalidInstance = InvalidInstance
    OutOfResources = OutOfResources
    errors = errors

    def __init__(self, root: Path, index: Index, layout: Layout, policy: DuplicatePolicy,
                 fsync: bool, lock_file=None):
        self.root = root
        self.index = index
        self.layout = layout
        self.on_duplicate = policy
        self.fsync = fsync
        self._lock = threading.Lock()
        self._lock_file = lock_file
        self._reserved = {os.path.normcase(str(p)).casefold() for p in self.own_files()}
        self._staging_prefix = os.path.join(layout.root, STAGING, "")

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, db_path: Path | None = None, template: str | None = None,
             on_duplicate: str = "reject", fsync: bool = False) -> Archive:
        """Create or open the archive at ``root``; the index defaults to ``root/index.sqlite``.

        Raises UsageError for a bad template or policy (exit 2), ArchiveUnavailable when the root,
        the staging directory or the index cannot be created or opened (exit 1).
        """
        policy = _policy(on_duplicate)
        parsed = parse_template(template)
        root = Path(os.path.abspath(root))
        db_path = Path(os.path.abspath(db_path)) if db_path else root / DB_NAME
        staging = root / STAGING
        for directory, what in ((root, "archive directory"), (staging, "staging directory")):
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ArchiveUnavailable(f"cannot create {what} {directory}: {_why(exc)}") from None
        root = Path(os.path.realpath(root))  # one spelling of the root: paths compare reliably
        index = _open_index(db_path, "FULL" if fsync else "NORMAL")
        archive = cls(root, index, Layout(root, parsed), policy, fsync)
        try:
            archive._lock_file = archive._claim_staging()
        except BaseException:
            index.close()
            raise
        return archive

    def close(self) -> None:
        self.index.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def staging_dir(self) -> Path:
        """Where received files are written before store_file: same file system as the archive."""
        return self.root / STAGING

    @property
    def db_path(self) -> Path:
        return self.index.path

    def own_files(self) -> list[Path]:
        """The index and its WAL/SHM/journal/lock files: never a target, never scanned."""
        return self.index.own_files()

    def _claim_staging(self):
        """Sweep stale staging files; hold a shared flock so later openers know we are alive."""
        path = self.staging_dir / ".lock"
        try:
            lock_file = open(path, "a+b")
        except OSError as exc:
            raise ArchiveUnavailable(f"cannot create {path}: {_why(exc)}") from None
        if fcntl is None:
            self._sweep(older_than=STALE_AFTER)
            return lock_file
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError:
            alone = False
        self._sweep(older_than=0.0 if alone else STALE_AFTER)
        fcntl.flock(lock_file, fcntl.LOCK_SH)
        return lock_file

    def _sweep(self, older_than: float) -> int:
        """Remove staging files not modified for ``older_than`` seconds (all of them for 0)."""
        removed = 0
        cutoff = time.time() - older_than
        for entry in os.scandir(self.staging_dir):
            if entry.name == ".lock" or not entry.is_file(follow_symlinks=False):
                continue
            try:
                if older_than == 0.0 or entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError as exc:
                log.warning("cannot remove stale staging file %s: %s", entry.path, _why(exc))
        if removed:
            log.info("removed %d stale file(s) from %s", removed, self.staging_dir)
        return removed

    @contextmanager
    def transaction(self) -> Iterator[Writer]:
        """The archive lock plus one index write transaction: the single writer of this process."""
        with self._lock, self.index.write() as tx:
            yield tx

    # -- storing ---------------------------------------------------------------------------

    def store_file(self, staged: Path | str, calling_aet: str, sop_class_uid: str,
                   sop_instance_uid: str, head: StagedHead | None = None) -> StoreOutcome:
        """Validate, duplicate-check, move into place and index one staged Part 10 file.

        ``sop_class_uid``/``sop_instance_uid`` are the C-STORE command's Affected SOP Class/Instance
        UIDs; ``head``, the file's first bytes as its receiver wrote them. Raises DuplicateRejected,
        InvalidInstance or OutOfResources; the staged file is gone when this returns or raises.
        """
        staged = os.fspath(staged)
        try:
            header, final = self._prepare(staged, sop_class_uid, sop_instance_uid, head)
            with self._lock:
                outcome = self._commit(staged, header, final, calling_aet)
        except BaseException:
            self.discard(staged)
            raise
        if outcome.kind == "ignored":
            self.discard(staged)  # stored and replaced ones were renamed into place
        return outcome

    def store_files(self, requests: list[StoreRequest]) -> list[StoreOutcome | ArchiveError]:
        """:meth:`store_file` for several staged files in one index transaction: one COMMIT for all.

        A receiver whose peer keeps several C-STOREs outstanding stores those it holds complete this
        way; COMMIT was an eighth of its time per small object. Each store is a savepoint of the
        transaction, so one refused leaves the others; if the COMMIT fails, every file of the batch
        is taken back out and each gets the error. The outcomes, or each refusal's ArchiveError, in
        order; every staged file is gone when this returns.
        """
        results: list = [None] * len(requests)
        ready = []
        for number, request in enumerate(requests):
            try:
                header, final = self._prepare(request.staged, request.sop_class_uid, request.sop_instance_uid,
                                              request.head)
            except ArchiveError as exc:
                self.discard(request.staged)
                results[number] = exc
            else:
                ready.append((number, request, header, final))
        placed = []
        try:
            with self._lock, self.index.write() as tx:
                for number, request, header, final in ready:
                    try:
                        with tx.savepoint():
                            placed.append((number, request, self._place(tx, request.staged, header, final,
                                                                        request.calling_aet)))
                    except ArchiveError as exc:
                        self.discard(request.staged)
                        results[number] = exc
        except BaseException as exc:  # the COMMIT, or a savepoint the database could not undo: none is kept
            for _, _, done in placed:
                self._take_back(done)
            for number, request, header, _ in ready:
                self.discard(request.staged)
                if results[number] is None:
                    results[number] = OutOfResources(f"cannot update the index: {exc}", header.sop_instance_uid)
            if not isinstance(exc, sqlite3.Error):
                raise
            return results
        for number, request, done in placed:
            self._settle(done)
            if done.outcome.kind == "ignored":
                self.discard(request.staged)
            results[number] = done.outcome
        return results

    def discard(self, staged: Path | str) -> None:
        """Remove a staged file (after an abort, or whatever store_file did not keep)."""
        try:
            os.unlink(staged)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove staged file %s: %s", staged, _why(exc))

    def _prepare(self, staged: str, sop_class_uid: str, sop_instance_uid: str,
                 head: StagedHead | None) -> tuple[Header, str]:
        """The checks outside the lock: the header against the command, the final path; fsync if asked."""
        header = self._checked_header(staged, sop_class_uid, sop_instance_uid, head)
        final = self._target(header)
        if self.fsync:
            self._io(lambda: _fsync(staged), header, f"cannot fsync {staged}")
        return header, final

    def _checked_header(self, staged: str, sop_class_uid: str, sop_instance_uid: str,
                        head: StagedHead | None) -> Header:
        """The staged file's header, refused unless its UIDs match the C-STORE command's."""
        command_uid = _clean_uid(sop_instance_uid)
        try:
            header = read_header(staged, self.layout.template.keywords, head)
        except HeaderError as exc:
            raise InvalidInstance(str(exc), command_uid) from None
        except OSError as exc:
            raise OutOfResources(f"cannot read the staged file: {_why(exc)}", command_uid) from None
        if _clean_uid(header.sop_instance_uid) != command_uid:
            raise InvalidInstance(f"dataset SOP Instance UID {header.sop_instance_uid!r} differs from "
                                  f"the command's {command_uid!r}", command_uid, mismatch=True)
        if _clean_uid(sop_class_uid) and _clean_uid(header.sop_class_uid) != _clean_uid(sop_class_uid):
            raise InvalidInstance(f"dataset SOP Class UID {header.sop_class_uid!r} differs from "
                                  f"the command's {_clean_uid(sop_class_uid)!r}", command_uid, mismatch=True)
        return header

    def _target(self, header: Header) -> str:
        """The final path; refused when it would be outside the root or one of the archive's own files."""
        uid = header.sop_instance_uid
        try:
            final = self.layout.target(header.values)
        except UnsafePath as exc:
            raise InvalidInstance(str(exc), uid) from None
        key = os.path.normcase(final).casefold()
        if key in self._reserved or final.startswith(self._staging_prefix):
            raise InvalidInstance(f"path {final} would overwrite the archive's own files", uid)
        return final

    def _commit(self, staged: str, header: Header, final: str, calling_aet: str) -> StoreOutcome:
        """The serialised section of one store: its own transaction, all or nothing."""
        done = None
        try:
            with self.index.write() as tx:
                done = self._place(tx, staged, header, final, calling_aet)
        except sqlite3.Error as exc:  # the COMMIT: _place undid its own steps before any other error
            if done is not None:
                self._take_back(done)
            raise OutOfResources(f"cannot update the index: {exc}", header.sop_instance_uid) from None
        self._settle(done)
        return done.outcome

    def _place(self, tx: Writer, staged: str, header: Header, final: str, calling_aet: str) -> _Placed:
        """Duplicate check, rename and index rows inside ``tx``; if one fails, the file system is put
        back as it was before it (the caller rolls the rows back)."""
        uid = header.sop_instance_uid
        moved = False
        backup = None
        old_file = None
        created: list[str] = []
        try:
            existing = tx.instance(uid)
            kind = self._decide(existing, uid)
            if kind == "ignored":
                outcome = self._outcome("ignored", self.path_for(existing["path"]), existing["size"], header)
                return _Placed(outcome, final, None, [], None)
            parents = self._io(lambda: self.layout.make_parents(final), header,
                               f"cannot create the directories of {final}")
            created = parents.created
            key = parents.key or self.key_for(final)
            owner = tx.owner_of_path(key)
            if owner is not None and owner != uid:
                raise InvalidInstance(f"path {key} already holds SOP Instance {owner}", uid)
            backup = self._io(lambda: self._backup(final), header, f"cannot preserve {key}")
            self._io(lambda: os.replace(staged, final), header, f"cannot move the file into {key}")
            moved = True
            if self.fsync:  # the new name, and every directory created for it, in its parent
                for directory in map(os.path.dirname, [final, *created]):
                    self._io(lambda: _fsync(directory), header, f"cannot fsync {directory}")
            st = self._io(lambda: os.stat(final), header, f"cannot stat {key}")
            tx.put(header.values, FileInfo(key, st.st_size, st.st_mtime_ns, calling_aet, "store"),
                   known_new=existing is None)
            if existing is not None and existing["path"] != key:
                old_file = self.path_for(existing["path"])
        except sqlite3.Error as exc:
            self._undo(moved, final, backup, created)
            raise OutOfResources(f"cannot update the index: {exc}", uid) from None
        except BaseException:
            self._undo(moved, final, backup, created)
            raise
        outcome = self._outcome("stored" if existing is None else "replaced", Path(final), st.st_size, header)
        return _Placed(outcome, final, backup, created, old_file)

    def _take_back(self, done: _Placed) -> None:
        """Undo a store whose transaction did not commit."""
        self._undo(done.moved, done.final, done.backup, done.created)

    def _settle(self, done: _Placed) -> None:
        """After the COMMIT: the replaced copy's backup, and the replaced file if it lived elsewhere."""
        self._forget(done.backup)
        if done.old_file is not None and is_inside(self.layout.root, os.path.realpath(done.old_file)):
            self._forget(done.old_file)

    def _decide(self, existing: dict | None, uid: str) -> str:
        """'stored', 'replaced' or 'ignored' by policy; a row whose file vanished is simply replaced."""
        if existing is None:
            return "stored"
        if not self.path_for(existing["path"]).is_file():
            log.warning("SOP Instance %s was indexed but its file %s is gone: storing the new copy",
                        uid, existing["path"])
            return "replaced"
        if self.on_duplicate is DuplicatePolicy.REJECT:
            raise DuplicateRejected(f"SOP Instance {uid} is already stored", uid, existing)
        return "ignored" if self.on_duplicate is DuplicatePolicy.IGNORE else "replaced"

    def _backup(self, final: str) -> Path | None:
        """A hard link to the file about to be replaced, so a failure can put it back."""
        if not os.path.exists(final):
            return None
        backup = self.staging_dir / f"{uuid.uuid4().hex}.bak"
        os.link(final, backup)
        return backup

    def _undo(self, moved: bool, final: str, backup: Path | None, created: list[str]) -> None:
        """Put the file system back as it was before _commit, the directories it created included
        (a store refused for a path another instance holds left them empty)."""
        try:
            if backup is not None:
                os.replace(backup, final)
            elif moved:
                os.unlink(final)
        except OSError as exc:
            log.error("could not undo the store of %s: %s", final, _why(exc))
        for directory in reversed(created):
            try:
                os.rmdir(directory)
            except OSError:  # another store has put a file there meanwhile: it stays
                break

    def _forget(self, path: Path | None) -> None:
        if path is None:
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, _why(exc))

    def _io(self, action, header: Header, what: str):
        """Run a file-system step; any OSError becomes OutOfResources, an escaping symlink too."""
        try:
            return action()
        except UnsafePath as exc:
            raise OutOfResources(f"{what}: {exc}", header.sop_instance_uid) from None
        except OSError as exc:
            hint = (" (the staged file is on another file system: point tempfile.tempdir at "
                    f"{self.staging_dir})") if exc.errno == errno.EXDEV else ""
            raise OutOfResources(f"{what}: {_why(exc)}{hint}", header.sop_instance_uid) from None

    def _outcome(self, kind: str, path: Path, size: int, header: Header) -> StoreOutcome:
        return StoreOutcome(kind, path, size, header.sop_class_uid, header.sop_instance_uid,
                            header["StudyInstanceUID"], header["SeriesInstanceUID"], header["PatientID"],
                            header["TransferSyntaxUID"])

    # -- paths in the index ----------------------------------------------------------------

    def key_for(self, path: Path | str) -> str:
        """How the index names a file: relative to the root ('/' separators) inside it, else absolute."""
        real = os.path.realpath(path)
        if is_inside(self.layout.root, real):
            return Path(os.path.relpath(real, self.layout.root)).as_posix()
        return real

    def path_for(self, key: str) -> Path:
        """The absolute path of an index ``path`` value."""
        return Path(key) if os.path.isabs(key) else self.layout.root / key

    def owns(self, key: str) -> bool:
        """True for index paths inside the archive root: files ``remove`` may delete."""
        return not os.path.isabs(key)

    # -- queries and maintenance -------------------------------------------------------------

    def lookup(self, sop_instance_uid: str) -> dict | None:
        """The index row of one instance (all levels joined), or None."""
        return self.index.instance(_clean_uid(sop_instance_uid))

    def stats(self) -> dict:
        """Counts per level, bytes, per modality and per SOP class (with its name from PS3.6)."""
        stats = self.index.stats()
        for row in stats["sop_classes"]:
            row["name"] = _uid_name(row["sop_class_uid"])
        return stats

    def index_files(self, paths, jobs: int | None = None, progress=None, force: bool = False):
        """Index files where they lie (``pacs index``); see :func:`pacs_cli.archive.scan.index_files`."""
        from pacs_cli.archive.scan import index_files

        return index_files(self, paths, jobs=jobs, progress=progress, force=force)

    def remove(self, uid: str, delete_files: bool = True) -> Removal:
        """Remove a study, series or instance by UID: its rows, and its files inside the root.

        Files outside the root (indexed in place by ``pacs index``) are never deleted; they are listed
        in ``kept``. Files are unlinked inside the write transaction, so no other writer (thread or
        process) can store a new copy at the same path in between. If the commit fails or the process
        dies, rows whose files are gone remain: ``verify`` reports them and ``repair`` drops them.
        """
        uid = _clean_uid(uid)
        with self.transaction() as tx:
            level = tx.level_of(uid)
            if level is None:
                raise NotFound(f"no study, series or instance with UID {uid} in {self.db_path}")
            rows = tx.delete(uid, level)
            return self._delete_files(rows, delete_files, uid, level)

    def _delete_files(self, rows, delete_files: bool, uid: str, level: str) -> Removal:
        deleted, kept, missing = [], [], []
        for _, key in rows:
            path = self.path_for(key)
            if not (delete_files and self.owns(key)):
                kept.append(path)
                continue
            try:
                os.unlink(path)
                deleted.append(path)
            except FileNotFoundError:
                missing.append(path)
            except OSError as exc:
                raise errors.ArchiveError(f"cannot delete {path}: {_why(exc)}",
                                          "pacs index --verify --repair tidies up") from None
        return Removal(uid, level, len(rows), deleted, kept, missing)

    def verify(self) -> VerifyReport:
        """Rows whose file is missing or changed (size or mtime), and files under the root with no row."""
        report = VerifyReport()
        indexed = set()
        for uid, key, size, mtime_ns in self.index.files():
            report.checked_rows += 1
            indexed.add(key)
            try:
                st = self.path_for(key).stat()
            except FileNotFoundError:
                report.problems.append(Problem("missing", key, uid))
                continue
            except OSError as exc:
                report.problems.append(Problem("missing", key, uid, _why(exc)))
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                report.problems.append(Problem("changed", key, uid,
                                               f"size {st.st_size} (index: {size}), mtime changed"
                                               if st.st_size != size else "mtime changed"))
        for path in self.archive_files():
            report.checked_files += 1
            key = self.key_for(path)
            if key not in indexed:
                report.problems.append(Problem("unindexed", key))
        return report

    def archive_files(self):
        """Every regular file under the root except the archive's own (index, staging)."""
        own = {os.path.normcase(str(p)) for p in self.own_files()}
        for directory, subdirs, files in os.walk(self.root):
            if Path(directory) == self.root and STAGING in subdirs:
                subdirs.remove(STAGING)
            for name in files:
                path = os.path.join(directory, name)
                if os.path.normcase(path) not in own:
                    yield path

    def repair(self, report: VerifyReport | None = None, progress=None) -> Repair:
        """Fix what verify found: drop rows of missing files, re-read changed and unindexed files.

        Files that are not DICOM stay where they are (counted in the summary, never deleted), so a
        later verify still reports them as unindexed.
        """
        report = report or self.verify()
        missing = report.of_kind("missing")
        with self.transaction() as tx:
            for problem in missing:
                tx.delete_instance(problem.sop_instance_uid)
            tx.settle_all()
        reread = [self.path_for(p.path) for p in report.problems if p.kind in ("changed", "unindexed")]
        summary = self.index_files(reread, progress=progress, force=True) if reread else None
        return Repair(len(missing), summary)


def _policy(value) -> DuplicatePolicy:
    try:
        return DuplicatePolicy(str(value))
    except ValueError:
        choices = ", ".join(p.value for p in DuplicatePolicy)
        raise UsageError(f"unknown duplicate policy {value!r}", f"choose one of {choices}") from None


def _open_index(db_path: Path, synchronous: str) -> Index:
    """Open the index with a message that says which file and why, e.g. 'permission denied'."""
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o644))  # errno-precise failure first
        return Index.open(db_path, synchronous)
    except OSError as exc:
        raise ArchiveUnavailable(f"cannot open archive index {db_path}: {_why(exc)}") from None
    except sqlite3.Error as exc:
        raise ArchiveUnavailable(f"cannot open archive index {db_path}: {exc}") from None


def _uid_name(uid: str) -> str:
    """'CT Image Storage' for a UID PS3.6 names, else ''."""
    name = UID(uid).name
    return "" if name == uid else name


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clean_uid(uid: str) -> str:
    """UIDs are padded with NUL on the wire (PS3.5 9.1); pydicom also strips whitespace when decoding."""
    return (uid or "").strip(" \t\r\n\f\v\x00")


def _why(exc: OSError) -> str:
    """'permission denied' from EACCES: the OS message, lower-cased to sit inside our sentence."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
