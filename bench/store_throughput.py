"""pacs storescu: throughput with parallel associations (processes vs threads), and peak RSS sending 1 GB.

    python bench/store_throughput.py [--files 2000] [--runs 3] [--associations 1,2,4] [--large-mb 1024]

Part 1 sends FILES small MR-like objects (about 9.5 KB) from one directory to DCMTK's storescp (``--fork``,
one process per association, ``TCP_NODELAY=1``: the fastest receiver at hand, so the sender is what is
measured) with ``--associations N`` run in processes and in threads, next to DCMTK's storescu on one
association. Part 2 streams a LARGE_MB multi-frame file to disk and sends it to ``pacs storescp`` (chunked
receive), recording the sender's peak RSS (``ru_maxrss`` of the console script). Writes
bench/results/store_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import find_pacs  # noqa: E402
from store_large import dcmtk, free_port, make_multiframe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_small_files(folder: Path, count: int) -> None:
    """MR-like 64x64 16-bit images, about 9.5 KB each, one study."""
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    for number in range(count):
        ds = pydicom.Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), study, series
        ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = "BENCH", "Bench^Small", "MR", number
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = os.urandom(64 * 64 * 2)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{number:05d}.dcm", enforce_file_format=True)


def wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while subprocess.run([dcmtk("echoscu"), "-aec", "PACS", "127.0.0.1", str(port)], capture_output=True).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[0]} did not start")
        time.sleep(0.1)


def timed(argv: list[str], env=None) -> tuple[float, int]:
    """Seconds and peak RSS (KB) of one run; fails loudly when the sender does."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return seconds, usage.ru_maxrss


def throughput(work: Path, files: int, runs: int, associations: list[int]) -> dict:
    source = work / "small"
    make_small_files(source, files)
    port, received = free_port(), work / "received"
    received.mkdir()
    env = {**os.environ, "TCP_NODELAY": "1"}
    scp = subprocess.Popen([dcmtk("storescp"), "--fork", "-od", str(received), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    senders = {"DCMTK storescu, 1 association": [dcmtk("storescu"), "-aec", "PACS", "+sd", "127.0.0.1",
                                                  str(port), str(source)]}
    for count in associations:
        for mode in ("process", "thread") if count > 1 else ("process",):  # one runs in the calling process
            kind = {"process": "processes", "thread": "threads"}[mode]
            name = f"pacs storescu, {count} associations, {kind}" if count > 1 else "pacs storescu, 1 association"
            senders[name] = [find_pacs(), "storescu", "-q", "-aec", "PACS", "--associations", str(count),
                             "--parallel", mode, "127.0.0.1", str(port), str(source)]
    results = {}
    try:
        wait_ready(port, scp)
        for name, argv in senders.items():
            results[name] = [timed(argv, env)[0] for _ in range(runs)]
            print(f"{name}: {statistics.median(results[name]):.2f} s", file=sys.stderr)
    finally:
        scp.terminate()
        scp.wait()
    return {name: {"seconds": times, "files_per_s": [files / t for t in times]} for name, times in results.items()}


def large(work: Path, size_mb: int, runs: int) -> dict:
    source = work / "large.dcm"
    make_multiframe(source, size_mb)
    port, archive = free_port(), work / "archive"
    scp = subprocess.Popen([find_pacs(), "storescp", "--port", str(port), "--dir", str(archive)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        wait_ready(port, scp)
        for _ in range(runs):
            seconds, rss_kb = timed([find_pacs(), "storescu", "-q", "-aec", "PACS", "127.0.0.1", str(port),
                                     str(source)])
            results.append({"seconds": seconds, "peak_rss_mb": rss_kb / 1024,
                            "mb_per_s": source.stat().st_size / 1e6 / seconds})
            print(f"large: {results[-1]}", file=sys.stderr)
            shutil.rmtree(archive / "BENCH", ignore_errors=True)
    finally:
        scp.terminate()
        scp.wait()
    return {"size_mb": source.stat().st_size / 1e6, "runs": results}


def report(files: int, small: dict, big: dict | None) -> str:
    lines = [f"{files} files of about 9.5 KB to DCMTK storescp --fork (TCP_NODELAY=1), "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}:", "",
             "| sender | files/s, median (min–max) |", "|---|---|"]
    for name, result in small.items():
        rates = result["files_per_s"]
        lines.append(f"| {name} | {statistics.median(rates):.0f} ({min(rates):.0f}–{max(rates):.0f}) |")
    if big:
        rss = [r["peak_rss_mb"] for r in big["runs"]]
        rate = [r["mb_per_s"] for r in big["runs"]]
        lines += ["", f"One {big['size_mb']:.0f} MB multi-frame object, pacs storescu to pacs storescp:", "",
                  "| sender peak RSS MB, median (min–max) | MB/s, median (min–max) |", "|---|---|",
                  f"| {statistics.median(rss):.0f} ({min(rss):.0f}–{max(rss):.0f}) "
                  f"| {statistics.median(rate):.0f} ({min(rate):.0f}–{max(rate):.0f}) |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--associations", default="1,2,4")
    parser.add_argument("--large-mb", type=int, default=1024, help="0 skips the large-object part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        work = Path(tmp)
        small = throughput(work, args.files, args.runs, [int(n) for n in args.associations.split(",")])
        big = large(work, args.large_mb, args.runs) if args.large_mb else None
    table = report(args.files, small, big)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store_throughput.md").write_text(table + "\n")
    (RESULTS / "store_throughput.json").write_text(
        json.dumps({"files": args.files, "cpus": os.cpu_count(), "small": small, "large": big}, indent=2) + "\n")


if __name__ == "__main__":
    main()
