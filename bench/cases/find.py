"""Study-level C-FIND: per-query latency of pacs storescp holding 100,000 and 1,000,000 instances, and of
pacs and DCMTK's dcmqrscp holding the same real files.

Three queries (Study Root, STUDY level, the PS3.4 C.6.2.1 required return keys), each one matching a few
dozen studies at most:

* ``PatientName=SMITH*``-like: a surname prefix (about 1 study in 40 carries a given surname);
* ``StudyDate=20230101-20230131``-like: a one-month range out of ten years;
* ``PatientID=<one patient>``: an exact match.

The values come from the study in the middle of each index, so that every query matches at least one
study at every size.

Three ways to ask:

* one process per query: ``pacs find HOST PORT`` (and DCMTK's ``findscu`` against dcmqrscp), spawn to
  exit, so start-up and one association are in every figure: what a script calling the tool sees;
* one association, many queries: pacs's requestor AE in the bench process (event-driven, TCP_NODELAY) sends the
  queries one after another on one association; the time from sending a query to its final response;
* no network: ``pacs find --db INDEX``, one process per query, reading the index directly.

Data: 100,000 and 1,000,000 instances cannot be stored as files in a bench run, so their rows are written
straight into an index through the project's own library (``Index.write()`` and ``Writer.put`` from
pacs_cli/archive/index.py, the calls ``pacs storescp`` makes for each stored instance), in batches of
5,000 per transaction; the rows point at files that do not exist, which C-FIND never reads. dcmqrscp
cannot serve that much: its index is built by dcmqridx from real files, its rate falls as the index grows
(37 files/s over 10,000 files on a 2-core VM), and it keeps at most 500 studies per storage area. So dcmqrscp holds the
MR-like files (10,000, quick mode fewer) registered by dcmqridx, and pacs serves an index of the same files
made by ``pacs index``, next to it: those rows are the like-for-like comparison.
"""

from __future__ import annotations

import calendar
import sqlite3
import sys
import time
from pathlib import Path

from _common import (
    HOST, REPO, BenchError, CaseResult, Context, Server, cell, dcmtk, echo_ready, free_port, percentile,
    ready_file, run, summary, table,
)

from cases.index import build_dcmqridx, build_pacs

QR_AET = "QRSCP"
RETURN_KEYS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
               "StudyInstanceUID")
BATCH = 5000


