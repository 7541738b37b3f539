"""Store throughput: C-STORE of three data shapes between DCMTK, pacs and pynetdicom's bundled apps.

Shapes: CT-like 512x512 16-bit images (0.5 MB each), MR-like 64x64 16-bit images (~9 KB), one large
multi-frame object. Every pair runs once per bench run, pairs interleaved so that a busy moment hits all
alike and in an order rotated from run to run (:func:`rotated`), each run with a fresh receiver whose
Usage (CPU seconds, peak RSS) is taken when it is stopped.

The sender's wall time, spawn to exit, gives images/s and MB/s: it includes the sender's start-up and
association set-up, as a user sees it. A run counts only when every file arrived: files on the
receiver's disk (and, for pacs, rows in its index) equal the files sent; otherwise the run is a failure
and gives no figure. The ratio is to DCMTK storescu -> DCMTK storescp (``TCP_NODELAY=1``) sending the
same files in the same bench run.

Every run starts with the page cache written back (``sync``), the files to send read into it
(``read_into_page_cache``), and no files deleted since the bench began:
received files are set aside until its end (:meth:`Context.set_aside`), for deleting thousands of files
made every receiver that followed pay for it (the report says when the disk was too small for that), and
dropped from the page cache, which they filled half way through the CT case (``release_page_cache``).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from _common import (
    HOST, BenchError, CaseResult, Context, Images, Server, cell, count_files, dcmtk, echo_ready, free_port,
    log_tail, log_tails, ratio, read_into_page_cache, ready_file, run, runs_summary, table,
)

PACS_OWN = (".incoming", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "index.sqlite-journal",
            "index.sqlite-lock")
SHAPES = {"store-ct": "ct", "store-mr": "mr", "store-large": "large"}


@dataclass(frozen=True)
class Pair:
    """A sender and a receiver, and the options that make this row."""

    label: str
    sender: str           # dcmtk | pacs | pynetdicom
    receiver: str         # dcmtk | pacs | pynetdicom
    associations: int = 1
    workers: int = 1  # pacs storescp --workers
    shipped: bool = False  # DCMTK without TCP_NODELAY: Nagle on, as installed
    cap: int | None = None  # send only the first so many files

    @property
    def reference(self) -> bool:
        return self.sender == self.receiver == "dcmtk" and not self.shipped


def pairs_for(ctx: Context, shape: str) -> list[Pair]:
    plan = ctx.plan
    pairs = [
        Pair("DCMTK storescu → DCMTK storescp", "dcmtk", "dcmtk"),
        Pair("pacs storescu → pacs storescp", "pacs", "pacs"),
        Pair("DCMTK storescu → pacs storescp", "dcmtk", "pacs"),
        Pair("pacs storescu → DCMTK storescp", "pacs", "dcmtk"),
    ]
    if shape != "large":  # one file cannot be shared out between associations
        pairs += [Pair("pacs storescu -a 2 → pacs storescp", "pacs", "pacs", associations=2),
                  Pair("pacs storescu -a 4 → pacs storescp", "pacs", "pacs", associations=4),
                  Pair("pacs storescu -a 2 → pacs storescp --workers 2", "pacs", "pacs", associations=2,
                       workers=2)]
    if shape in plan.shipped_caps:
        pairs.append(Pair("DCMTK → DCMTK as shipped (Nagle on)", "dcmtk", "dcmtk", shipped=True,
                          cap=plan.shipped_caps[shape]))
    if shape in plan.pynetdicom_caps:
        pairs.append(Pair("pynetdicom storescu → pynetdicom storescp (apps)", "pynetdicom", "pynetdicom",
                          cap=plan.pynetdicom_caps[shape]))
    return pairs


def data_for(ctx: Context, shape: str, cap: int | None = None) -> Images:
    if shape == "large":
        return ctx.large()
    count = {"ct": ctx.plan.ct, "mr": ctx.plan.mr}[shape]
    return ctx.images(shape, min(count, cap) if cap else count)


# --- receivers and senders -----------------------------------------------------------------------------


def receiver(ctx: Context, pair: Pair, out: Path, log: Path) -> Server:
    env = ctx.env_shipped if pair.shipped else ctx.env
    if pair.receiver == "pacs":
        ready = out.parent / "ready.txt"
        argv = [ctx.pacs, "storescp", "--host", HOST, "--port", "0", "--ready-file", ready, "--dir", out,
                "--workers", pair.workers]
        return Server("pacs storescp", argv, env, log, ready_file(ready))
    port = free_port()
    if pair.receiver == "dcmtk":
        argv = [dcmtk("storescp"), "+xe", "-od", out, port]
        return Server("DCMTK storescp", argv, env, log, echo_ready(port))
    argv = [sys.executable, "-m", "pynetdicom", "storescp", "-ba", HOST, "-od", out, port]
    return Server("pynetdicom storescp", argv, env, log, echo_ready(port))


def sender_argv(ctx: Context, pair: Pair, port: int, data: Images) -> list:
    if pair.sender == "dcmtk":
        # -xe: propose uncompressed TS, explicit VR little endian first (the files' own); +sd: a folder.
        return [dcmtk("storescu"), "-xe", "+sd", HOST, port, data.folder]
    if pair.sender == "pacs":
        return [ctx.pacs, "storescu", "-q", "--associations", pair.associations, HOST, port, data.folder]
    return [sys.executable, "-m", "pynetdicom", "storescu", "-xe", HOST, port, data.folder]


def received(pair: Pair, out: Path) -> tuple[int, str]:
    """How many files arrived, and what was counted."""
    if pair.receiver != "pacs":
        files = count_files(out)
        return files, f"{files} files"
    files = count_files(out, skip=PACS_OWN)
    try:
        conn = sqlite3.connect(f"file:{out / 'index.sqlite'}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT count(*) FROM instances").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        rows = 0
    return min(files, rows), f"{files} files, {rows} index rows"


def one_run(ctx: Context, case: str, pair: Pair, data: Images, number: int) -> dict:
    shipped = "-shipped" if pair.shipped else ""
    slug = f"{pair.sender}-{pair.receiver}-a{pair.associations}-w{pair.workers}{shipped}-{data.count}"
    base = ctx.dir("store", case, slug, f"run{number}")
    out = base / "received"
    out.mkdir()
    env = ctx.env_shipped if pair.shipped else ctx.env
    os.sync()  # the last run's files written back: no run pays for another's
    read_into_page_cache(data.paths)  # nor for reading its files from disk
    with receiver(ctx, pair, out, base / "receiver.log") as server:
        sent = run(sender_argv(ctx, pair, server.port, data), env, base / "sender.log", check=False)
        got = server.stop()
    arrived, counted = received(pair, out)
    result = {"files": data.count, "bytes": data.bytes, "sender": sent.json(), "receiver": got.json(),
              "arrived": arrived, "counted": counted}
    if sent.returncode != 0 or arrived != data.count:
        why = f": {log_tail(base / 'sender.log', 300)}" if sent.returncode else ""
        result["failed"] = f"sender exit {sent.returncode}, {counted} of {data.count} arrived{why}"
        result["logs"] = log_tails(base)
    else:
        result.update(images_per_s=data.count / sent.wall_s, mb_per_s=data.bytes / 1e6 / sent.wall_s)
    ctx.say(f"{case} run {number}: {pair.label} ({data.count:,} files): "
            + (f"FAILED: {result['failed'][:200]}" if "failed" in result else
               f"{sent.wall_s:.2f} s, " + (f"{result['images_per_s']:,.0f} img/s, " if data.count > 1 else "")
               + f"{result['mb_per_s']:,.0f} MB/s"))
    ctx.set_aside(out)
    return result


def measure(ctx: Context, case: str) -> CaseResult:
    shape = SHAPES[case]
    pairs = pairs_for(ctx, shape)
    # The reference runs once for every file count in use, so that each ratio compares equal work.
    counts = sorted({data_for(ctx, shape, p.cap).count for p in pairs})
    references = {n: Pair("DCMTK storescu → DCMTK storescp", "dcmtk", "dcmtk", cap=n) for n in counts}
    plan = [(p, data_for(ctx, shape, p.cap)) for p in pairs]
    plan += [(references[n], data_for(ctx, shape, n)) for n in counts[:-1]]  # the full count is pairs[0]
    raw: dict[str, list] = {f"{p.label} [{d.count}]": [] for p, d in plan}
    failures = []
    for number in range(1, ctx.runs + 1):
        for pair, data in rotated(plan, number - 1):
            key = f"{pair.label} [{data.count}]"
            try:
                raw[key].append(one_run(ctx, case, pair, data, number))
            except BenchError as exc:
                raw[key].append({"files": data.count, "failed": str(exc)})
                ctx.say(f"{case} run {number}: {pair.label}: FAILED: {exc}")
            if "failed" in raw[key][-1]:
                failures.append(f"{key} run {number}: {raw[key][-1]['failed'][:300]}")
    return report(ctx, case, shape, plan, raw, failures)


def rotated(plan: list, shift: int) -> list:
    """The plan starting ``shift`` pairs later, so that each run puts every pair after another one.

    What a pair finds depends on the one before it: on this VM memory a process touches for the
    first time in a while costs up to ~15 µs a page, and a receiver that follows one that freed less
    memory than it needs pays for the rest. DCMTK's storescp, 271 MB for the 268 MB object, ran after
    `pacs storescp` (45 MB) in every run and spent 0.58–0.73 CPU-s receiving from `pacs storescu`
    against 0.29–0.40 from DCMTK's storescu (three reports); with the order rotated, 0.45 against 0.46.
    """
    shift %= len(plan)
    return plan[shift:] + plan[:shift]


# --- the table -------------------------------------------------------------------------------------------


def report(ctx: Context, case: str, shape: str, plan, raw: dict, failures: list[str]) -> CaseResult:
    sizes = {d.count: d for _, d in plan}
    biggest = max(sizes.values(), key=lambda d: d.count)
    if shape == "large":
        title = f"Store: one {biggest.mb:,.0f} MB multi-frame object ({ctx.plan.large_mb} MiB of pixel data)"
    else:
        kind = "CT-like 512×512 16-bit" if shape == "ct" else "MR-like 64×64 16-bit"
        title = f"Store: {biggest.count:,} × {biggest.mb / biggest.count * 1000:,.1f} KB {kind} images"
    large = shape == "large"
    headers = ["sender → receiver", "files", "seconds" if large else "images/s", "MB/s", "vs DCMTK", "sender CPU s",
               "sender RSS MB", "receiver CPU s", "receiver RSS MB"]
    rows = []
    reference = {d.count: runs_summary(raw[f"{p.label} [{d.count}]"], "mb_per_s") for p, d in plan if p.reference}
    for pair, data in plan:
        runs = raw[f"{pair.label} [{data.count}]"]
        rate = runs_summary(runs, "mb_per_s")
        label = pair.label + ("" if data.count == biggest.count else f" (first {data.count:,} files)")
        if pair.reference and data.count != biggest.count:
            label = f"DCMTK → DCMTK, reference for the {data.count:,}-file rows"
        first = runs_summary(runs, "sender", "wall_s") if large else runs_summary(runs, "images_per_s")
        rows.append([label, f"{data.count:,}", cell(first, 2 if large else None, runs=ctx.runs), cell(rate),
                     "1 (reference)" if pair.reference else ratio(rate, reference.get(data.count)),
                     cell(runs_summary(runs, "sender", "cpu_s"), 2), cell(runs_summary(runs, "sender", "rss_mb"), 0),
                     cell(runs_summary(runs, "receiver", "cpu_s"), 2), cell(runs_summary(runs, "receiver", "rss_mb"), 0)])
    lines = table(headers, rows)
    notes = [
        "",
        "Figures: median (min–max) over the runs; `vs DCMTK` is the rate over DCMTK → DCMTK's on the same "
        "files in this bench run (above 1 is faster). Rates use the sender's wall time, spawn to exit. "
        "CPU is user+system seconds and RSS the peak resident set (`ru_maxrss`) of each process from its "
        "start to its exit (a receiver's include its start-up; `-a N` senders include their worker "
        "processes). DCMTK runs with `TCP_NODELAY=1` unless marked as shipped.",
    ]
    capped = [p for p, d in plan if p.cap and not p.reference]
    if capped:
        notes.append("")
        notes.append("Rows with fewer files are capped because those programs stall ~40 ms per object on "
                     "Nagle's algorithm; each is compared with DCMTK sending the same files.")
    if ctx.deleted_between_runs:
        notes.append("")
        notes.append("**Received files were deleted between runs** (the disk was short of room): a receiver "
                     "creating files just after thousands were freed pays up to 0.8 ms per file on an ext4 "
                     "without a journal, whichever program it is, so the ratios are closer to 1 than they "
                     "should be.")
    if failures:
        notes.append("")
        notes.append(f"**{len(failures)} failed run(s)** (no figure taken): " + "; ".join(failures[:5]))
    return CaseResult(case, title, lines + notes, {"files": biggest.count, "bytes": biggest.bytes, "runs": raw},
                      failures)
