"""What every benchmark case shares: the executables, timed child processes, servers, statistics, tables.

Executables
    ``pacs`` is the console script next to this interpreter (a pyenv shim on PATH adds its own start-up),
    run with this checkout first on PYTHONPATH so that the working tree is what is measured, whatever
    the editable install points at. DCMTK's tools are found by their ``--version`` banner (``$dcmtk:``),
    /usr/bin first: pynetdicom installs Python scripts with the same names that often come first on PATH.

Children
    Every child gets one environment (:func:`child_env`): no ``PACS_*`` variables, a config home inside
    the run's work directory (no user's ``~/.config/pacs``), ``TCP_NODELAY=1``, which DCMTK reads to
    turn Nagle's algorithm off (see shared/notes/performance.md; pacs sets it itself), and Python's
    byte-code cache in the work directory (``PYTHONPYCACHEPREFIX``; ``PYTHONDONTWRITEBYTECODE`` dropped),
    filled by :func:`warm_up` before anything is timed: a Python process then starts as it would on an
    installed system, without compiling pacs_cli, and nothing is written into this checkout.
    Children are started by a small helper process (_spawn.py, which says why) that reaps each with
    ``os.wait4``: wall time from spawn to exit, user+system CPU seconds and peak RSS (``ru_maxrss``),
    including the child's own reaped children (``pacs storescu --associations N``, a forking DCMTK
    server once :meth:`Server.settle` has let it reap them). Output goes to a log file in the work
    directory, whose tail is quoted when something fails.

Network
    Only 127.0.0.1. A free port comes from binding port 0; pacs servers pick their own (``--port 0``)
    and report it through ``--ready-file``.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
PROCESS_TIMEOUT = 3600.0  # no single child may run longer than this; a hung one is killed
# Free space kept on the work directory's file system while received files wait for the bench's end.
DISK_RESERVE = 4 << 30


class BenchError(Exception):
    """A run that cannot produce a figure: a tool missing, a child failing, files not arriving."""


# --------------------------------------------------------------------------------------------
# Executables


def find_pacs() -> str:
    """The console script next to this interpreter: a pyenv or asdf shim on PATH adds its own start-up."""
    script = Path(sysconfig.get_path("scripts")) / ("pacs.exe" if os.name == "nt" else "pacs")
    if script.is_file():
        return str(script)
    found = shutil.which("pacs")
    if found is None:
        raise BenchError("no `pacs` console script next to this Python; install the project (pip install -e .)")
    return found


def dcmtk_banner(path: str) -> str | None:
    """DCMTK's first --version line ('$dcmtk: echoscu v3.6.7 2022-04-22 $'), None for anything else."""
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (result.stdout.splitlines() or [""])[0].strip()
    return first if result.returncode == 0 and first.startswith("$dcmtk:") else None


@cache
def dcmtk(name: str) -> str:
    """Absolute path of DCMTK's ``name``: /usr/bin first, then PATH, checked by its banner."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    candidates = [f"/usr/bin/{name}"] + [str(Path(d or ".") / name) for d in path]
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and dcmtk_banner(candidate):
            return os.path.abspath(candidate)
    raise BenchError(f"DCMTK's {name} not found (apt-get install dcmtk); a `{name}` on PATH that is not "
                     "DCMTK's (pynetdicom installs some) does not count")


def dcmtk_version() -> str:
    """'3.6.7 2022-04-22' from storescu's banner."""
    banner = dcmtk_banner(dcmtk("storescu")) or ""
    parts = banner.strip("$ ").split()
    return " ".join(parts[2:4]).lstrip("v") if len(parts) >= 4 else banner


