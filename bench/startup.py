"""How long `pacs --help` takes to start, next to DCMTK's `echoscu --version`, measured in the same run.

    python bench/startup.py [-n RUNS]

Runs alternate between the commands (after one untimed warm-up each) so that a busy moment on the machine
hits all alike; `python -c pass` is timed too, as the floor any Python command starts from. Prints a markdown table and writes bench/results/startup.json and startup.md.
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
import sysconfig
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def find_pacs() -> str:
    """The console script next to this interpreter: a pyenv or asdf shim on PATH adds its own start-up."""
    script = Path(sysconfig.get_path("scripts")) / ("pacs.exe" if os.name == "nt" else "pacs")
    if script.is_file():
        return str(script)
    found = shutil.which("pacs")
    if found is None:
        sys.exit("error: no `pacs` console script; install the project first (pip install -e .)")
    return found


def dcmtk_version(path: str) -> str | None:
    """DCMTK's first --version line ('$dcmtk: echoscu v3.6.7 ... $'), None for any other echoscu."""
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (result.stdout.splitlines() or [""])[0]
    return first.strip() if result.returncode == 0 and first.startswith("$dcmtk:") else None


def find_echoscu() -> str:
    """DCMTK's echoscu. pynetdicom installs a Python script of the same name, often earlier on PATH."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory or ".") / "echoscu"
        if candidate.is_file() and os.access(candidate, os.X_OK) and dcmtk_version(str(candidate)):
            return str(candidate)
    sys.exit("error: DCMTK's echoscu is not on PATH (apt-get install dcmtk), or pass --echoscu PATH")


def time_once(argv: list[str]) -> float:
    """Wall-clock seconds from spawn to exit; output is discarded so the terminal does not count."""
    start = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: `{' '.join(argv)}` exited with {result.returncode}: {result.stderr.decode(errors='replace').strip()}")
    return elapsed


def measure(commands: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    for argv in commands.values():
        time_once(argv)  # warm-up: page cache, .pyc files
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, argv in commands.items():
            times[label].append(time_once(argv))
    return times


def summarise(times: list[float]) -> dict[str, float]:
    return {key: round(value * 1000, 2) for key, value in
            (("median_ms", statistics.median(times)), ("min_ms", min(times)), ("max_ms", max(times)))}


def markdown(report: dict) -> str:
    lines = [
        f"Start-up, {report['runs']} runs each, {report['date']} on {report['machine']}",
        "",
        "| command | median (ms) | min–max (ms) |",
        "|---|---:|---:|",
    ]
    for label, stats in report["results"].items():
        lines.append(f"| `{label}` | {stats['median_ms']:.1f} | {stats['min_ms']:.1f}–{stats['max_ms']:.1f} |")
    lines += ["", f"`pacs --help` / `echoscu --version` (medians): **{report['ratio']:.1f}×**",
              "", f"DCMTK {report['dcmtk']}; Python {report['python']}; pacs {report['executables']['pacs']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=10, help="timed runs of each command (default: 10)")
    parser.add_argument("--pacs", help="the pacs executable (default: the console script of this Python)")
    parser.add_argument("--echoscu", help="DCMTK's echoscu (default: the first DCMTK echoscu on PATH)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    pacs, echoscu = args.pacs or find_pacs(), args.echoscu or find_echoscu()
    dcmtk = dcmtk_version(echoscu)
    if dcmtk is None:
        parser.error(f"{echoscu} is not DCMTK's echoscu (its --version does not start with '$dcmtk:')")
    commands = {
        "pacs --help": [pacs, "--help"],
        "echoscu --version": [echoscu, "--version"],
        # The floor: what any Python CLI pays before its first import (interpreter, site, .pth files).
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    times = measure(commands, args.runs)

    results = {label: summarise(values) for label, values in times.items()}
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "dcmtk": dcmtk.strip("$ ").removeprefix("dcmtk: "),
        "executables": {"pacs": pacs, "echoscu": echoscu},
        "runs": args.runs,
        "results": results,
        "ratio": round(results["pacs --help"]["median_ms"] / results["echoscu --version"]["median_ms"], 2),
        "times_ms": {label: [round(t * 1000, 2) for t in values] for label, values in times.items()},
    }
    table = markdown(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "startup.md").write_text(table, encoding="utf-8")
    print(table, end="")
    print(f"\nwrote {RESULTS / 'startup.json'} and {RESULTS / 'startup.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
