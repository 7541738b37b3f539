"""`pacs storescp --workers N`: one port, N processes, one archive: every object once, whoever took it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from conftest import Peer, dcmtk_binary
from test_storescp import dataset_bytes, dcmtk_send, make_file, scp_factory  # noqa: F401 - a fixture
from test_storescu import storescu


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status waits for whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def files(folder: Path, count: int, **kwargs) -> list[Path]:
    folder.mkdir()
    return [make_file(folder / f"{i:03d}.dcm", **kwargs) for i in range(count)]


def test_parallel_associations_are_stored_once_by_two_workers(script_runner, scp_factory, tmp_path):
    sources = files(tmp_path / "out", 40)
    scp = scp_factory("--workers", "2")
    assert len(children(scp.proc.pid)) == 2
    result = storescu(script_runner, scp.port, tmp_path / "out", "--associations", "4")
    assert result.returncode == 0, result.stderr
    rows = scp.rows()
    assert len(rows) == len({row["sop_instance_uid"] for row in rows}) == 40
    stored = {row["sop_instance_uid"]: scp.archive / row["path"] for row in rows}
    for source in sources:
        uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(stored[uid]) == dataset_bytes(source)
    assert len(scp.files()) == 40
    out, err = scp.stop()
    assert scp.proc.returncode == 0, err
    assert "2 workers" in out
    assert "4 associations, 40 instances stored" in out  # the workers' counts added up
    assert scp.staging_leftovers() == []


def serving(pid: int, port: int) -> int:
    """How many established connections to ``port`` the process ``pid`` holds (its socket
    descriptors, found in /proc/net/tcp by inode)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
        count += local_port == port and state == "01" and inode in inodes  # 01: ESTABLISHED
    return count


def test_a_busy_worker_leaves_the_next_association_to_an_idle_one(scp_factory):
    """Two associations open at once go to two workers, five times over: with any worker free to
    take any connection, they shared one worker (and its one GIL) about half the time."""
    scp = scp_factory("--workers", "2")
    workers = children(scp.proc.pid)
    assert len(workers) == 2
    ae = AE(ae_title="TWO")
    ae.add_requested_context(CTImageStorage)
    for attempt in range(5):
        opened = [ae.associate("127.0.0.1", scp.port, ae_title="PACS") for _ in range(2)]
        try:
            assert all(assoc.is_established for assoc in opened)
            assert sorted(serving(pid, scp.port) for pid in workers) == [1, 1], f"attempt {attempt + 1}"
        finally:
            for assoc in opened:
                assoc.release()


def test_the_same_instances_from_two_senders_at_once_are_stored_once(scp_factory, tmp_path):
    """Two workers storing one SOP Instance at the same moment: SQLite's write lock makes one the duplicate."""
    sources = files(tmp_path / "out", 20)
    scp = scp_factory("--workers", "2", "--on-duplicate", "reject", "--fault-delay", "0.01")
    results = [None, None]

    def send(n):
        results[n] = dcmtk_send(scp.port, *sources, extra=("--no-halt",))

    senders = [threading.Thread(target=send, args=(n,)) for n in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    assert len(scp.rows()) == 20
    assert len(scp.files()) == 20
    duplicates = sum(r.stderr.count("Status: 0x111") for r in results)
    assert duplicates == 20  # every instance refused once as a duplicate (0x0111), whichever sender was later
    stored = [e for e in scp.event_lines() if e["event"] == "stored"]
    assert len(stored) == 20


def test_exit_after_needs_one_worker(script_runner, tmp_path):
    result = script_runner.run(["pacs", "storescp", "--port", "0", "--workers", "2", "--exit-after", "3"],
                               cwd=tmp_path)
    assert result.returncode == 2
    assert "use them with --workers 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_stops_every_worker(tmp_path):
    ready = tmp_path / "ready"
    proc = Peer(["pacs", "storescp", "--port", "0", "--ready-file", str(ready), "--workers", "3"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                start_new_session=True)
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) == 3
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not any(map(running, workers))


def test_a_bad_audit_log_path_is_a_usage_error_as_without_workers(tmp_path):
    (tmp_path / "archive").mkdir()
    hooks = tmp_path / "hook-dir"
    hooks.mkdir()
    result = subprocess.run(["pacs", "storescp", "--port", "0", "--workers", "2", "--audit-log", str(hooks)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2  # as without --workers
    assert "Traceback" not in result.stderr
    assert str(hooks) in result.stderr


@pytest.mark.dcmtk
def test_dcmtk_echoscu_and_storescu_against_workers(scp_factory, tmp_path):
    sources = files(tmp_path / "out", 5)
    scp = scp_factory("--workers", "2")
    echo = subprocess.run([dcmtk_binary("echoscu"), "-aec", "PACS", "127.0.0.1", str(scp.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    assert dcmtk_send(scp.port, *sources).returncode == 0
    assert len(scp.rows()) == 5


def test_workers_stop_when_the_parent_is_killed(tmp_path):
    ready = tmp_path / "ready"
    proc = Peer(["pacs", "storescp", "--port", "0", "--ready-file", str(ready), "--workers", "2"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) == 2
    proc.kill()  # SIGKILL: no chance to stop them itself
    proc.wait()
    deadline = time.monotonic() + 45
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(running, workers))
