"""TLS between pacs commands and with DCMTK, using a CA made for the test."""

from __future__ import annotations

import subprocess

import pytest

from certificates import CA
from conftest import dcmtk_binary
from test_storescp import StoreSCP


@pytest.fixture
def pki(tmp_path):
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = CA(folder)
    return {"ca": ca.pem, "server": ca.issue("server"), "client": ca.issue("client"),
            "expired": ca.issue("expired", expired=True), "stranger": CA(folder, "other CA").issue("stranger")}


@pytest.fixture
def tls_scp(tmp_path, pki):
    started = []

    def start(mutual: bool):
        options = ["--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key)]
        scp = StoreSCP(tmp_path, *options, *(["--tls-ca", str(pki["ca"])] if mutual else []))
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.proc.stop()


def echo(script_runner, port, *options):
    return script_runner.run(["pacs", "echo", "127.0.0.1", str(port), "-to", "5", "-ta", "5", *options])


def test_server_only_tls(script_runner, tls_scp, pki):
    scp = tls_scp(mutual=False)
    result = echo(script_runner, scp.port, "--tls-ca", str(pki["ca"]))
    assert result.returncode == 0, result.stderr


def test_client_rejects_an_untrusted_server(script_runner, tls_scp, pki, tmp_path):
    scp = tls_scp(mutual=False)
    result = echo(script_runner, scp.port, "--tls-ca", str(pki["stranger"].cert))
    assert result.returncode == 3
    assert result.stderr.startswith(f"Error: TLS handshake with 127.0.0.1:{scp.port} failed: CERTIFICATE_VERIFY_FAILED")


def test_mutual_tls(script_runner, tls_scp, pki):
    scp = tls_scp(mutual=True)
    client = pki["client"]
    ok = echo(script_runner, scp.port, "--tls-ca", str(pki["ca"]), "--tls-cert", str(client.cert),
              "--tls-key", str(client.key))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("who", ["none", "expired", "stranger"])
def test_mutual_tls_refuses_missing_expired_and_untrusted_client_certificates(script_runner, tls_scp, pki, who):
    scp = tls_scp(mutual=True)
    options = ["--tls-ca", str(pki["ca"])]
    if who != "none":
        options += ["--tls-cert", str(pki[who].cert), "--tls-key", str(pki[who].key)]
    result = echo(script_runner, scp.port, *options)
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1
    if who == "none":
        assert "add --tls-cert and --tls-key" in result.stderr
    # The server keeps serving good clients.
    client = pki["client"]
    assert echo(script_runner, scp.port, "--tls-ca", str(pki["ca"]), "--tls-cert", str(client.cert),
                "--tls-key", str(client.key)).returncode == 0


def test_plain_tcp_to_a_tls_port_fails_cleanly(script_runner, tls_scp):
    scp = tls_scp(mutual=False)
    result = echo(script_runner, scp.port)
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"Error: ANY-SCP@127.0.0.1:{scp.port} aborted the association request "
        "(if the peer expects TLS, add --tls or --tls-ca)"]


def test_dcmtk_echoscu_over_mutual_tls(tls_scp, pki):
    scp = tls_scp(mutual=True)
    client = pki["client"]
    result = subprocess.run([dcmtk_binary("echoscu"), "-v", "+tls", str(client.key), str(client.cert),
                             "+cf", str(pki["ca"]), "-aec", "PACS", "127.0.0.1", str(scp.port)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr
