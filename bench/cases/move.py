"""C-MOVE of one study: pacs storescp as the archive that moves it, against DCMTK's dcmqrscp, both sending
to the same DCMTK storescp (AE title DEST), both triggered by DCMTK's movescu.

The study (CT-like 512x512 images, one series) is generated once; pacs indexes it in place (``pacs index``,
the files stay where they are) and dcmqrscp registers the same files with dcmqridx. pacs knows DEST as a
``[peers.dest]`` entry of a TOML config file passed with ``--config``; dcmqrscp from its HostTable.
Each run starts the mover afresh (so its CPU and peak RSS are the run's), times ``movescu`` from spawn to
exit, stops the mover, and counts the files that reached DEST; a run where any is missing is a failure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from _common import (
    HOST, BenchError, CaseResult, Context, Server, cell, count_files, dcmtk, echo_ready, free_port, log_tail,
    log_tails, ratio, read_into_page_cache, ready_file, run, runs_summary, table,
)

from cases.index import build_dcmqridx, build_pacs

DEST = "DEST"
QR_AET = "QRSCP"


def dcmqrscp_config(storage: Path, dest_port: int) -> str:
    return (f"NetworkTCPPort = 104\nMaxPDUSize = 16384\nMaxAssociations = 16\n\nHostTable BEGIN\n"
            f"dest = ({DEST}, {HOST}, {dest_port})\nHostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{QR_AET} {storage} RW (500, 4096mb) ANY\nAETable END\n")


def mover(ctx: Context, kind: str, base: Path, setup: dict) -> Server:
    if kind == "pacs":
        ready = base / "ready.txt"
        argv = [ctx.pacs, "--config", setup["config"], "storescp", "--host", HOST, "--port", "0",
                "--ready-file", ready, "--dir", setup["archive"], "--db", setup["db"]]
        return Server("pacs storescp", argv, ctx.env, base / "mover.log", ready_file(ready))
    port = free_port()
    return Server("dcmqrscp", [dcmtk("dcmqrscp"), "-c", setup["dcmqrscp_config"], port], ctx.env,
                  base / "mover.log", echo_ready(port, QR_AET))


def measure(ctx: Context, case: str) -> CaseResult:
    data = ctx.images("move")
    study = _study_uid(data.paths[0])
    base = ctx.dir("move")
    dest_out = base / "dest"
    dest_out.mkdir()
    dest_port = free_port()
    destination = Server("DCMTK storescp (DEST)", [dcmtk("storescp"), "+xe", "-aet", DEST, "-od", dest_out, dest_port],
                         ctx.env, base / "dest.log", echo_ready(dest_port, DEST))

    ctx.say(f"move: indexing the {data.count}-image study for pacs and dcmqrscp")
    config = base / "pacs.toml"
    config.write_text(f'[peers.dest]\nae_title = "{DEST}"\nhost = "{HOST}"\nport = {dest_port}\n')
    build_pacs(ctx, data.folder, base / "pacs" / "index.sqlite", base / "pacs-index.log")
    build_dcmqridx(ctx, data.paths, base / "QRSCP", base / "dcmqridx.log")
    (base / "dcmqrscp.cfg").write_text(dcmqrscp_config(base / "QRSCP", dest_port))
    setup = {"config": config, "archive": base / "pacs" / "archive", "db": base / "pacs" / "index.sqlite",
             "dcmqrscp_config": base / "dcmqrscp.cfg"}

    movers = {"pacs storescp → DCMTK storescp": "pacs", "DCMTK dcmqrscp → DCMTK storescp": "dcmqrscp"}
    raw: dict[str, list] = {label: [] for label in movers}
    failures = []
    with destination:
        for number in range(1, ctx.runs + 1):
            for label, kind in movers.items():
                folder = ctx.dir("move", kind, f"run{number}")
                read_into_page_cache(data.paths)  # both movers read these files where they lie
                try:
                    with mover(ctx, kind, folder, setup) as server:
                        argv = [dcmtk("movescu"), "-S", "-aec", "PACS" if kind == "pacs" else QR_AET, "-aem", DEST,
                                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                                HOST, server.port]
                        usage = run(argv, ctx.env, folder / "movescu.log", check=False)
                        # dcmqrscp moves in a forked child: wait until it is reaped, so that it counts.
                        settled = server.settle()
                        mover_usage = server.stop()
                    arrived = count_files(dest_out)
                    entry = {"movescu": usage.json(), "mover": mover_usage.json(), "arrived": arrived,
                             "mover_children_reaped": settled}
                    if usage.returncode != 0 or arrived != data.count:
                        (folder / "dest.log").write_text(log_tail(base / "dest.log", 3000))
                        raise BenchError(f"movescu exit {usage.returncode} after {usage.wall_s:.0f} s, {arrived} of "
                                         f"{data.count} files at DEST")
                    entry.update(seconds=usage.wall_s, images_per_s=data.count / usage.wall_s,
                                 mb_per_s=data.bytes / 1e6 / usage.wall_s)
                    raw[label].append(entry)
                    ctx.say(f"move run {number}: {label}: {usage.wall_s:.2f} s, {entry['images_per_s']:,.0f} img/s")
                except BenchError as exc:
                    raw[label].append({"failed": str(exc), "logs": log_tails(folder)})
                    failures.append(f"{label} run {number}: {exc}")
                    ctx.say(f"move run {number}: {label}: FAILED: {exc}")
                finally:
                    shutil.rmtree(dest_out, ignore_errors=True)
                    dest_out.mkdir(exist_ok=True)

    def stats(label, *path):
        return runs_summary(raw[label], *path)

    reference = stats("DCMTK dcmqrscp → DCMTK storescp", "images_per_s")
    rows = [[label, cell(stats(label, "seconds"), 2, runs=ctx.runs), cell(stats(label, "images_per_s"), runs=ctx.runs),
             cell(stats(label, "mb_per_s")),
             "1 (reference)" if kind == "dcmqrscp" else ratio(stats(label, "images_per_s"), reference),
             cell(stats(label, "mover", "cpu_s"), 2), cell(stats(label, "mover", "rss_mb"), 0)]
            for label, kind in movers.items()]
    lines = table(["mover → destination", "seconds", "images/s", "MB/s", "vs DCMTK", "mover CPU s",
                   "mover RSS MB"], rows)
    lines += ["", f"One study of {data.count} CT-like images ({data.mb:,.0f} MB), moved by `movescu -S "
              f"-aem {DEST}` (DCMTK) to DCMTK storescp; seconds are movescu's, spawn to exit. Figures: median "
              "(min–max) over the runs; `vs DCMTK` is images/s over dcmqrscp's (above 1 is faster). The mover "
              "is started afresh for each run and stopped once the move is over and any child it forked has been "
              "reaped (dcmqrscp moves in a child per association), so its CPU and RSS include its start-up and "
              "that child. "
              "DCMTK runs with `TCP_NODELAY=1`."]
    if failures:
        lines += ["", f"**{len(failures)} failed run(s)** (no figure taken): " + "; ".join(failures[:5])]
    return CaseResult(case, f"C-MOVE of a {data.count}-image study: pacs storescp vs DCMTK dcmqrscp", lines,
                      {"images": data.count, "bytes": data.bytes, "runs": raw}, failures)


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