def child_env(work: Path, nodelay: bool = True) -> dict[str, str]:
    """The environment of every child: see the module docstring. ``nodelay=False``: DCMTK as shipped."""
    drop = {"TCP_NODELAY", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_") and k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["XDG_CONFIG_HOME"] = str(work / "config-home")
    # Byte-code cached as on any installed system, but in the work directory, not in this checkout.
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


WARM_UP = """
import importlib, pkgutil, pacs_cli
for module in pkgutil.walk_packages(pacs_cli.__path__, "pacs_cli."):
    try:
        importlib.import_module(module.name)
    except Exception:
        pass
import pynetdicom.apps.storescu.storescu, pynetdicom.apps.storescp.storescp, pydicom.uid
"""


def warm_up(env: dict, log: Path) -> None:
    """Import every pacs_cli module (and pynetdicom's apps) once: the byte-code cache is then full."""
    run([sys.executable, "-c", WARM_UP], env, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Timed children


@dataclass
class Usage:
    """One finished child: wall seconds, CPU seconds (user+system), peak RSS in MB (MiB), exit code."""

    wall_s: float
    cpu_s: float
    rss_mb: float
    returncode: int

    def json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


_spawner = None


def spawner():
    """The helper that starts every measured child (see _spawn.py: why peak RSS needs it)."""
    global _spawner
    if _spawner is None:
        from _spawn import Spawner

        _spawner = Spawner()
        atexit.register(_spawner.close)
    return _spawner


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of the bench so far: this process, its reaped children, the helper and its children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + spawner().cpu_seconds()


def _usage(figures: dict) -> Usage:
    return Usage(figures["wall_s"], figures["cpu_s"], figures["rss_kb"] / 1024, figures["returncode"])


def _finish(child, timeout: float) -> Usage:
    """Wait for the child's exit figures; SIGKILL it after ``timeout`` seconds."""
    try:
        return _usage(child.exit.result(timeout=timeout))
    except FutureTimeout:
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return _usage(child.exit.result(timeout=60))


def log_tails(folder: Path, chars: int = 3000) -> dict[str, str]:
    """The end of every log under ``folder``: kept in the results of a failed run, whose work directory
    is about to be removed."""
    return {str(p.relative_to(folder)): log_tail(p, chars) for p in sorted(folder.rglob("*.log"))}


def log_tail(log: Path, chars: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


def _announce(log: Path, argv: Sequence) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(map(str, argv))}\n")


def run(argv: Sequence, env: dict, log: Path, timeout: float = PROCESS_TIMEOUT, check: bool = True,
        stdout: Path | None = None) -> Usage:
    """Run one child to completion, output to ``log`` (stdout to ``stdout`` if given); its Usage.

    A non-zero exit raises BenchError unless ``check`` is off; a child still running after ``timeout``
    seconds is killed.
    """
    _announce(log, argv)
    child = spawner().start([str(a) for a in argv], env, stdout or log, log)
    usage = _finish(child, timeout)
    if check and usage.returncode != 0:
        raise BenchError(f"`{Path(str(argv[0])).name} {' '.join(map(str, argv[1:4]))} ...` exited with "
                         f"{usage.returncode} after {usage.wall_s:.1f} s: {log_tail(log, 600)}")
    return usage


class Server:
    """A server child: started, waited for until ready, stopped with SIGTERM; its Usage once stopped.

    ``ready`` is called with the server (``check_alive()`` it while polling) and returns its port.
    Use it as a context manager so that it is stopped (then killed) whatever happens. It runs in its
    own session, so that children a forking server leaves behind can be told apart and killed.
    """

    def __init__(self, name: str, argv: Sequence, env: dict, log: Path, ready: Callable[[Server], int]):
        self.name, self.argv, self.env, self.log = name, [str(a) for a in argv], env, log
        self._ready = ready
        self.child = None
        self.port: int | None = None
        self.usage: Usage | None = None

    def __enter__(self) -> Server:
        _announce(self.log, self.argv)
        self.child = spawner().start(self.argv, self.env, self.log, self.log, session=True)
        try:
            self.port = self._ready(self)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def check_alive(self) -> None:
        if not self.child.running():
            raise BenchError(f"{self.name} exited before it was ready: {log_tail(self.log, 800)}")

    def children(self) -> list[int]:
        """The server's child processes (running or not yet reaped), from /proc."""
        pids = []
        for task in Path(f"/proc/{self.child.pid}/task").glob("*"):
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
        return pids

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until a forking server has reaped its children, so that their CPU and RSS count in its
        Usage (wait4 reports only reaped children); False if some are still there after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.child.running() and self.children():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self, timeout: float = 30.0) -> Usage | None:
        """SIGTERM, then SIGKILL after ``timeout``; the Usage (once)."""
        if self.child is None or self.usage is not None:
            return self.usage
        leader = self.child.pid
        forked = self.children() if self.child.running() else []
        if self.child.running():
            try:
                os.kill(leader, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.usage = _finish(self.child, timeout)
        for pid in forked:  # children a forking server left behind, if they are still its own
            try:
                if os.getpgid(pid) == leader:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return self.usage


def ready_file(path: Path, timeout: float = 60.0) -> Callable[[Server], int]:
    """Readiness for a pacs server started with ``--port 0 --ready-file PATH``: the port written there."""
    def wait(server: Server) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server.check_alive()
            try:
                text = path.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text:
                return int(text.rsplit(":", 1)[1])
            time.sleep(0.02)
        raise BenchError(f"{server.name} wrote no ready file within {timeout:.0f} s")
    return wait


def echo_ready(port: int, called_aet: str = "ANY-SCP", timeout: float = 60.0) -> Callable[[Server], int]:
    """Readiness for a server that prints nothing useful: DCMTK's echoscu succeeds against it."""
    def wait(server: Server) -> int:
        deadline = time.monotonic() + timeout
        env = {**os.environ, "TCP_NODELAY": "1"}
        while time.monotonic() < deadline:
            server.check_alive()
            result = subprocess.run([dcmtk("echoscu"), "-aec", called_aet, HOST, str(port)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            if result.returncode == 0:
                return port
            time.sleep(0.05)
        raise BenchError(f"{server.name} did not answer C-ECHO on port {port} within {timeout:.0f} s")
    return wait


# --------------------------------------------------------------------------------------------
# Files


def count_files(folder: Path, skip: Sequence[str] = ()) -> int:
    """Regular files below ``folder``, not counting top-level entries named in ``skip``."""
    total = 0
    for directory, subdirs, files in os.walk(folder):
        if Path(directory) == folder:
            subdirs[:] = [d for d in subdirs if d not in skip]
            files = [f for f in files if f not in skip]
        total += len(files)
    return total


def total_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --------------------------------------------------------------------------------------------
# Statistics and tables


def runs_summary(runs: list[dict], *path: str) -> dict | None:
    """summary() of the value at ``path`` in each run that did not fail."""
    values = []
    for run_ in runs:
        if "failed" in run_:
            continue
        value = run_
        for key in path:
            value = value[key]
        values.append(value)
    return summary(values)


def summary(values: Sequence[float]) -> dict | None:
    """median, min, max and n of the successful runs' values; None when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def number(value: float, digits: int | None = None) -> str:
    """A figure rounded to about three significant digits, with thousands separators."""
    if digits is None:
        magnitude = abs(value)
        digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3
    return f"{value:,.{digits}f}"


def cell(stats: dict | None, digits: int | None = None, runs: int | None = None) -> str:
    """'707 (650–720)': median (min–max); '—' without figures; a note when fewer runs succeeded."""
    if stats is None:
        return "—"
    text = (f"{number(stats['median'], digits)} ({number(stats['min'], digits)}–{number(stats['max'], digits)})"
            if stats["n"] > 1 else number(stats["median"], digits))
    if runs is not None and stats["n"] < runs:
        text += f" [{stats['n']}/{runs} runs]"
    return text


def ratio(value: dict | None, reference: dict | None) -> str:
    """The ratio of the medians, value / reference (the DCMTK figure of the same run)."""
    if not value or not reference or not reference["median"]:
        return "—"
    return f"{value['median'] / reference['median']:.2f}×"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(headers) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# --------------------------------------------------------------------------------------------
# The machine


def machine() -> dict:
    """CPU model, cores, RAM, kernel, Python and library versions, DCMTK's, the date."""
    import pydicom
    import pynetdicom

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    sys.path.insert(0, str(REPO))
    try:
        from pacs_cli import __version__ as pacs_version
    except ImportError:
        pacs_version = "?"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "dcmtk": dcmtk_version(),
        "pacs": pacs_version,
        "pacs_commit": _git_head(),
        "pacs_executable": find_pacs(),
    }


def _git_head() -> str:
    """The checkout's commit, '+dirty' when the working tree differs (read-only git commands only)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return f"{head}{'+dirty' if dirty else ''}" if head else "?"


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")


@dataclass
class CaseResult:
    """What a case hands back: its markdown section and its raw numbers."""

    name: str
    title: str
    lines: list[str] = field(default_factory=list)  # the markdown under the title: notes and table(s)
    raw: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    other_cpu_s: float = 0.0  # CPU seconds other processes on the machine used while the case ran


# --------------------------------------------------------------------------------------------
# One bench run: its sizes, its work directory, its data


@dataclass(frozen=True)
class Plan:
    """The sizes of one bench run; :data:`FULL` is what issue 7 asks for, :data:`QUICK` fits ~5 minutes."""

    name: str
    ct: int                     # store: CT-like 512x512 16-bit images (0.5 MB)
    mr: int                     # store: MR-like 64x64 16-bit images (~9 KB)
    large_mb: int               # store: one multi-frame object of this many MiB of pixel data
    shipped_caps: dict          # store: DCMTK as shipped (Nagle on), files per shape; absent = not run
    pynetdicom_caps: dict       # store: pynetdicom's bundled apps, files per shape
    index_files: int            # index: files indexed by pacs index and dcmqridx
    find_sizes: tuple           # find: instances in the pacs index written through the library
    find_dcmqrscp: int          # find: instances (real files) served by dcmqrscp and by pacs alike
    find_process_queries: int   # find: queries per run and query, one process each
    find_session_queries: int   # find: queries per run and query on one association, in this process
    move_images: int            # move: CT-like images in the study moved
    startup_runs: int           # startup: timed runs per command, per bench run


FULL = Plan("full", ct=1000, mr=10_000, large_mb=256,
            shipped_caps={"ct": 1000, "mr": 200, "large": 1}, pynetdicom_caps={"ct": 1000, "mr": 1000},
            index_files=10_000, find_sizes=(100_000, 1_000_000), find_dcmqrscp=10_000,
            find_process_queries=20, find_session_queries=100, move_images=500, startup_runs=10)
QUICK = Plan("quick", ct=200, mr=500, large_mb=64,
             shipped_caps={}, pynetdicom_caps={"ct": 50, "mr": 50},
             index_files=1000, find_sizes=(100_000,), find_dcmqrscp=1000,
             find_process_queries=3, find_session_queries=20, move_images=200, startup_runs=3)


@dataclass
class Images:
    """A folder of generated files."""

    name: str
    folder: Path
    paths: list[Path]
    bytes: int

    @property
    def count(self) -> int:
        return len(self.paths)

    @property
    def mb(self) -> float:
        return self.bytes / 1e6


def release_page_cache(folder: Path) -> None:
    """Write back the files under ``folder`` and drop them from the page cache.

    Kept in memory, the received files of a full bench (about 18 GB) filled the page cache half way
    through the CT case; from then on every page a receiver wrote came from reclaim, charged to it as
    system time: DCMTK's storescp used 0.74 CPU-s for 1,000 CT images in the first run and 2.1 in the
    others, pacs 1.67 and 3.3, and the reference's spread was 362–871 images/s. The source files,
    read by every sender, stay cached.
    """
    os.sync()
    for file in folder.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_into_page_cache(paths: list[Path]) -> None:
    """Read every file a sender is about to send, so that each run starts with them in the page cache.

    This VM pages out file pages that were not read for about a minute (DAMON's pageout scheme), and a
    sender reading its files from disk is another program: DCMTK → DCMTK took 2.8–3.2 s for the 10,000
    MR files just after they were dropped from the cache, 1.8–2.1 s with them cached. Files 1,001 on
    went unread for over a minute while pynetdicom's apps and DCMTK as shipped sent their first 1,000
    and 200, so the next run's first pair, the reference, could read them from disk.
    """
    buffer = bytearray(1 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as file:
            while file.readinto(buffer) == len(buffer):
                pass


class Context:
    """What the cases of one bench run share: plan, runs, work directory, environment, data, artifacts.

    Data is generated on first use and kept for the run; ``artifacts`` lets one case hand another what it
    built anyway (the index case's dcmqridx database feeds the find case's dcmqrscp).
    """

    def __init__(self, plan: Plan, runs: int, work: Path, keep: bool = False, verbose: bool = True):
        self.plan, self.runs, self.work, self.keep = plan, runs, work, keep
        self.env = child_env(work)
        self.env_shipped = child_env(work, nodelay=False)
        self.pacs = find_pacs()
        self.artifacts: dict = {}
        self._images: dict[str, Images] = {}
        self._set_aside: list[Path] = []
        self.deleted_between_runs = False  # set_aside had to delete: see its docstring
        self._verbose = verbose
        (work / "config-home").mkdir(parents=True, exist_ok=True)

    def say(self, message: str) -> None:
        if self._verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def dir(self, *parts: str) -> Path:
        """A fresh, empty directory under the work directory."""
        path = self.work.joinpath(*parts)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def set_aside(self, path: Path) -> None:
        """Keep a run's received files until the bench ends (the work directory goes then), unless the
        disk runs short.

        Deleting them between runs made the next receiver pay for it: on an ext4 without a journal (this
        VM's), a new inode skips those freed in the last minutes (``recently_deleted``), and with
        thousands freed each file created cost 0.3–0.8 ms instead of 15 µs, DCMTK's storescp's as much
        as ours (its 10,000 small objects took 4 s after a deletion, 1.2 s without). With less than
        DISK_RESERVE free, all set aside are deleted after all, and the report says so. Kept files leave
        the page cache (:func:`release_page_cache`).
        """
        self._set_aside.append(path)
        if shutil.disk_usage(self.work).free >= DISK_RESERVE:
            release_page_cache(path)
            return
        self.deleted_between_runs = True
        while self._set_aside:
            shutil.rmtree(self._set_aside.pop(), ignore_errors=True)

    def images(self, name: str, count: int | None = None) -> Images:
        """'ct', 'mr' or 'move' files; ``count`` takes the first so many (hard links, no copy)."""
        import _data

        if name not in self._images:
            plan = self.plan
            shape, total, seed, studies = {
                "ct": (_data.CT, plan.ct, 11, None),
                "mr": (_data.MR, max(plan.mr, plan.index_files, plan.find_dcmqrscp), 12, None),
                "move": (_data.CT, plan.move_images, 13, 1),
            }[name]
            started = time.perf_counter()
            paths = _data.write_images(self.work / "data" / name, total, shape, seed, studies)
            self._images[name] = Images(name, paths[0].parent, paths, total_bytes(paths))
            self.say(f"wrote {total:,} {name} files ({self._images[name].mb:,.0f} MB) in "
                     f"{time.perf_counter() - started:.1f} s")
        full = self._images[name]
        if count is None or count >= full.count:
            return full
        key = f"{name}-{count}"
        if key not in self._images:
            paths = full.paths[:count]
            folder = _data.link_subset(paths, self.work / "data" / key)
            self._images[key] = Images(key, folder, [folder / p.name for p in paths], total_bytes(paths))
        return self._images[key]

    def large(self) -> Images:
        import _data

        if "large" not in self._images:
            path = self.work / "data" / "large" / "large.dcm"
            path.parent.mkdir(parents=True)
            _data.make_multiframe(path, self.plan.large_mb)
            self._images["large"] = Images("large", path.parent, [path], path.stat().st_size)
            self.say(f"wrote one multi-frame file of {self._images['large'].mb:,.0f} MB")
        return self._images["large"]
