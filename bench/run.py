"""Every benchmark in one run: pacs next to DCMTK (and pynetdicom's apps), measured side by side.

    python bench/run.py                 # full: the sizes of issue 7, about an hour on 2 cores
    python bench/run.py --quick         # smaller sizes, about 5 minutes on 2 cores
    python bench/run.py --only store-ct,find --runs 5

Writes bench/results/latest.md (the machine, then one table per case) and bench/results/latest.json
(the machine, the plan and every run's raw numbers). Each figure is the median and min–max over the
runs (at least 3 for figures to report) with its ratio to the DCMTK figure measured in the same run.
Cases: startup, store-ct, store-mr, store-large (or `store` for the three), index, find, move; see
bench/README.md for what each measures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # this process imports pacs_cli (the find case): leave no .pyc in the checkout

from _common import (  # noqa: E402
    FULL, QUICK, RESULTS, BenchError, CaseResult, Context, machine, machine_cpu_seconds, own_cpu_seconds, run,
    warm_up, write_json,
)  # noqa: E402
from cases import find, index, move, startup, store  # noqa: E402

CASES = {
    "startup": startup.measure,
    "store-ct": store.measure,
    "store-mr": store.measure,
    "store-large": store.measure,
    "index": index.measure,
    "find": find.measure,
    "move": move.measure,
}
GROUPS = {"store": ["store-ct", "store-mr", "store-large"]}
MIN_RUNS = 3


def selected(only: str | None) -> list[str]:
    if not only:
        return list(CASES)
    wanted = []
    for name in (n.strip() for n in only.split(",") if n.strip()):
        names = GROUPS.get(name, [name])
        for case in names:
            if case not in CASES:
                raise SystemExit(f"error: unknown case {name!r}; choose from {', '.join([*CASES, *GROUPS])}")
            wanted.append(case)
    return [case for case in CASES if case in wanted]  # always in the order of CASES: index before find


def rss_floor(ctx: Context) -> float:
    """The smallest peak RSS the method can report (see _spawn.py): that of `true`."""
    return run([shutil.which("true") or "/bin/true"], ctx.env, ctx.work / "floor.log").rss_mb


def header(info: dict, ctx: Context, cases: list[str], seconds: float, argv: list[str]) -> list[str]:
    plan = ctx.plan
    lines = [
        "# pacs benchmarks: latest run",
        "",
        f"`python bench/run.py {' '.join(argv)}`".replace("bench/run.py ``", "bench/run.py`"),
        f"— {plan.name} mode, {ctx.runs} runs per figure, {seconds / 60:.1f} minutes, {info['date']}.",
        "",
    ]
    if ctx.runs < MIN_RUNS:
        lines += [f"**Trial run: fewer than {MIN_RUNS} runs per figure; not figures to report.**", ""]
    if plan.name == "quick":
        caps = plan.pynetdicom_caps
        lines += ["**Quick mode: smaller than issue 7 asks for** (full mode in brackets): "
                  f"{plan.ct:,} CT images [{FULL.ct:,}], {plan.mr:,} MR images [{FULL.mr:,}], one {plan.large_mb} MiB "
                  f"multi-frame [{FULL.large_mb} MiB]; pynetdicom's apps on the first {caps['ct']} CT / "
                  f"{caps['mr']} MR files [{FULL.pynetdicom_caps['ct']:,} / {FULL.pynetdicom_caps['mr']:,}]; "
                  "no DCMTK-as-shipped rows [CT, MR capped at "
                  f"{FULL.shipped_caps['mr']}, large]; {plan.index_files:,} files indexed [{FULL.index_files:,}]; "
                  f"C-FIND against {' and '.join(f'{n:,}' for n in plan.find_sizes)} instances "
                  f"[{' and '.join(f'{n:,}' for n in FULL.find_sizes)}], dcmqrscp on {plan.find_dcmqrscp:,} files "
                  f"[{FULL.find_dcmqrscp:,}], {plan.find_process_queries} process-per-query and "
                  f"{plan.find_session_queries} same-association queries per run "
                  f"[{FULL.find_process_queries} and {FULL.find_session_queries}]; a {plan.move_images}-image "
                  f"C-MOVE [{FULL.move_images}]; {plan.startup_runs} start-up invocations per run "
                  f"[{FULL.startup_runs}].", ""]
    lines += [
        "| machine | |",
        "|---|---|",
        f"| CPU | {info['cpu']}, {info['cores']} cores |",
        f"| RAM | {info['ram_gb']} GB |",
        f"| kernel | {info['kernel']} |",
        f"| Python | {info['python']} |",
        f"| pynetdicom / pydicom | {info['pynetdicom']} / {info['pydicom']} |",
        f"| DCMTK | {info['dcmtk']} |",
        f"| pacs | {info['pacs']}, commit {info['pacs_commit']} (this checkout, via PYTHONPATH) |",
        f"| date | {info['date']} |",
        f"| peak RSS floor | {info['rss_floor_mb']:.1f} MB (`true` started the way every program is) |",
        "",
        "Everything runs on this one machine over 127.0.0.1, sender and receiver side by side on its cores. "
        "Absolute numbers move with the machine; compare ratios, and runs made on one machine. Each case "
        "ends with the CPU time other processes used while it ran (the machine's busy time from /proc/stat "
        "less the bench's own): more than a few percent means the machine was not quiet and the ranges are "
        "wider than they should be.",
        "",
        f"Cases: {', '.join(cases)}.",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    summary_line, details = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=summary_line, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller data, about 5 minutes (see the report)")
    parser.add_argument("--only", metavar="CASE[,CASE]", help=f"cases to run: {', '.join([*CASES, *GROUPS])}")
    parser.add_argument("--runs", type=int, default=MIN_RUNS,
                        help=f"runs per figure (default {MIN_RUNS}; fewer marks the report as a trial)")
    parser.add_argument("--large-mb", type=int, metavar="MIB",
                        help=f"pixel data of the store-large object (default {FULL.large_mb}, quick {QUICK.large_mb})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (data, logs, archives)")
    parser.add_argument("--work-dir", type=Path, help="where the temporary work directory goes (default: $TMPDIR)")
    parser.add_argument("--name", default="latest",
                        help="results file name: bench/results/NAME.md and .json (default: latest)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.large_mb is not None and args.large_mb < 1:
        parser.error("--large-mb must be at least 1")
    cases = selected(args.only)

    work = Path(tempfile.mkdtemp(prefix="pacs-bench-", dir=args.work_dir))
    plan = QUICK if args.quick else FULL
    if args.large_mb:
        plan = replace(plan, large_mb=args.large_mb)
    ctx = Context(plan, args.runs, work, keep=args.keep)
    started = time.perf_counter()
    results: list[CaseResult] = []
    try:
        info = machine()
        info["rss_floor_mb"] = rss_floor(ctx)
        warm_up(ctx.env, work / "warm-up.log")
        ctx.say(f"{ctx.plan.name} run of {', '.join(cases)}, {ctx.runs} runs each; work directory {work}")
        for name in cases:
            case_started, machine_before, own_before = time.perf_counter(), machine_cpu_seconds(), own_cpu_seconds()
            try:
                result = CASES[name](ctx, name)
            except Exception as exc:  # noqa: BLE001 - one broken case must not cost the others' figures
                if not isinstance(exc, (BenchError, OSError)):
                    exc = BenchError(f"{type(exc).__name__}: {exc}")
                ctx.say(f"{name}: FAILED: {exc}")
                result = CaseResult(name, f"{name}: failed", [f"**The case failed, no figures:** {exc}"],
                                    {"error": str(exc), "traceback": traceback.format_exc()}, [str(exc)])
            result.seconds = time.perf_counter() - case_started
            result.other_cpu_s = max(0.0, (machine_cpu_seconds() - machine_before) - (own_cpu_seconds() - own_before))
            results.append(result)
            ctx.say(f"{name} done in {result.seconds:.0f} s")
            # after every case, so an interrupted full run keeps what it measured
            write_results(args.name, info, ctx, cases, results, time.perf_counter() - started, argv)
    finally:
        seconds = time.perf_counter() - started
        if args.keep:
            print(f"kept the work directory {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote bench/results/{args.name}.md and .json in {seconds / 60:.1f} minutes", file=sys.stderr)
    return 1 if any(r.failures for r in results) else 0


def write_results(name: str, info: dict, ctx, cases: list[str], results: list, seconds: float, argv) -> None:
    """The report so far: the cases measured, in the order run."""
    lines = header(info, ctx, cases, seconds, argv)
    if len(results) < len(cases):
        lines += [f"**Incomplete: {len(results)} of {len(cases)} cases measured** (the run was in progress "
                  "or interrupted).", ""]
    for result in results:
        busy = result.other_cpu_s / result.seconds / (os.cpu_count() or 1) * 100 if result.seconds else 0
        lines += ["", f"## {result.title}", "", *result.lines, "",
                  f"_({result.name}: {result.seconds:.0f} s; other processes on the machine used "
                  f"{result.other_cpu_s:.0f} CPU-seconds meanwhile, {busy:.0f}% of its cores)_"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(RESULTS / f"{name}.json", {
        "argv": argv, "machine": info, "plan": asdict(ctx.plan), "runs": ctx.runs, "seconds": round(seconds, 1),
        "cases": {r.name: {"title": r.title, "seconds": round(r.seconds, 1), "other_cpu_s": round(r.other_cpu_s, 1),
                           "failures": r.failures, **r.raw} for r in results}})


if __name__ == "__main__":
    sys.exit(main())
