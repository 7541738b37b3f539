"""`pacs echo` against real peers on 127.0.0.1: DCMTK's storescp and pynetdicom SCPs."""

from __future__ import annotations

import socket
import threading

import pytest

from conftest import free_port


def test_echo_succeeds_against_dcmtk_storescp(script_runner, dcmtk_storescp):
    port, _ = dcmtk_storescp
    result = script_runner.run(["pacs", "echo", "127.0.0.1", str(port), "-aec", "DCMTK-SCP", "-r", "2"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"C-ECHO 1 to DCMTK-SCP@127.0.0.1:{port}: 0x0000 Success in ")
    assert lines[0].endswith(" ms")


def test_echo_succeeds_against_pynetdicom_scp(script_runner, pynetdicom_scp):
    port = pynetdicom_scp()
    result = script_runner.run(["pacs", "echo", "127.0.0.1", str(port)])
    assert result.returncode == 0, result.stderr
    assert "0x0000 Success" in result.stdout


def test_quiet_echo_prints_nothing_on_success(script_runner, pynetdicom_scp):
    port = pynetdicom_scp()
    result = script_runner.run(["pacs", "-q", "echo", "127.0.0.1", str(port)])
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_closed_port_exits_3_with_one_line(script_runner):
    port = free_port()
    result = script_runner.run(["pacs", "echo", "127.0.0.1", str(port), "-to", "2"])
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"Error: cannot connect to 127.0.0.1:{port}: connection refused "
        "(is the SCP running and listening on that port?)"
    ]


def test_unknown_called_ae_is_rejected_with_reason_and_hint(script_runner, pynetdicom_scp):
    port = pynetdicom_scp(ae_title="RIGHT", require_called_aet=True)
    result = script_runner.run(["pacs", "echo", "127.0.0.1", str(port), "-aec", "WRONG"])
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"Error: association rejected by WRONG@127.0.0.1:{port}: Called AE title not recognised "
        "[Rejected Permanent, source: Service User] (check -aec)"
    ]
    assert "Traceback" not in result.stderr


def test_unknown_calling_ae_hint_names_aet(script_runner, pynetdicom_scp):
    port = pynetdicom_scp(require_calling_aet=["MODALITY"])
    result = script_runner.run(["pacs", "echo", "127.0.0.1", str(port), "-aet", "STRANGER"])
    assert result.returncode == 3
    assert "Calling AE title not recognised" in result.stderr
    assert "check -aet" in result.stderr


def test_silent_peer_times_out_within_acse_timeout(script_runner):
    """A TCP listener that never answers the A-ASSOCIATE-RQ: exit 3 after -ta, not a hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    port = listener.getsockname()[1]
    try:
        result = script_runner.run(["pacs", "echo", "127.0.0.1", str(port), "-ta", "1"], timeout=20)
    finally:
        listener.close()
    assert result.returncode == 3
    assert f"no answer to the association request from ANY-SCP@127.0.0.1:{port} within 1 s" in result.stderr


def test_traceback_only_at_vv(script_runner):
    port = str(free_port())
    plain = script_runner.run(["pacs", "echo", "127.0.0.1", port])
    debug = script_runner.run(["pacs", "-vv", "echo", "127.0.0.1", port])
    assert "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr
    assert debug.returncode == plain.returncode == 3


def test_failure_status_exits_1(script_runner, pynetdicom_scp):
    from pynetdicom import evt

    port = pynetdicom_scp(handlers=[(evt.EVT_C_ECHO, lambda event: 0x0110)])
    result = script_runner.run(["pacs", "echo", "127.0.0.1", str(port)])
    assert result.returncode == 1
    assert "0x0110 Failure: Processing Failure" in result.stdout
    assert "Error: 1 of 1 C-ECHO requests failed" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["echo"], "missing HOST and PORT"),
    (["echo", "host", "99999"], "99999 is not in the range"),
    (["echo", "host", "104", "-aec", "THIS-TITLE-IS-TOO-LONG"], "longer than 16 characters"),
    (["echo", "host", "104", "--peer", "x"], "either HOST PORT or --peer"),
])
def test_usage_errors_exit_2(script_runner, args, message):
    result = script_runner.run(["pacs", *args])
    assert result.returncode == 2
    assert message in result.stderr


def test_ctrl_c_aborts_the_association_and_exits_130(pynetdicom_scp):
    import signal
    import subprocess

    from pynetdicom import evt

    aborted = threading.Event()
    port = pynetdicom_scp(handlers=[(evt.EVT_ABORTED, lambda event: aborted.set())])
    proc = subprocess.Popen(["pacs", "echo", "127.0.0.1", str(port), "--repeat", "100", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "0x0000 Success" in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert err.strip() == "Interrupted."
    assert aborted.wait(5)


def test_python_dash_m_runs_the_same_cli(script_runner):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pacs_cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("pacs, version ")
