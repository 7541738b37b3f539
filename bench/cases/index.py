"""Indexing files where they lie: ``pacs index`` against DCMTK's ``dcmqridx``, files per second.

The MR-like files (one folder, ~9 KB each) are indexed into a fresh database in every run: by
``pacs index --db`` with its default worker processes (all cores) and with ``-j 1``, and by dcmqridx into
a dcmqrscp storage area (``index.dat``), its file names passed in batches of 500 per call (the time is
the sum of the calls). A run counts only when the index holds every file: rows in the pacs index, records
in index.dat (its size is a 44,006-byte header plus 8,032 bytes per record in DCMTK 3.6.7). The find case
reuses the last run's databases when it serves the same files.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from _common import (
    BenchError, CaseResult, Context, Usage, batches, cell, dcmtk, ratio, read_into_page_cache, run, summary,
    table,
)

DCMQRIDX_HEADER, DCMQRIDX_RECORD = 44_006, 8_032  # index.dat layout of DCMTK 3.6.7 (dcmqrdbi.h)
BATCH = 500


def dcmqridx_records(folder: Path) -> int:
    size = (folder / "index.dat").stat().st_size
    return (size - DCMQRIDX_HEADER) // DCMQRIDX_RECORD


def pacs_rows(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM instances").fetchone()[0]
    finally:
        conn.close()


def build_dcmqridx(ctx: Context, paths: list[Path], folder: Path, log: Path) -> Usage:
    """Register ``paths`` in a new dcmqrscp storage area; the summed Usage of the batches."""
    folder.mkdir(parents=True, exist_ok=True)
    wall = cpu = rss = 0.0
    for batch in batches(paths, BATCH):
        usage = run([dcmtk("dcmqridx"), "-q", folder, *batch], ctx.env, log)
        wall, cpu, rss = wall + usage.wall_s, cpu + usage.cpu_s, max(rss, usage.rss_mb)
    records = dcmqridx_records(folder)
    if records != len(paths):
        raise BenchError(f"dcmqridx: index.dat holds {records} records for {len(paths)} files")
    return Usage(wall, cpu, rss, 0)


def build_pacs(ctx: Context, folder: Path, db: Path, log: Path, jobs: int | None = None) -> Usage:
    """``pacs index`` of ``folder`` into a new database ``db``."""
    argv = [ctx.pacs, "index", "-q", "--dir", db.parent / "archive", "--db", db, folder]
    if jobs:
        argv[2:2] = ["-j", jobs]
    usage = run(argv, ctx.env, log)
    rows = pacs_rows(db)
    if rows != len(list(folder.iterdir())):
        raise BenchError(f"pacs index: {rows} rows for {len(list(folder.iterdir()))} files")
    return usage


TOOLS = {
    "dcmqridx (DCMTK)": "dcmqridx",
    "pacs index (all cores)": "pacs",
    "pacs index -j 1": "pacs-j1",
}


def measure(ctx: Context, case: str) -> CaseResult:
    data = ctx.images("mr", ctx.plan.index_files)
    raw: dict[str, list] = {label: [] for label in TOOLS}
    failures = []
    last = {}
    for number in range(1, ctx.runs + 1):
        for label, tool in TOOLS.items():
            base = ctx.dir("index", tool, f"run{number}")
            read_into_page_cache(data.paths)
            try:
                if tool == "dcmqridx":
                    usage = build_dcmqridx(ctx, data.paths, base / "QRSCP", base / "log.txt")
                    last["dcmqridx"] = base / "QRSCP"
                else:
                    usage = build_pacs(ctx, data.folder, base / "index.sqlite", base / "log.txt",
                                       jobs=1 if tool == "pacs-j1" else None)
                    if tool == "pacs":
                        last["pacs_db"] = base / "index.sqlite"
                raw[label].append({**usage.json(), "files_per_s": data.count / usage.wall_s})
                ctx.say(f"index run {number}: {label}: {usage.wall_s:.2f} s, {data.count / usage.wall_s:,.0f} files/s")
            except BenchError as exc:
                raw[label].append({"failed": str(exc)})
                failures.append(f"{label} run {number}: {exc}")
                ctx.say(f"index run {number}: {label}: FAILED: {exc}")
    if len(last) == 2:  # the find case serves these same files from these databases
        ctx.artifacts["mr-index"] = {"count": data.count, **last}

    stats = {label: {key: summary([r[key] for r in runs if "failed" not in r])
                     for key in ("files_per_s", "wall_s", "cpu_s", "rss_mb")} for label, runs in raw.items()}
    reference = stats["dcmqridx (DCMTK)"]["files_per_s"]
    rows = [[label, cell(s["files_per_s"], runs=ctx.runs), "1 (reference)" if label.startswith("dcmqridx")
             else ratio(s["files_per_s"], reference), cell(s["wall_s"], 2), cell(s["cpu_s"], 2), cell(s["rss_mb"], 0)]
            for label, s in stats.items()]
    lines = table(["indexer", "files/s", "vs DCMTK", "seconds", "CPU s", "peak RSS MB"], rows)
    lines += ["", f"{data.count:,} MR-like files of ~{data.bytes / data.count / 1000:.1f} KB in one folder, a new "
              "database each run. Figures: median (min–max) over the runs; `vs DCMTK` is files/s over dcmqridx's "
              "(above 1 is faster). pacs index reads headers in worker processes on all cores by default "
              f"(CPU includes them); dcmqridx is one process per batch of {BATCH} files (times summed, RSS the "
              "largest) and rewrites its index record by record, so its rate falls as the index grows."]
    if failures:
        lines += ["", f"**{len(failures)} failed run(s)** (no figure taken): " + "; ".join(failures[:5])]
    return CaseResult(case, f"Index: {data.count:,} files, pacs index vs DCMTK dcmqridx", lines,
                      {"files": data.count, "runs": raw}, failures)
