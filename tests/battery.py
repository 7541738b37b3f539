"""Shared pieces of the issue-8 battery (tests/test_battery_*.py).

* :class:`WatchedSCP`: the real ``pacs storescp`` console script on 127.0.0.1, its stderr in a file (a
  pipe nobody reads fills up under a flood of warnings and stalls the server), its PID for /proc;
* :func:`measure_baseline` and :func:`assert_survives`: the "survives" invariant of
  shared/notes/reliability.md: alive, a fresh C-ECHO answered within 2 s, no traceback, and file
  descriptors and threads back to what they were after start-up;
* :class:`RawAssociation`: an association spoken byte by byte, so a test can send P-DATA-TF that no
  library would build, and read back the status, an A-ABORT or a closed connection;
* :func:`store_datasets`: a pynetdicom SCU that records the status the archive acknowledged for each
  instance.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
# pacs's requestor: pynetdicom's own can lose a response to its reactor thread (pacs_cli/dimse/reactor.py)
from pacs_cli.dimse.ae import RequestorAE as AE  # noqa: N814
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import Verification

import pdus
from conftest import Peer

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ECHO_LIMIT = 2.0  # seconds: reliability.md, "answers a fresh C-ECHO within 2 s"
SETTLE = 10.0  # seconds for fds and threads to come back once the hostile peer is gone


def pacs_script() -> list[str]:
    """The installed ``pacs`` console script: beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).with_name("pacs")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("pacs")
    if found is None:
        raise RuntimeError("the pacs console script is not installed (pip install -e '.[test]')")
    return [found]


