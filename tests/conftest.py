"""Shared fixtures: real peers on 127.0.0.1, free ports, and DCMTK's binaries.

No test touches a real config file or archive: HOME and XDG_CONFIG_HOME point at a temp dir.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_configure(config):
    """Ctrl-C reaches the commands the tests start, however the test run itself was started.

    A background job of a non-interactive shell (``bash .ci/run &``) starts with SIGINT ignored, every
    child inherits that, and Python then installs no KeyboardInterrupt handler: the tests that press
    Ctrl-C on ``pacs`` would see it carry on. A handled signal is reset to the default across exec.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Keep the user's own ~/.config/pacs and PACS_* variables out of every test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)
    return home


@functools.cache
def _find_dcmtk(name: str) -> str | None:
    """pynetdicom installs console scripts with DCMTK's names (storescu, ...): pick DCMTK's own."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which(name, path=directory)
        if candidate is None:
            continue
        version = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10)
        if "dcmtk" in version.stdout.lower():
            return candidate
    return None


def dcmtk_binary(name: str) -> str:
    """Path of a DCMTK tool; skip without it on a laptop, fail in CI where .ci/run installs it."""
    path = _find_dcmtk(name)
    if path is None:
        message = f"DCMTK's {name} is not installed (apt-get install dcmtk)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    """Readiness by polling a TCP connect: DCMTK's tools print nothing when they start listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


class Peer(subprocess.Popen):
    """A peer process that is terminated (then killed) when the test ends."""

    def stop(self) -> None:
        if self.poll() is None:
            self.terminate()
            try:
                self.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
                self.wait()


@pytest.fixture
def dcmtk_storescp(tmp_path):
    """DCMTK's storescp on a free port, writing into tmp_path/received; yields (port, dir)."""
    binary = dcmtk_binary("storescp")
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = Peer([binary, "-aet", "DCMTK-SCP", "-od", str(out), str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port, out
    finally:
        proc.stop()


@pytest.fixture
def pynetdicom_scp():
    """Factory: a pynetdicom AE serving in this process on a free port; shut down at the end."""
    from pynetdicom import AE

    servers = []

    def start(ae_title="PYNETDICOM", contexts=None, handlers=(), **ae_attributes):
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=ae_title)
        for name, value in ae_attributes.items():
            setattr(ae, name, value)
        for context in contexts or [Verification]:
            ae.add_supported_context(context)
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=list(handlers))
        servers.append(ae)
        return server.server_address[1]

    yield start
    for ae in servers:
        ae.shutdown()


@pytest.fixture
def watched_scp(tmp_path):
    """Factory: the `pacs storescp` console script on 127.0.0.1, watched through /proc
    (tests/battery.py WatchedSCP); every one started is stopped when the test ends, pass or fail."""
    from battery import WatchedSCP

    started = []

    def start(*options, **kwargs):
        scp = WatchedSCP(tmp_path, *options, name=f"scp{len(started)}", **kwargs)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()
