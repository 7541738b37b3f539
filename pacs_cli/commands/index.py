"""``pacs index``: index DICOM files where they lie; show, check, repair and prune the archive's index.

Thin on purpose: the work is in :mod:`pacs_cli.archive`. pydicom, sqlite-utils and rich are imported
inside the functions so that ``pacs --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from pacs_cli.errors import OperationFailed
from pacs_cli.options import archive_options

log = logging.getLogger("pacs_cli.index")


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@archive_options
@click.option("--stats", is_flag=True, help="Show what the index holds (a table on a terminal, else JSON).")
@click.option("--verify", is_flag=True, help="Report rows without files and files without rows; exit 1 if any.")
@click.option("--repair", is_flag=True, help="With --verify: drop rows of missing files, re-read the others.")
@click.option("--remove", "remove_uids", multiple=True, metavar="UID",
              help="Remove a study, series or instance: its rows, and its files inside the archive. Repeatable.")
@click.option("--keep-files", is_flag=True, help="With --remove: drop the rows but delete no file.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), help="Processes reading headers (default: all CPUs).")
@click.pass_obj
def index(state, paths, archive_dir, db_path, stats, verify, repair, remove_uids, keep_files, jobs):
    """Index DICOM files in place, or show, verify, repair and prune the archive's index.

    \b
    Examples:
      pacs index /data/dicom                  # add what is new or changed under /data/dicom
      pacs index --dir /srv/archive --stats   # what the archive holds
      pacs index --verify --repair            # drop rows of missing files, index stray files
      pacs index --remove 1.2.840.113619.2.1  # a study, series or instance, with its files
    """
    if not (paths or stats or verify or repair or remove_uids):
        raise click.UsageError("nothing to do: give PATH..., --stats, --verify or --remove UID")
    from pacs_cli.archive import Archive

    quiet = getattr(state, "quiet", False)
    failures = []
    with Archive.open(archive_dir, db_path) as archive:
        failures += _remove(archive, remove_uids, keep_files)
        if paths:
            failures += _scan(archive, paths, jobs, quiet)
        if verify or repair:
            failures += _verify(archive, repair, quiet)
        if stats:
            _print_stats(archive.stats())
    if failures:
        raise OperationFailed("; ".join(failures))


def _remove(archive, uids, keep_files) -> list[str]:
    """Remove each UID; unknown ones are failures, reported after the others were done."""
    from pacs_cli.archive import NotFound

    failures = []
    for uid in uids:
        try:
            removal = archive.remove(uid, delete_files=not keep_files)
        except NotFound as exc:
            failures.append(str(exc))
            continue
        line = (f"removed {removal.level.lower()} {removal.uid}: {removal.instances} instance(s), "
                f"{len(removal.deleted)} file(s) deleted")
        if removal.kept:
            line += f", {len(removal.kept)} file(s) kept ({'--keep-files' if keep_files else 'outside the archive'})"
        if removal.missing:
            line += f", {len(removal.missing)} file(s) already missing"
        click.echo(line)
    return failures


def _scan(archive, paths, jobs, quiet) -> list[str]:
    with _progress(quiet) as progress:
        summary = archive.index_files(paths, jobs=jobs, progress=progress)
    log.info("read %d header(s) in %d process(es)", summary.read, summary.workers)
    for path, reason in summary.problems:
        log.info("%s: %s", path, reason)
    if not quiet:
        click.echo(_summary_line(summary), err=True)
    failed = summary.invalid + summary.unreadable
    return [f"{failed} file(s) could not be indexed (-v lists them)"] if failed else []


def _summary_line(s, verb: str = "indexed") -> str:
    """One line for a scan summary: totals, time, rate of headers read, and every count."""
    rate = f" ({s.read / s.seconds:,.0f} files/s)" if s.seconds > 0 and s.read else ""
    return (f"{verb} {s.files} file(s) in {s.seconds:.1f} s{rate}: {s.new} new, {s.updated} updated, "
            f"{s.unchanged} unchanged, {s.not_dicom} not DICOM, {s.invalid} invalid, "
            f"{s.duplicates} duplicate(s), {s.unreadable} unreadable")


def _verify(archive, repair, quiet) -> list[str]:
    """Print each problem on stdout (kind, path, UID, detail; tab-separated)."""
    report = archive.verify()
    if repair and not report.ok:
        with _progress(quiet) as progress:
            result = archive.repair(report, progress=progress)
        if not quiet:
            line = f"repair: removed {result.removed} row(s) of missing files"
            click.echo(line + (f"; {_summary_line(result.summary, 're-read')}" if result.summary else ""), err=True)
        report = archive.verify()
    for problem in report.problems:
        click.echo("\t".join(filter(None, [problem.kind, problem.path, problem.sop_instance_uid, problem.detail])))
    if not quiet:
        click.echo(f"verified {report.checked_rows} row(s) and {report.checked_files} file(s): "
                   f"{len(report.problems)} problem(s)", err=True)
    if report.ok:
        return []
    kinds = ", ".join(f"{len(report.of_kind(k))} {k}" for k in ("missing", "changed", "unindexed") if report.of_kind(k))
    return [f"{len(report.problems)} problem(s) in the index ({kinds})"
            + ("" if repair else "; pacs index --verify --repair fixes what it can")]


def _print_stats(stats: dict) -> None:
    if not sys.stdout.isatty():
        click.echo(json.dumps(stats, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    totals = Table("patients", "studies", "series", "instances", "bytes", title="Index")
    totals.add_row(*(f"{stats[k]:,}" for k in ("patients", "studies", "series", "instances", "bytes")))
    modalities = Table("modality", "series", "instances", "bytes")
    for row in stats["modalities"]:
        modalities.add_row(row["modality"] or "(none)", f"{row['series']:,}", f"{row['instances']:,}", f"{row['bytes']:,}")
    classes = Table("SOP class", "UID", "instances", "bytes")
    for row in stats["sop_classes"]:
        classes.add_row(row["name"], row["sop_class_uid"], f"{row['instances']:,}", f"{row['bytes']:,}")
    console.print(totals, modalities, classes)


class _NullProgress:
    def start(self, total):
        pass

    def advance(self, count):
        pass


class _progress:
    """A rich progress bar (rate, ETA) on an interactive stderr, else an object that shows nothing."""

    def __init__(self, quiet: bool):
        self._bar = None
        if not quiet and sys.stderr.isatty():
            self._bar = _rich_progress()

    def __enter__(self):
        if self._bar is None:
            return _NullProgress()
        self._bar.__enter__()
        return _RichTask(self._bar)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)


class _RichTask:
    def __init__(self, bar):
        self._bar = bar
        self._task = None

    def start(self, total):
        self._task = self._bar.add_task("indexing", total=total)

    def advance(self, count):
        self._bar.update(self._task, advance=count)


def _rich_progress():
    from rich.console import Console
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn,
        TransferSpeedColumn,
    )

    class FileRate(TransferSpeedColumn):
        def render(self, task):
            return f"{task.speed:,.0f} files/s" if task.speed else ""

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    FileRate(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