class WatchedSCP:
    """A running ``pacs storescp`` listening on 127.0.0.1 only, watched through /proc."""

    def __init__(self, root: Path, *options: str, archive: Path | None = None, port: int = 0, name: str = "scp"):
        self.root = root
        self.archive = archive or root / "archive"
        self.options = options
        self.name = name
        self.stderr_path = root / f"{name}.stderr"
        self.stdout_path = root / f"{name}.stdout"
        self.start(port)

    def start(self, port: int = 0) -> None:
        ready = self.root / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        with open(self.stderr_path, "ab") as err, open(self.stdout_path, "ab") as out:
            self.proc = Peer([*pacs_script(), "storescp", "--host", "127.0.0.1", "--port", str(port),
                              "--ready-file", str(ready), "--dir", str(self.archive), *self.options],
                             stdout=out, stderr=err, cwd=self.root)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.stop()
                raise RuntimeError(f"pacs storescp did not start: {self.stderr()[-2000:]}")
            time.sleep(0.02)
        self.port = int(ready.read_text().strip().rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_targets(self) -> list[str]:
        targets = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
            except OSError:
                pass
        return sorted(targets)

    def threads(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise RuntimeError("no Threads: line in /proc/PID/status")

    def kill(self) -> None:
        """kill -9: no handler runs, nothing is flushed or cleaned up."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    # -- what the archive holds ----------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        if "--db" in self.options:
            return Path(self.options[self.options.index("--db") + 1])
        return self.archive / "index.sqlite"

    def rows(self, sql: str = "select * from instances", params=()) -> list[sqlite3.Row]:
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def files(self) -> list[Path]:
        """Every file under the archive root but the index and the staging directory."""
        own = {self.db_path.name + suffix for suffix in ("", "-wal", "-shm", "-lock")}
        return sorted(p for p in self.archive.rglob("*")
                      if p.is_file() and ".incoming" not in p.relative_to(self.archive).parts and p.name not in own)

    def staging_leftovers(self) -> list[Path]:
        staging = self.archive / ".incoming"
        return sorted(p for p in staging.iterdir() if p.name != ".lock") if staging.exists() else []


# --- "survives" ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What a watched process holds open: file descriptors on its index (the SQLite file, WAL and
    shared memory) apart from all the others, and threads."""

    index_fds: int
    other_fds: int
    threads: int

    def above(self, other: Baseline, index: bool = True) -> bool:
        return (self.other_fds > other.other_fds or self.threads > other.threads
                or (index and self.index_fds > other.index_fds))


def held(scp: WatchedSCP) -> Baseline:
    index = str(scp.db_path)
    targets = scp.fd_targets()
    on_index = sum(1 for t in targets if t.startswith(index))
    return Baseline(on_index, len(targets) - on_index, scp.threads())


def echo(port: int, timeout: float = ECHO_LIMIT) -> tuple[int | None, float]:
    """(status, seconds) of one C-ECHO on a new association; status None if there was no answer."""
    ae = AE(ae_title="BATTERY")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    start = time.monotonic()
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        if not assoc.is_established:
            return None, time.monotonic() - start
        try:
            rsp = assoc.send_c_echo()
            return rsp.get("Status"), time.monotonic() - start
        finally:
            assoc.release()
    finally:
        ae.shutdown()


def _stable(scp: WatchedSCP, reads: int = 5, pause: float = 0.05) -> Baseline:
    """What the process holds once the same numbers were read ``reads`` times in a row."""
    last, same = None, 0
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        now = held(scp)
        same = same + 1 if now == last else 0
        last = now
        if same >= reads:
            break
        time.sleep(pause)
    return last


def measure_baseline(scp: WatchedSCP) -> Baseline:
    """What the SCP holds after start-up and one warm-up C-ECHO (lazy imports and the like done)."""
    status, _ = echo(scp.port, timeout=10)
    assert status == 0, "the SCP does not answer C-ECHO after start-up"
    return _stable(scp)


def assert_survives(scp: WatchedSCP, baseline: Baseline, what: str = "", index_fds: bool = False,
                    settle: float = SETTLE) -> None:
    """The SCP is alive, answers a fresh C-ECHO within 2 s, printed no traceback, and its file
    descriptors and threads come back to the baseline (polled: connections close and threads end
    asynchronously).

    File descriptors on the index are checked only with ``index_fds=True``: SQLite parks the
    descriptors of closed connections while the archive's own connection is open, and reuses them
    (bounded, see test_battery_faults.test_index_descriptors_stay_bounded_across_waves_of_associations);
    every other file descriptor (sockets, staged files, archive files) must come back.
    """
    where = f" after {what}" if what else ""
    assert scp.alive(), f"pacs storescp exited with {scp.proc.returncode}{where}: {scp.stderr()[-2000:]}"
    status, seconds = echo(scp.port)
    assert status == 0 and seconds < ECHO_LIMIT, f"C-ECHO{where}: status {status} after {seconds:.2f} s"
    assert "Traceback" not in scp.stderr(), scp.stderr()[-4000:]
    deadline = time.monotonic() + settle
    now = held(scp)
    while now.above(baseline, index_fds) and time.monotonic() < deadline:
        time.sleep(0.05)
        now = held(scp)
    assert now.other_fds <= baseline.other_fds, (
        f"{now.other_fds} fds open{where}, {baseline.other_fds} at baseline: {scp.fd_targets()}")
    assert now.threads <= baseline.threads, f"{now.threads} threads{where}, {baseline.threads} at baseline"
    if index_fds:
        assert now.index_fds <= baseline.index_fds, (
            f"{now.index_fds} fds on the index{where}, {baseline.index_fds} at baseline")
    assert wait_until(lambda: scp.staging_leftovers() == []), f"left in staging{where}: {scp.staging_leftovers()}"


def wait_until(condition, timeout: float = 10.0, pause: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(pause)
    return condition()


# --- raw DIMSE -------------------------------------------------------------------------------------

A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
COMMAND, DATASET, LAST = 0x01, 0x00, 0x02  # PDV message control header bits, PS3.8 E.2
FRAGMENT = 16000  # bytes per PDV: under any maximum PDU length the SCP may advertise


def command_set(**elements) -> bytes:
    """A command set in Implicit VR Little Endian (PS3.7 6.3.1) with its CommandGroupLength first."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds, True, True)
    return struct.pack("<HHIL", 0x0000, 0x0000, 4, len(body)) + body


def c_store_rq(sop_instance_uid: str, sop_class_uid: str = CT_IMAGE_STORAGE, message_id: int = 1,
               with_dataset: bool = True) -> bytes:
    return command_set(AffectedSOPClassUID=sop_class_uid, CommandField=0x0001, MessageID=message_id,
                       Priority=0, CommandDataSetType=0x0000 if with_dataset else 0x0101,
                       AffectedSOPInstanceUID=sop_instance_uid)


def pdvs(context_id: int, data: bytes, control: int) -> list[bytes]:
    """``data`` as P-DATA-TF PDUs of one PDV each, the last one flagged last."""
    chunks = [data[i:i + FRAGMENT] for i in range(0, len(data), FRAGMENT)] or [b""]
    out = []
    for n, chunk in enumerate(chunks):
        flag = control | (LAST if n == len(chunks) - 1 else 0)
        pdv = struct.pack(">IBB", len(chunk) + 2, context_id, flag) + chunk
        out.append(struct.pack(">BBI", P_DATA_TF, 0, len(pdv)) + pdv)
    return out


class RawAssociation:
    """One association over a plain socket: A-ASSOCIATE-RQ for CT Image Storage in Explicit VR Little
    Endian (context ID 1), then whatever bytes the test wants to send."""

    def __init__(self, port: int, timeout: float = 10.0, contexts: list[bytes] | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        contexts = contexts or [pdus.presentation_context(1, CT_IMAGE_STORAGE.encode(), [EXPLICIT_LE.encode()])]
        self.sock.sendall(pdus.associate_rq(contexts, max_pdu=65536))
        kind, body = self.read_pdu()
        if kind != A_ASSOCIATE_AC:
            self.sock.close()
            raise AssertionError(f"association not accepted: PDU type {kind}")
        self.accepted = self._context_accepted(body)

    @staticmethod
    def _context_accepted(body: bytes) -> bool:
        """True when presentation context 1 came back with result 0 (acceptance), PS3.8 9.3.3.2."""
        offset = 68
        while offset + 4 <= len(body):
            kind, length = body[offset], struct.unpack(">H", body[offset + 2:offset + 4])[0]
            if kind == 0x21:
                return body[offset + 4] == 1 and body[offset + 6] == 0
            offset += 4 + length
        return False

    def _recv_exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return bytes(data)

    def read_pdu(self) -> tuple[int | None, bytes]:
        """(PDU type, body); (None, b'') when the peer closed the connection. Raises TimeoutError."""
        try:
            header = self._recv_exactly(6)
            kind, length = header[0], struct.unpack(">I", header[2:])[0]
            return kind, self._recv_exactly(length)
        except TimeoutError:
            raise
        except (ConnectionError, OSError):
            return None, b""

    def send(self, *pdus_: bytes) -> bool:
        """False when the peer had already closed (or reset) the connection."""
        try:
            for pdu in pdus_:
                self.sock.sendall(pdu)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def send_message(self, command: bytes, dataset: bytes | None = None, context_id: int = 1) -> bool:
        pdus_ = pdvs(context_id, command, COMMAND)
        if dataset is not None:
            pdus_ += pdvs(context_id, dataset, DATASET)
        return self.send(*pdus_)

    def response(self, patience: float | None = None) -> tuple[str, int | None]:
        """("status", code) of the next DIMSE response, ("abort", None), ("closed", None), or
        ("silent", None) when nothing came within ``patience`` seconds (default: the socket timeout)."""
        command = bytearray()
        if patience is not None:
            self.sock.settimeout(patience)
        while True:
            try:
                kind, body = self.read_pdu()
            except TimeoutError:
                return "silent", None
            if kind is None:
                return "closed", None
            if kind == A_ABORT:
                return "abort", None
            if kind != P_DATA_TF:
                return f"pdu-{kind}", None
            offset = 0
            while offset < len(body):
                length = struct.unpack(">I", body[offset:offset + 4])[0]
                control = body[offset + 5]
                if control & COMMAND:
                    command += body[offset + 6:offset + 4 + length]
                    if control & LAST:
                        ds = decode(BytesIO(bytes(command)), True, True)
                        return "status", int(ds.Status)
                offset += 4 + length

    def release(self) -> None:
        """A-RELEASE-RQ, wait for A-RELEASE-RP (or anything), close."""
        try:
            if self.send(struct.pack(">BBI", A_RELEASE_RQ, 0, 4) + bytes(4)):
                self.read_pdu()
        except TimeoutError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --- senders that remember what was acknowledged ---------------------------------------------------


def nodelay(sock: socket.socket) -> None:
    """Send small PDUs at once: with Nagle on, a command PDU followed by a dataset PDU waits for the
    peer's delayed ACK (40 ms on Linux) on every message."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def store_datasets(port: int, datasets: list[Dataset], barrier: threading.Barrier | None = None,
                   ae_title: str = "BATTERY") -> dict[str, int | None]:
    """C-STORE each dataset over one association; SOP Instance UID -> status (None: no answer).

    ``barrier``: wait there once the association is up, so that many senders store at the same moment.
    """
    ae = AE(ae_title=ae_title)
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class, EXPLICIT_LE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    statuses: dict[str, int | None] = {}
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        if barrier is not None:
            barrier.wait(timeout=60)
        if not assoc.is_established:
            return {str(ds.SOPInstanceUID): None for ds in datasets}
        try:
            for ds in datasets:
                rsp = assoc.send_c_store(ds)
                statuses[str(ds.SOPInstanceUID)] = rsp.get("Status")
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        ae.shutdown()
    return statuses


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)