def queries(db: Path) -> dict[str, tuple[str, str]]:
    """label -> (keyword, value), taken from the study in the middle of the index so that each matches
    at least that study whatever the size: its patient's surname as a prefix, its month, its PatientID."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        studies = conn.execute("SELECT count(*) FROM studies").fetchone()[0]
        name, patient_id, date = conn.execute(
            "SELECT p.patient_name, p.patient_id, st.study_date FROM studies st JOIN patients p "
            "ON st.patient_pk = p.pk ORDER BY st.pk LIMIT 1 OFFSET ?", (studies // 2,)).fetchone()
    finally:
        conn.close()
    last_day = calendar.monthrange(int(date[:4]), int(date[4:6]))[1]
    return {"name prefix": ("PatientName", f"{name.split('^')[0]}*"),
            "date range": ("StudyDate", f"{date[:6]}01-{date[:6]}{last_day:02d}"),
            "exact PatientID": ("PatientID", patient_id)}


def populate(ctx: Context, db: Path, count: int, seed: int) -> float:
    """Write ``count`` instances' rows into a new index through pacs_cli's Index; seconds taken."""
    sys.path.insert(0, str(REPO))
    import _data
    from pacs_cli.archive.index import FileInfo, Index

    started = time.perf_counter()
    index = Index.open(db)
    try:
        batch = []
        for values in _data.index_rows(count, seed):
            batch.append(values)
            if len(batch) == BATCH:
                _put(index, batch, FileInfo)
                batch = []
        if batch:
            _put(index, batch, FileInfo)
    finally:
        index.close()
    seconds = time.perf_counter() - started
    ctx.say(f"find: wrote {count:,} instances' rows into {db.name} in {seconds:.1f} s")
    return seconds


def _put(index, batch, FileInfo) -> None:
    with index.write() as tx:
        for values in batch:
            # A file that does not exist: C-FIND reads only rows (see the module docstring).
            tx.put(values, FileInfo(f"/nonexistent/{values['SOPInstanceUID']}.dcm", 9000, 0, "BENCH", "index"))


def dcmqrscp_config(storage: Path) -> str:
    # maxStudies 500 is dcmqrscp's upper limit per storage area (DB_UpperMaxStudies in DCMTK 3.6.7).
    return (f"NetworkTCPPort = 104\nMaxPDUSize = 16384\nMaxAssociations = 16\n\nHostTable BEGIN\nHostTable END\n\n"
            f"VendorTable BEGIN\nVendorTable END\n\nAETable BEGIN\n{QR_AET} {storage} RW (500, 1024mb) ANY\n"
            f"AETable END\n")


# --- the three ways to ask ---------------------------------------------------------------------------------


def pacs_find_argv(ctx: Context, keyword: str, value: str, port: int | None = None, db: Path | None = None) -> list:
    argv = [ctx.pacs, "find", "-q", "--level", "study", "--no-default-keys", "--format", "ndjson",
            "-k", f"{keyword}={value}"]
    for k in RETURN_KEYS:
        if k != keyword:
            argv += ["-k", k]
    if db is not None:
        return argv + ["--db", db, "--dir", db.parent / "archive"]
    return argv + ["-aec", "PACS", HOST, port]


def findscu_argv(keyword: str, value: str, port: int) -> list:
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"{keyword}={value}"]
    for k in RETURN_KEYS:
        if k != keyword:
            keys += ["-k", k]
    return [dcmtk("findscu"), "-S", "-aec", QR_AET, *keys, HOST, port]


def process_latencies(ctx: Context, argv: list, count: int, base: Path, expect: int | None) -> list[float]:
    """``count`` runs of one query command, spawn to exit, in ms; checks the match count where it can."""
    latencies = []
    out = base / "stdout.txt"
    for _ in range(count):
        out.unlink(missing_ok=True)
        usage = run(argv, ctx.env, base / "log.txt", timeout=600, stdout=out)
        latencies.append(usage.wall_s * 1000)
        if expect is not None and argv[0] == ctx.pacs:
            got = len(out.read_text().splitlines())
            if got != expect:
                raise BenchError(f"`pacs find` returned {got} matches where the same query on one association "
                                 f"returned {expect}")
    return latencies


class Session:
    """One association from this process for many queries in a row, through pacs's requestor AE
    (event-driven, TCP_NODELAY) and the C-FIND loop `pacs find` runs (``pacs_cli.dimse.find.c_find``):
    the same client against every server."""

    def __init__(self, port: int, called_aet: str):
        import logging

        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        from pacs_cli.dimse.ae import RequestorAE, configure_libraries

        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
        configure_libraries()  # as every pacs command does: no identifier dumps, no value validation
        self.model = FIND
        ae = RequestorAE(ae_title="BENCH")
        ae.add_requested_context(FIND)
        self.assoc = ae.associate(HOST, port, ae_title=called_aet)
        if not self.assoc.is_established:
            raise BenchError(f"no association with {called_aet} on port {port}")

    def query(self, keyword: str, value: str) -> tuple[float, int]:
        """Milliseconds from sending the query to its final response, and the number of matches."""
        from pydicom import Dataset

        from pacs_cli.dimse.find import c_find

        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for k in RETURN_KEYS:
            setattr(ds, k, "")
        setattr(ds, keyword, value)
        matches = 0
        started = time.perf_counter()
        for response in c_find(self.assoc, ds, self.model):
            if response.status is None:
                raise BenchError("the association ended during a C-FIND")
            if response.status in (0xFF00, 0xFF01):
                matches += 1
            elif response.status != 0x0000:
                raise BenchError(f"C-FIND failed with status 0x{response.status:04X}")
        return (time.perf_counter() - started) * 1000, matches

    def close(self) -> None:
        self.assoc.release()


# --- the case ----------------------------------------------------------------------------------------------


def servers(ctx: Context, dbs: dict) -> dict:
    """The targets: label -> dict(server=Server, db=..., instances=..., kind=pacs|dcmqrscp)."""
    targets = {}
    for label, spec in dbs.items():
        folder = ctx.dir("find", "servers", spec["slug"])
        if spec["kind"] == "pacs":
            ready = folder / "ready.txt"
            argv = [ctx.pacs, "storescp", "--host", HOST, "--port", "0", "--ready-file", ready,
                    "--dir", folder / "archive", "--db", spec["db"]]
            server = Server(f"pacs storescp ({label})", argv, ctx.env, folder / "log.txt", ready_file(ready))
        else:
            config = folder / "dcmqrscp.cfg"
            config.write_text(dcmqrscp_config(spec["storage"]))
            port = free_port()
            # Fork mode (the default): dcmqrscp 3.6.7 --single-process crashes when an association ends.
            server = Server(f"dcmqrscp ({label})", [dcmtk("dcmqrscp"), "-c", config, port], ctx.env,
                            folder / "log.txt", echo_ready(port, QR_AET))
        targets[label] = {**spec, "server": server}
    return targets


def datasets(ctx: Context) -> dict:
    """The indexes to query: the same files for dcmqrscp and pacs, then the large pacs indexes."""
    plan = ctx.plan
    shared = ctx.artifacts.get("mr-index")
    if not shared or shared["count"] != plan.find_dcmqrscp:
        data = ctx.images("mr", plan.find_dcmqrscp)
        base = ctx.dir("find", "same-files")
        ctx.say(f"find: registering {data.count:,} files with dcmqridx and pacs index")
        build_dcmqridx(ctx, data.paths, base / "QRSCP", base / "dcmqridx.log")
        build_pacs(ctx, data.folder, base / "index.sqlite", base / "pacs-index.log")
        shared = {"count": data.count, "dcmqridx": base / "QRSCP", "pacs_db": base / "index.sqlite"}
    n = shared["count"]
    dbs = {
        f"dcmqrscp, {n:,} files": {"kind": "dcmqrscp", "slug": "dcmqrscp", "storage": shared["dcmqridx"],
                                    "db": shared["pacs_db"], "instances": n, "pair": True},
        f"pacs, {n:,} files": {"kind": "pacs", "slug": "pacs-files", "db": shared["pacs_db"], "instances": n,
                               "pair": True},
    }
    for number, size in enumerate(plan.find_sizes):
        db = ctx.dir("find", f"rows-{size}") / "index.sqlite"
        seconds = populate(ctx, db, size, seed=40 + 2 * number)
        dbs[f"pacs, {size:,} rows"] = {"kind": "pacs", "slug": f"pacs-{size}", "db": db, "instances": size,
                                       "pair": False, "populate_s": seconds}
    return dbs


def measure(ctx: Context, case: str) -> CaseResult:
    plan = ctx.plan
    dbs = datasets(ctx)
    targets = servers(ctx, dbs)
    raw: dict[str, dict] = {}
    failures: list[str] = []

    def record(key: str, number: int, latencies: list[float] | None, error: str | None = None, **extra):
        entry = raw.setdefault(key, {"runs": [], **extra})
        if latencies is None:
            entry["runs"].append({"failed": error})
            failures.append(f"{key} run {number}: {error}")
            ctx.say(f"find run {number}: {key}: FAILED: {error}")
            return
        entry["runs"].append({"latencies_ms": [round(v, 3) for v in latencies],
                              "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)})

    try:
        for target in targets.values():
            target["server"].__enter__()
        for label, target in targets.items():  # the expected match counts, and a warm cache for every server
            session = Session(target["server"].port, QR_AET if target["kind"] == "dcmqrscp" else "PACS")
            try:
                target["queries"] = queries(target["db"])
                target["matches"] = {q: session.query(*kv)[1] for q, kv in target["queries"].items()}
            finally:
                session.close()
            ctx.say(f"find: {label}: matches {target['matches']}")
        paired = [t for t in targets.values() if t["pair"]]  # the same files: the answers must agree
        for query in paired[0]["matches"]:
            counts = {t["server"].name: t["matches"][query] for t in paired}
            if len(set(counts.values())) > 1:
                failures.append(f"{query}: the servers disagree on the same files: {counts}")
                ctx.say(f"find: {query}: the servers disagree on the same files: {counts}")
        for number in range(1, ctx.runs + 1):
            for label, target in targets.items():
                port, kind = target["server"].port, target["kind"]
                base = ctx.dir("find", "runs", target["slug"], f"run{number}")
                for query, (keyword, value) in target["queries"].items():
                    expect = target["matches"][query]
                    common = {"instances": target["instances"], "target": label, "query": query,
                              "keys": f"{keyword}={value}", "matches": expect}
                    # One process per query, over the network.
                    argv = (findscu_argv(keyword, value, port) if kind == "dcmqrscp"
                            else pacs_find_argv(ctx, keyword, value, port=port))
                    key = f"{label} | process | {query}"
                    try:
                        record(key, number, process_latencies(ctx, argv, plan.find_process_queries, base, expect),
                               method="process", **common)
                    except BenchError as exc:
                        record(key, number, None, str(exc), method="process", **common)
                    # No network: pacs find --db (the large indexes only: the files' index is the same code).
                    if kind == "pacs" and not target["pair"]:
                        key = f"{label} | local | {query}"
                        try:
                            argv = pacs_find_argv(ctx, keyword, value, db=target["db"])
                            record(key, number, process_latencies(ctx, argv, plan.find_process_queries, base,
                                                                  expect), method="local", **common)
                        except BenchError as exc:
                            record(key, number, None, str(exc), method="local", **common)
                # One association, many queries.
                try:
                    session = Session(port, QR_AET if kind == "dcmqrscp" else "PACS")
                except BenchError as exc:
                    for query in target["queries"]:
                        record(f"{label} | session | {query}", number, None, str(exc), method="session")
                    continue
                try:
                    for query, (keyword, value) in target["queries"].items():
                        expect = target["matches"][query]
                        common = {"instances": target["instances"], "target": label, "query": query,
                                  "keys": f"{keyword}={value}", "matches": expect}
                        key = f"{label} | session | {query}"
                        latencies = []
                        try:
                            for _ in range(plan.find_session_queries):
                                ms, got = session.query(keyword, value)
                                if got != expect:
                                    raise BenchError(f"{got} matches, {expect} before")
                                latencies.append(ms)
                            record(key, number, latencies, method="session", **common)
                        except BenchError as exc:
                            record(key, number, None, str(exc), method="session", **common)
                finally:
                    session.close()
                done = [k for k in raw if k.startswith(label)]
                ctx.say(f"find run {number}: {label}: " + ", ".join(
                    f"{k.split(' | ', 1)[1]} p50 {raw[k]['runs'][-1].get('p50_ms', float('nan')):.1f} ms"
                    for k in done))
    finally:
        for target in targets.values():
            target["server"].stop()
    return report(ctx, case, dbs, raw, failures)


def report(ctx: Context, case: str, dbs: dict, raw: dict, failures: list[str]) -> CaseResult:
    plan = ctx.plan

    def stats(key, field):
        runs = raw.get(key, {}).get("runs", [])
        return summary([r[field] for r in runs if "failed" not in r])

    pair = [label for label, spec in dbs.items() if spec["pair"]]
    dcmqrscp_label = next(label for label in pair if dbs[label]["kind"] == "dcmqrscp")
    sections = []
    for method, heading, what in (
        ("process", "One process per query (spawn to exit, one association each)",
         f"{plan.find_process_queries} queries per run: `pacs find HOST PORT` / DCMTK `findscu`"),
        ("session", "One association, queries in a row (pacs's requestor AE in the bench process)",
         f"{plan.find_session_queries} queries per run on one association, time to the final response"),
        ("local", "No network: `pacs find --db INDEX`, one process per query",
         f"{plan.find_process_queries} queries per run"),
    ):
        rows = []
        for label in dbs:
            for query in ("name prefix", "date range", "exact PatientID"):
                key = f"{label} | {method} | {query}"
                if key not in raw:
                    continue
                p50, p95 = stats(key, "p50_ms"), stats(key, "p95_ms")
                reference = stats(f"{dcmqrscp_label} | {method} | {query}", "p50_ms")
                if dbs[label]["kind"] == "dcmqrscp":
                    versus = "1 (reference)"
                elif dbs[label]["pair"] and reference and p50:
                    versus = f"{p50['median'] / reference['median']:.2f}×"
                else:
                    versus = "—"
                rows.append([label, f"{query} `{raw[key]['keys']}`", f"{raw[key]['matches']:,}",
                             cell(p50, runs=ctx.runs), cell(p95), versus])
        if rows:
            headers = ["server (instances)", "query", "matches", "p50 ms", "p95 ms", "vs DCMTK"]
            sections += ["", f"**{heading}.** {what}.", "", *table(headers, rows, "llrrrr")]
    notes = [
        "",
        "Figures: per run, the 50th and 95th percentile of the query latencies; then median (min–max) over the "
        "runs. `vs DCMTK` is the p50 over dcmqrscp's on the same files and query (above 1 is slower). "
        f"\"files\": {dbs[pair[0]]['instances']:,} real MR-like files, registered with dcmqridx for dcmqrscp and "
        "with `pacs index` for pacs. \"rows\": instances written straight into the index through pacs_cli's "
        "`Index.write()`/`Writer.put` (no files; C-FIND reads only the index)"
        + "".join(f", {spec['instances']:,} in {spec['populate_s']:.0f} s" for spec in dbs.values()
                  if "populate_s" in spec)
        + ". dcmqrscp is not run at 100,000 or 1,000,000 instances: its index can only be built from real files "
        "by dcmqridx, whose rate falls as the index grows (see the index case: minutes for 10,000 files), and "
        "it holds at most 500 studies per storage area. "
        "DCMTK runs with `TCP_NODELAY=1`, dcmqrscp in its default fork-per-association mode.",
    ]
    if failures:
        notes += ["", f"**{len(failures)} failed run(s)** (no figure taken): " + "; ".join(failures[:5])]
    sizes = " and ".join(f"{size:,}" for size in plan.find_sizes)
    sections = sections[1:]  # run.py puts a blank line before the case's lines
    return CaseResult(case, f"C-FIND, study level: pacs storescp holding {sizes} instances; pacs and dcmqrscp "
                      f"on {dbs[pair[0]]['instances']:,} files", sections + notes,
                      {"datasets": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in dbs.items()},
                       "series": raw}, failures)
