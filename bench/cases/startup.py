"""Start-up: how long a `pacs` command takes from spawn to exit, next to DCMTK's, in the same run.

``pacs --help`` against DCMTK's ``echoscu --version`` (start-up alone), and ``pacs echo`` against DCMTK's
``echoscu`` (start-up plus one association and C-ECHO) to the same DCMTK storescp; ``python -c pass`` is
the floor any Python command starts from. One untimed warm-up each (page cache, .pyc files), then the
commands alternate so that a busy moment on the machine hits all alike. Output is discarded, so the
terminal does not count.
"""

from __future__ import annotations

import sys

from _common import (
    HOST, CaseResult, Context, Server, cell, dcmtk, echo_ready, free_port, ratio, run, summary, table,
)


def measure(ctx: Context, case: str) -> CaseResult:
    base = ctx.dir("startup")
    port = free_port()
    scp = Server("DCMTK storescp", [dcmtk("storescp"), "-od", base, port], ctx.env, base / "storescp.log",
                 echo_ready(port))
    commands = {
        "pacs --help": [ctx.pacs, "--help"],
        "echoscu --version": [dcmtk("echoscu"), "--version"],
        "pacs echo": [ctx.pacs, "echo", HOST, port],
        "echoscu": [dcmtk("echoscu"), HOST, port],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    invocations = ctx.runs * ctx.plan.startup_runs
    times: dict[str, list[float]] = {label: [] for label in commands}
    with scp:
        for argv in commands.values():
            run(argv, ctx.env, base / "warm-up.log")
        for _ in range(invocations):
            for label, argv in commands.items():
                times[label].append(run(argv, ctx.env, base / "timed.log").wall_s * 1000)
    if not ctx.keep:
        (base / "timed.log").unlink()
    stats = {label: summary(values) for label, values in times.items()}
    reference = {"pacs --help": "echoscu --version", "pacs echo": "echoscu"}
    rows = [[f"`{label}`", cell(stats[label], 1), ratio(stats[label], stats[reference[label]])
             if label in reference else "1 (reference)" if label in reference.values() else "—"]
            for label in commands]
    lines = table(["command", "wall ms", "vs DCMTK"], rows)
    lines += ["", f"Figures: median (min–max) of {invocations} invocations each ({ctx.runs} runs × "
              f"{ctx.plan.startup_runs}), spawn to exit. `vs DCMTK`: `pacs --help` over `echoscu --version`, "
              "`pacs echo` over `echoscu` to the same DCMTK storescp (above 1 is slower)."]
    for label in commands:
        ctx.say(f"startup: {label}: median {stats[label]['median']:.1f} ms")
    return CaseResult(case, "Start-up: `pacs --help` and `pacs echo` vs DCMTK's echoscu", lines,
                      {"times_ms": {label: [round(t, 2) for t in values] for label, values in times.items()}})
