"""`pacs movescu` and `pacs getscu` against real peers: `pacs storescp`, and DCMTK's dcmqrscp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import free_port
from test_storescp import StoreSCP, dataset_bytes, dcmtk_send, make_file


def pacs(*args: str, config: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    prefix = ["--config", str(config)] if config else []
    return subprocess.run([sys.executable, "-m", "pacs_cli", *prefix, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def instances(root: Path) -> dict[str, bytes]:
    """SOP Instance UID -> bytes after the file meta, of every .dcm file under ``root`` (staging aside)."""
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: dataset_bytes(p)
            for p in root.rglob("*.dcm") if ".incoming" not in p.parts}


def originals(*paths: Path) -> dict[str, bytes]:
    return {pydicom.dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in paths}


@pytest.fixture
def archive(tmp_path, monkeypatch):
    """`pacs storescp` knowing MOVER at a free port, holding a study of two series (2 + 1) and another study."""
    mover_port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[peers.me]\nae_title = "MOVER"\nhost = "127.0.0.1"\nport = {mover_port}\n')
    sources = tmp_path / "sources"
    sources.mkdir()
    study, series = generate_uid(), generate_uid()
    files = [make_file(sources / f"a{n}.dcm", study=study, series=series) for n in range(2)]
    files.append(make_file(sources / "a2.dcm", study=study))
    other = make_file(sources / "b.dcm", patient_id="PAT2")
    monkeypatch.setenv("PACS_CONFIG", str(config))  # `pacs --config FILE storescp`, through the environment
    scp = StoreSCP(tmp_path, "-aet", "PACS")
    assert dcmtk_send(scp.port, *files, other).returncode == 0
    yield scp, mover_port, study, series, files, other
    scp.proc.stop()


def test_movescu_store_retrieves_a_study_byte_identical(archive, tmp_path):
    scp, mover_port, study, _, files, _ = archive
    out = tmp_path / "moved"
    result = pacs("movescu", "127.0.0.1", str(scp.port), "-aec", "PACS", "-aet", "MOVER", "--store",
                  "--store-port", str(mover_port), "--out", str(out), "-k", f"StudyInstanceUID={study}")
    assert result.returncode == 0, result.stderr
    assert instances(out) == originals(*files)
    assert (out / "index.sqlite").is_file()
    assert "3 completed, 0 failed, 0 warning" in result.stderr


def test_movescu_store_retrieves_a_series(archive, tmp_path):
    scp, mover_port, study, series, files, _ = archive
    out = tmp_path / "moved"
    result = pacs("movescu", "127.0.0.1", str(scp.port), "-aec", "PACS", "-aet", "MOVER", "--store",
                  "--store-port", str(mover_port), "--out", str(out), "-k", f"StudyInstanceUID={study}",
                  "-k", f"SeriesInstanceUID={series}")
    assert result.returncode == 0, result.stderr
    assert instances(out) == originals(*files[:2])


def test_movescu_patient_root_to_a_named_destination(archive, tmp_path):
    scp, mover_port, _, _, _, other = archive
    out = tmp_path / "moved"
    result = pacs("movescu", "127.0.0.1", str(scp.port), "-aec", "PACS", "-aet", "MOVER", "-P", "--store",
                  "--store-port", str(mover_port), "--out", str(out), "--dest", "MOVER", "-k", "PatientID=PAT2")
    assert result.returncode == 0, result.stderr
    assert instances(out) == originals(other)


def test_movescu_unknown_destination_exits_1_with_what_to_configure(archive, tmp_path):
    scp, mover_port, study, _, _, _ = archive
    out = tmp_path / "moved"
    result = pacs("movescu", "127.0.0.1", str(scp.port), "-aec", "PACS", "-aet", "NOBODY", "--store",
                  "--store-port", str(mover_port), "--out", str(out), "-k", f"StudyInstanceUID={study}")
    assert result.returncode == 1, result.stderr
    assert "0xA801" in result.stderr
    assert "AE title NOBODY" in result.stderr and f"port {mover_port}" in result.stderr
    assert not instances(out)


def test_movescu_a_file_gone_exits_1_with_counts(archive, tmp_path):
    scp, mover_port, study, _, _, _ = archive
    row = scp.rows("select sop_instance_uid, path from instances order by pk")[0]
    (scp.archive / row["path"]).unlink()
    result = pacs("movescu", "127.0.0.1", str(scp.port), "-aec", "PACS", "-aet", "MOVER", "--store",
                  "--store-port", str(mover_port), "--out", str(tmp_path / "moved"),
                  "-k", f"StudyInstanceUID={study}")
    assert result.returncode == 1, result.stderr
    assert "2 completed, 1 failed" in result.stderr
    assert row["sop_instance_uid"] in result.stderr


def test_movescu_needs_dest_or_store():
    result = pacs("movescu", "127.0.0.1", "104", "-k", "StudyInstanceUID=1.2.3")
    assert result.returncode == 2 and "--dest" in result.stderr


def test_movescu_nobody_listening_exits_3():
    result = pacs("movescu", "127.0.0.1", str(free_port()), "--dest", "X", "-k", "StudyInstanceUID=1.2.3")
    assert result.returncode == 3, result.stderr


@pytest.mark.parametrize("ask", [False, True])
def test_getscu_retrieves_a_study_and_a_series_byte_identical(archive, tmp_path, ask):
    scp, _, study, series, files, _ = archive
    extra = ["--ask-classes"] if ask else []
    result = pacs("getscu", "127.0.0.1", str(scp.port), "-aec", "PACS", "--out", str(tmp_path / "study"),
                  "-k", f"StudyInstanceUID={study}", *extra)
    assert result.returncode == 0, result.stderr
    assert instances(tmp_path / "study") == originals(*files)
    assert "3 completed, 0 failed, 0 warning" in result.stderr
    result = pacs("getscu", "127.0.0.1", str(scp.port), "-aec", "PACS", "--out", str(tmp_path / "series"),
                  "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}", *extra)
    assert result.returncode == 0, result.stderr
    assert instances(tmp_path / "series") == originals(*files[:2])


def test_getscu_a_file_gone_exits_1(archive, tmp_path):
    scp, _, study, _, files, _ = archive
    row = scp.rows("select sop_instance_uid, path from instances order by pk")[0]
    (scp.archive / row["path"]).unlink()
    result = pacs("getscu", "127.0.0.1", str(scp.port), "-aec", "PACS", "--out", str(tmp_path / "got"),
                  "-k", f"StudyInstanceUID={study}")
    assert result.returncode == 1, result.stderr
    assert "2 completed, 1 failed" in result.stderr
    assert instances(tmp_path / "got") == originals(*files[1:])


def test_getscu_bad_identifier_exits_1_with_a900(archive, tmp_path):
    scp, _, _, _, _, _ = archive
    result = pacs("getscu", "127.0.0.1", str(scp.port), "-aec", "PACS", "--out", str(tmp_path / "got"),
                  "--level", "STUDY", "-k", "PatientName=Doe*")
    assert result.returncode == 1, result.stderr
    assert "0xA900" in result.stderr


def test_get_contexts_fit_in_one_association():
    from pacs_cli.dimse.retrieve import IMAGE_CLASSES, get_contexts

    contexts = get_contexts()
    assert len(contexts) == 127
    assert contexts[0].transfer_syntax == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    held = get_contexts(["1.2.3", "1.2.4"])
    assert len(held) == 2 + 2 * 9 and {cx.abstract_syntax for cx in held} == {"1.2.3", "1.2.4"}
    assert len(get_contexts([f"1.2.{n}" for n in range(300)])) == 127
    assert IMAGE_CLASSES[0] == "1.2.840.10008.5.1.4.1.1.2"


# --- DCMTK's dcmqrscp as the peer -------------------------------------------------------------------

@pytest.fixture
def dcmqrscp(tmp_path):
    """DCMTK's dcmqrscp (AE DCMQR) knowing MOVER at a free port, its database holding one study (2 + 1)."""
    from conftest import Peer, dcmtk_binary, wait_for_port

    binary, indexer = dcmtk_binary("dcmqrscp"), dcmtk_binary("dcmqridx")
    port, mover_port = free_port(), free_port()
    db = tmp_path / "qrdb"
    db.mkdir()
    sources = tmp_path / "qrsources"
    sources.mkdir()
    study, series = generate_uid(), generate_uid()
    files = [make_file(sources / f"q{n}.dcm", study=study, series=series) for n in range(2)]
    files.append(make_file(sources / "q2.dcm", study=study))
    subprocess.run([indexer, str(db), *map(str, files)], check=True, capture_output=True, timeout=60)
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        f"HostTable BEGIN\nmover = (MOVER, 127.0.0.1, {mover_port})\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {db} RW (200, 1024mb) ANY\nAETable END\n")
    proc = Peer([binary, "-s", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port, mover_port, study, series, files
    finally:
        proc.stop()


def test_movescu_store_from_dcmqrscp(dcmqrscp, tmp_path):
    port, mover_port, study, series, files = dcmqrscp
    out = tmp_path / "moved"
    result = pacs("movescu", "127.0.0.1", str(port), "-aec", "DCMQR", "-aet", "MOVER", "--store",
                  "--store-port", str(mover_port), "--out", str(out), "-k", f"StudyInstanceUID={study}",
                  "-k", f"SeriesInstanceUID={series}")
    assert result.returncode == 0, result.stderr
    assert instances(out) == originals(*files[:2])


def test_movescu_unknown_destination_from_dcmqrscp(dcmqrscp, tmp_path):
    port, mover_port, study, _, _ = dcmqrscp
    result = pacs("movescu", "127.0.0.1", str(port), "-aec", "DCMQR", "-aet", "MOVER", "--dest", "NOBODY",
                  "-k", f"StudyInstanceUID={study}")
    assert result.returncode == 1, result.stderr
    assert "0xA801" in result.stderr and "AE title NOBODY" in result.stderr


def test_getscu_from_dcmqrscp(dcmqrscp, tmp_path):
    port, _, study, _, files = dcmqrscp
    result = pacs("getscu", "127.0.0.1", str(port), "-aec", "DCMQR", "--out", str(tmp_path / "got"),
                  "-k", f"StudyInstanceUID={study}")
    assert result.returncode == 0, result.stderr
    assert instances(tmp_path / "got") == originals(*files)
