"""Peak memory of the receiver for one large multi-frame object: pacs storescp vs DCMTK's storescp.

    python bench/store_large.py [--size-mb 1024] [--runs 3]

Makes one uncompressed multi-frame file of the given size (streamed to disk, never held in memory),
sends it with DCMTK's storescu to each receiver in turn, and records the receiver's peak RSS
(VmHWM) and the transfer time. Writes bench/results/store_large.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import dcmtk_version, find_pacs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FRAME = 1024 * 512 * 2  # bytes per 1024x512 16-bit frame


def dcmtk(name: str) -> str:
    for directory in os.environ["PATH"].split(os.pathsep):
        path = shutil.which(name, path=directory)
        if path and dcmtk_version(path):
            return path
    sys.exit(f"error: DCMTK's {name} not found (apt-get install dcmtk)")


def make_multiframe(path: Path, size_mb: int) -> None:
    """Header by pydicom, Pixel Data streamed: a 1 GB file costs no 1 GB of memory."""
    frames = max(1, size_mb * 1024 * 1024 // FRAME)
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BENCH", "Bench^Large", "MR"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 1024, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    chunk = bytes(FRAME)
    with open(path, "ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", frames * FRAME))
        for _ in range(frames):
            f.write(chunk)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_receiver(name: str, argv_for, source: Path, work: Path) -> dict:
    port = free_port()
    out = work / name
    out.mkdir()
    proc = subprocess.Popen(argv_for(port, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run([dcmtk("echoscu"), "-aec", "PACS", "127.0.0.1", str(port)],
                             capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.1)
        start = time.perf_counter()
        sent = subprocess.run([dcmtk("storescu"), "-aec", "PACS", "127.0.0.1", str(port), str(source)],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if sent.returncode:
            raise RuntimeError(f"sending to {name} failed: {sent.stderr}")
        return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    receivers = {
        "pacs storescp": lambda port, out: [find_pacs(), "storescp", "--port", str(port), "--dir", str(out)],
        "DCMTK storescp": lambda port, out: [dcmtk("storescp"), "-od", str(out), str(port)],
    }
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        work = Path(tmp)
        source = work / "large.dcm"
        make_multiframe(source, args.size_mb)
        size_mb = source.stat().st_size / 1e6
        runs = {name: [run_receiver(name, argv, source, work) for _ in range(args.runs)]
                for name, argv in receivers.items()}
    rows = []
    for name, results in runs.items():
        rss = [r["peak_rss_mb"] for r in results]
        rate = [size_mb / r["seconds"] for r in results]
        rows.append(f"| {name} | {statistics.median(rss):.0f} ({min(rss):.0f}–{max(rss):.0f}) "
                    f"| {statistics.median(rate):.0f} ({min(rate):.0f}–{max(rate):.0f}) |")
    table = "\n".join([f"One {size_mb:.0f} MB multi-frame object sent by DCMTK storescu, {args.runs} runs:", "",
                       "| receiver | peak RSS MB, median (min–max) | MB/s, median (min–max) |", "|---|---|---|", *rows])
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store_large.md").write_text(table + "\n")
    (RESULTS / "store_large.json").write_text(json.dumps({"size_mb": size_mb, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
