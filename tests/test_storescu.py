"""`pacs storescu` as a user runs it: the real console script against DCMTK's storescp and `pacs storescp`.

What is checked is what a user would check: the file arrived byte-identical, its row exists once, the exit
code, and that the message says what went wrong and what to do.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from conftest import Peer, dcmtk_binary, free_port, wait_for_port
from test_storescp import TEST_FILES, dataset_bytes, make_file, scp_factory  # noqa: F401 - a fixture

CONSOLE_SCRIPT = Path(sys.executable).parent / "pacs"  # the installed script itself, not a pyenv shim


def storescu(script_runner, port, *args, **kwargs):
    return script_runner.run(["pacs", "storescu", "-aec", "PACS", "127.0.0.1", str(port), *map(str, args)],
                             **kwargs)


def by_uid(paths) -> dict[str, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's test files are odd on purpose
        return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}


def report_files(path: Path) -> dict[str, dict]:
    return {entry["path"]: entry for entry in json.loads(path.read_text())["files"]}


def write_header_only(path: Path, sop_class: str, syntax: str) -> Path:
    """An instance whose header is valid; pacs storescp reads headers only, so no pixel data is needed."""
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.PatientID, ds.PatientName = "MANY", "Many^Contexts"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3.4", "1.2.3.4.5", "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def dcmtk_scp_factory(tmp_path):
    """DCMTK's storescp with extra options, writing bit-preserving (+B) into its own folder."""
    running = []

    def start(*options):
        out = tmp_path / f"dcmtk{len(running)}"
        out.mkdir()
        port = free_port()
        proc = Peer([dcmtk_binary("storescp"), "+B", *options, "-od", str(out), str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running.append(proc)
        wait_for_port(port, proc)
        return port, out

    yield start
    for proc in running:
        proc.stop()


# --- sending what is given -------------------------------------------------------------------------------


def test_directory_arrives_byte_identical_and_indexed_once(script_runner, scp_factory, tmp_path):
    tree = tmp_path / "study"
    (tree / "series2").mkdir(parents=True)
    sources = [make_file(tree / f"{i}.dcm") for i in range(3)] + [make_file(tree / "series2" / "x.dcm")]
    scp = scp_factory()
    result = storescu(script_runner, scp.port, tree)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # results go to stdout only when asked for
    assert "stored 4 file(s)" in result.stderr and "0 failed" in result.stderr
    received = by_uid(scp.files())
    for source in sources:
        uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(received[uid]) == dataset_bytes(source)
    assert len(scp.rows()) == 4


def test_no_recurse_and_glob_patterns(script_runner, scp_factory, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    make_file(tree / "top.dcm")
    make_file(tree / "sub" / "deep.dcm")
    make_file(tree / "sub" / "other.img")
    scp = scp_factory()
    flat = storescu(script_runner, scp.port, tree, "--no-recurse", "--format", "ndjson")
    assert flat.returncode == 0, flat.stderr
    assert [json.loads(line)["path"] for line in flat.stdout.splitlines()] == [str(tree / "top.dcm")]
    pattern = storescu(script_runner, scp.port, f"{tree}/**/*.dcm", "--format", "ndjson")
    assert pattern.returncode == 0, pattern.stderr
    assert sorted(json.loads(line)["path"] for line in pattern.stdout.splitlines()) == [
        str(tree / "sub" / "deep.dcm"), str(tree / "top.dcm")]


@pytest.mark.parametrize("null", [False, True])
def test_paths_from_stdin(script_runner, scp_factory, tmp_path, null):
    """`find ... -print0 | pacs storescu host port -0 -`, and newline-separated paths without -0."""
    folder = tmp_path / "odd names"
    folder.mkdir()
    sources = [make_file(folder / name) for name in ("a b.dcm", "c.dcm")]
    separator = "\0" if null else "\n"
    listing = tmp_path / "list"
    listing.write_text(separator.join(map(str, sources)) + separator)
    scp = scp_factory()
    with listing.open() as stdin:
        result = storescu(script_runner, scp.port, *(["-0"] if null else []), "-", stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert len(scp.rows()) == 2


def test_non_dicom_files_are_skipped_and_counted(script_runner, scp_factory, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    make_file(folder / "image.dcm")
    (folder / "notes.txt").write_text("not DICOM\n")
    (folder / "empty").write_bytes(b"")
    scp = scp_factory()
    result = storescu(script_runner, scp.port, folder, "--format", "ndjson")
    assert result.returncode == 0, result.stderr
    lines = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert lines["image.dcm"]["outcome"] == "stored" and lines["image.dcm"]["status"] == "0x0000"
    assert lines["notes.txt"]["outcome"] == lines["empty"]["outcome"] == "skipped"
    assert "2 skipped" in result.stderr and "skipped: 2 x not DICOM" in result.stderr


def test_peer_from_config_takes_every_argument_as_a_path(script_runner, scp_factory, tmp_path):
    scp = scp_factory("-aet", "ARCHIVE", "--accept-called-aet", "ARCHIVE")
    config = tmp_path / "config.toml"
    config.write_text(f'[peers.archive]\nae_title = "ARCHIVE"\nhost = "127.0.0.1"\nport = {scp.port}\n')
    files = [make_file(tmp_path / f"{i}.dcm") for i in range(2)]
    result = script_runner.run(["pacs", "--config", str(config), "storescu", "--peer", "archive", *map(str, files)])
    assert result.returncode == 0, result.stderr
    assert len(scp.rows()) == 2


# --- acceptance: pydicom's test files, as DCMTK's storescu sends them ---------------------------------------


def pydicom_test_files() -> list[Path]:
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def dcmtk_sends(tmp_path_factory):
    """Factory: the test files DCMTK's storescu stores in a DCMTK storescp started with these options."""
    cache: dict[tuple, set[str]] = {}

    def run(*options) -> set[str]:
        if options not in cache:
            cache[options] = _dcmtk_oracle(tmp_path_factory.mktemp("oracle"), options)
        return cache[options]

    return run


def _dcmtk_oracle(out: Path, options: tuple) -> set[str]:
    port = free_port()
    scp = Peer([dcmtk_binary("storescp"), *options, "-od", str(out), str(port)],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, scp)
        sent = subprocess.run([dcmtk_binary("storescu"), "-v", "--no-halt", "-aec", "PACS", "127.0.0.1", str(port),
                               *map(str, pydicom_test_files())], capture_output=True, text=True, timeout=300)
    finally:
        scp.stop()
    stored, current = set(), None
    for line in sent.stderr.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ")
        elif "Received Store Response (Success)" in line and current:
            stored.add(current)
    assert len(stored) > 90, sent.stderr[-2000:]
    return stored


def unique_uid_sources(files: list[Path]) -> dict[str, Path]:
    """SOP Instance UID -> source, for UIDs that only one test file carries (receivers keep one copy)."""
    seen: dict[str, list[Path]] = {}
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # some test files are odd on purpose
                uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        except Exception:  # noqa: BLE001 - not DICOM
            continue
        seen.setdefault(uid, []).append(path)
    return {uid: paths[0] for uid, paths in seen.items() if len(paths) == 1}


def check_against_oracle(report: Path, received: list[Path], dcmtk_sends: set[str], compare_bytes=True) -> None:
    entries = report_files(report)
    stored = {path for path, e in entries.items() if e["outcome"] == "stored"}
    assert dcmtk_sends <= stored, sorted(dcmtk_sends - stored)
    for path, entry in entries.items():
        if entry["outcome"] != "stored":
            assert entry["error"], path  # anything not sent says why
    if not compare_bytes:
        return
    unique = unique_uid_sources([Path(p) for p in stored])
    arrived = by_uid(received)
    compared = 0
    for uid, source in unique.items():
        if entries[str(source)]["conversion"] is None:  # sent from disk as it is
            assert dataset_bytes(arrived[uid]) == dataset_bytes(source), source
            compared += 1
    assert compared > 60


def test_pydicom_test_files_to_pacs_storescp(script_runner, scp_factory, tmp_path, dcmtk_sends):
    scp = scp_factory()
    report = tmp_path / "report.json"
    result = storescu(script_runner, scp.port, TEST_FILES, "--report", report)
    assert result.returncode == 1  # some test files are invalid on purpose; the report says which and why
    check_against_oracle(report, scp.files(), dcmtk_sends("+xa"))
    uids = [row["sop_instance_uid"] for row in scp.rows()]
    assert len(uids) == len(set(uids))


def test_pydicom_test_files_to_dcmtk_storescp_accepting_all(script_runner, dcmtk_scp_factory, tmp_path,
                                                            dcmtk_sends):
    port, out = dcmtk_scp_factory("+xa")
    report = tmp_path / "report.json"
    result = storescu(script_runner, port, TEST_FILES, "--report", report)
    assert result.returncode == 1
    check_against_oracle(report, list(out.iterdir()), dcmtk_sends("+xa"))


def test_pydicom_test_files_to_dcmtk_storescp_as_configured_by_default(script_runner, dcmtk_storescp, tmp_path,
                                                                       dcmtk_sends):
    """Uncompressed transfer syntaxes only: compressed files are refused, each with what to do about it."""
    port, out = dcmtk_storescp
    report = tmp_path / "report.json"
    result = storescu(script_runner, port, TEST_FILES, "--report", report)
    assert result.returncode == 1
    # Without +B DCMTK's storescp re-encodes what it writes: bytes are compared in the +B tests above.
    check_against_oracle(report, list(out.iterdir()), dcmtk_sends(), compare_bytes=False)
    refused = [e for e in report_files(report).values() if "not accepted by the peer" in (e["error"] or "")
               or e["outcome"] == "failed" and "add --decompress" in (e["error"] or "")]
    assert len(refused) > 20 and all("--decompress" in e["error"] for e in refused)


def test_more_than_128_presentation_contexts(script_runner, scp_factory, tmp_path):
    """15 SOP classes x 10 transfer syntaxes: 150 combinations, sent over several associations in turn."""
    from pacs_cli.dimse.store import TRANSFER_SYNTAXES, storage_contexts

    folder = tmp_path / "many"
    folder.mkdir()
    classes = [cx.abstract_syntax for cx in storage_contexts()[:15]]  # what pacs storescp accepts
    syntaxes = [ts for ts in TRANSFER_SYNTAXES if ts not in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)][:10]
    for i, sop_class in enumerate(classes):
        for j, syntax in enumerate(syntaxes):
            write_header_only(folder / f"{i:02d}-{j:02d}.dcm", sop_class, syntax)
    scp = scp_factory()
    report = tmp_path / "report.json"
    result = storescu(script_runner, scp.port, folder, "--report", report)
    assert result.returncode == 0, result.stderr
    document = json.loads(report.read_text())
    assert document["stored"] == 150 and document["associations"] >= 2
    assert {(e["sop_class_uid"], e["transfer_syntax"]) for e in document["files"]} == {
        (c, s) for c in classes for s in syntaxes}
    assert len(scp.rows()) == 150
    accepted = [e for e in scp.event_lines() if e["event"] == "association-accepted"]
    assert len(accepted) == document["associations"]


# --- when the peer refuses ---------------------------------------------------------------------------------


def test_refused_compressed_syntax_names_it_and_suggests_decompress(script_runner, dcmtk_storescp):
    """DCMTK's storescp accepts uncompressed transfer syntaxes only (by default). Without --decompress
    the process runs without numpy, so which decoders are installed is told only with --decompress."""
    port, _ = dcmtk_storescp
    result = storescu(script_runner, port, TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm", TEST_FILES / "MR_small_RLE.dcm")
    assert result.returncode == 1
    assert ("Secondary Capture Image Storage in JPEG Baseline (Process 1) not accepted by the peer "
            "(add --decompress to send it uncompressed)") in result.stderr
    assert "MR Image Storage in RLE Lossless not accepted by the peer (add --decompress" in result.stderr
    assert result.stderr.splitlines()[-1] == "Error: 2 file(s) not stored (--report FILE lists them)"


def test_decompress_rle_for_a_peer_that_refuses_it(script_runner, dcmtk_storescp, tmp_path):
    """pydicom decodes RLE with numpy alone; JPEG needs the codecs extra, and says so."""
    port, out = dcmtk_storescp
    report = tmp_path / "report.json"
    result = storescu(script_runner, port, "--decompress", TEST_FILES / "MR_small_RLE.dcm",
                      TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm", "--report", report)
    entries = report_files(report)
    rle = entries[str(TEST_FILES / "MR_small_RLE.dcm")]
    assert rle["outcome"] == "stored" and rle["conversion"] == "decompressed"
    assert rle["transfer_syntax"] in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    [received] = list(out.iterdir())
    reference = pydicom.dcmread(TEST_FILES / "MR_small.dcm")
    assert (pydicom.dcmread(received).pixel_array == reference.pixel_array).all()
    jpeg = entries[str(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")]
    assert jpeg["outcome"] == "failed" and "pacs-cli[codecs]" in jpeg["error"]
    assert result.returncode == 1


def test_big_endian_deflated_and_explicit_converted_for_an_implicit_only_peer(script_runner, dcmtk_scp_factory,
                                                                              tmp_path):
    port, out = dcmtk_scp_factory("+xi")
    big_endian = storescu(script_runner, port, TEST_FILES / "MR_small_bigendian.dcm")
    assert big_endian.returncode == 0, big_endian.stderr
    [received] = list(out.iterdir())  # byte order swapped, pixel values the same
    assert (pydicom.dcmread(received).pixel_array == pydicom.dcmread(TEST_FILES / "MR_small.dcm").pixel_array).all()
    sources = ["image_dfl.dcm", "MR_small.dcm", "MR_small_implicit.dcm"]
    report = tmp_path / "report.json"
    result = storescu(script_runner, port, *(TEST_FILES / name for name in sources), "--report", report)
    assert result.returncode == 0, result.stderr
    entries = report_files(report)
    assert [entries[str(TEST_FILES / n)]["conversion"] for n in sources] == ["converted", "converted", None]
    assert {e["transfer_syntax"] for e in entries.values()} == {ImplicitVRLittleEndian}


def test_ts_option_limits_conversion_and_the_error_says_what_to_try(script_runner, dcmtk_scp_factory):
    port, _ = dcmtk_scp_factory("+xi")
    result = storescu(script_runner, port, "--ts", "explicit", TEST_FILES / "MR_small_bigendian.dcm")
    assert result.returncode == 1
    assert "no transfer syntax accepted for MR Image Storage (check the transfer syntaxes the peer is " \
           "configured for, or try --ts implicit or --ts explicit)" in result.stderr


def test_sop_class_the_peer_does_not_support(script_runner, scp_factory, tmp_path):
    private = write_header_only(tmp_path / "private.dcm", "1.2.826.0.1.3680043.9.9999.1", ExplicitVRLittleEndian)
    scp = scp_factory()
    report = tmp_path / "report.json"
    result = storescu(script_runner, scp.port, private, "--report", report)
    assert result.returncode == 1
    [entry] = report_files(report).values()
    assert entry["error"].startswith("the peer does not accept 1.2.826.0.1.3680043.9.9999.1")
    assert "abstract syntax not supported" in entry["error"]


def test_failed_store_gives_status_meaning_and_error_comment(script_runner, scp_factory, tmp_path):
    scp = scp_factory("--fault-status", "0xA700")
    source = make_file(tmp_path / "a.dcm")
    result = storescu(script_runner, scp.port, source, "--format", "ndjson")
    assert result.returncode == 1
    assert f"W: {source}: 0xA700 Failure: Refused: Out of Resources: fault injection (--fault-status)" \
        in result.stderr
    [line] = map(json.loads, result.stdout.splitlines())
    assert line["status"] == "0xA700" and line["status_meaning"] == "0xA700 Failure: Refused: Out of Resources"
    assert line["error_comment"] == "fault injection (--fault-status)" and line["outcome"] == "failed"


def test_a_file_still_growing_after_the_scan_is_not_sent(script_runner, pynetdicom_scp, tmp_path):
    """A spool writer still writing: the size scanned is checked again before the file goes out."""
    from pynetdicom import evt
    from pynetdicom.sop_class import CTImageStorage

    growing, complete = make_file(tmp_path / "growing.dcm"), make_file(tmp_path / "complete.dcm")
    scanned = growing.stat().st_size
    stored = []

    def grow(event):  # the association request: every file was scanned, none sent yet
        with open(growing, "ab") as file:
            file.write(bytes(100))

    def store(event):
        stored.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    port = pynetdicom_scp(contexts=[CTImageStorage], handlers=[(evt.EVT_REQUESTED, grow), (evt.EVT_C_STORE, store)])
    result = script_runner.run(["pacs", "storescu", "-aec", "PYNETDICOM", "127.0.0.1", str(port),
                                str(growing), str(complete), "--format", "ndjson"])
    assert result.returncode == 1
    assert stored == [pydicom.dcmread(complete).SOPInstanceUID]
    entries = {Path(entry["path"]).name: entry for entry in map(json.loads, result.stdout.splitlines())}
    assert entries["complete.dcm"]["outcome"] == "stored" and entries["growing.dcm"]["outcome"] == "failed"
    assert f"the file changed size since it was scanned ({scanned} -> {scanned + 100} bytes)" \
        in entries["growing.dcm"]["error"]


def test_warning_status_counts_as_stored(script_runner, scp_factory, tmp_path):
    scp = scp_factory("--fault-status", "0xB000")
    result = storescu(script_runner, scp.port, make_file(tmp_path / "a.dcm"))
    assert result.returncode == 0
    assert "stored 1 file(s)" in result.stderr and "1 with a warning" in result.stderr
    assert "0xB000 Warning: Coercion of Data Elements" in result.stderr


def test_mutual_tls(script_runner, scp_factory, tmp_path):
    """TLS and certificates come from the options every network command shares."""
    from certificates import CA

    folder = tmp_path / "pki"
    folder.mkdir()
    ca = CA(folder)
    server, client = ca.issue("server"), ca.issue("client")
    scp = scp_factory("--tls-cert", server.cert, "--tls-key", server.key, "--tls-ca", ca.pem)
    source = make_file(tmp_path / "a.dcm")
    result = storescu(script_runner, scp.port, source, "--tls-ca", ca.pem, "--tls-cert", client.cert,
                      "--tls-key", client.key)
    assert result.returncode == 0, result.stderr
    [stored] = scp.files()
    assert dataset_bytes(stored) == dataset_bytes(source)


# --- large files -------------------------------------------------------------------------------------------


def test_50_mb_file_goes_out_from_disk_without_decoding(scp_factory, tmp_path):
    """Peak RSS of the sender stays far below the file size: nothing decoded, nothing held whole."""
    source = make_file(tmp_path / "big.dcm", rows=5000)  # 50 MB of pixel data
    small = make_file(tmp_path / "small.dcm")
    scp = scp_factory()

    def peak_rss_mb(path: Path) -> float:
        proc = subprocess.Popen([str(CONSOLE_SCRIPT), "storescu", "-aec", "PACS", "127.0.0.1", str(scp.port),
                                 str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return usage.ru_maxrss / 1024

    baseline, big = peak_rss_mb(small), peak_rss_mb(source)
    assert big - baseline < 25, (baseline, big)  # a decode would cost the file size two or three times
    stored = by_uid(scp.files())
    assert dataset_bytes(stored[pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID]) == \
        dataset_bytes(source)


# --- parallel associations, retries, journal, spool -------------------------------------------------------


def test_parallel_associations_store_every_file_once(script_runner, scp_factory, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for i in range(40):
        make_file(folder / f"{i}.dcm")
    scp = scp_factory()
    report = tmp_path / "report.json"
    result = storescu(script_runner, scp.port, folder, "--associations", "3", "--report", report)
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text())["associations"] == 3
    assert len({row["sop_instance_uid"] for row in scp.rows()}) == 40
    assert len([e for e in scp.event_lines() if e["event"] == "association-accepted"]) == 3


def spooled_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    return [make_file(folder / f"{i:03d}.dcm") for i in range(count)]


def start_sender(scp, folder: Path, report: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(["pacs", "storescu", "-aec", "PACS", "127.0.0.1", str(scp.port), str(folder),
                             *options, "--report", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_stored(scp, count: int) -> None:
    deadline = time.monotonic() + 30
    while len([e for e in scp.event_lines() if e["event"] == "stored"]) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_sender_process_that_dies_fails_only_its_unreported_files(scp_factory, tmp_path):
    """Kill one of two sending processes mid-run: the other's files are stored, the dead one's
    unconfirmed files are reported failed (each file once in the report), and the run exits 1."""
    folder = tmp_path / "batch"
    sources = spooled_files(folder, 30)
    scp = scp_factory("--fault-delay", "0.05")
    report = tmp_path / "report.json"
    sender = start_sender(scp, folder, report, "--associations", "2")
    wait_until_stored(scp, 4)
    children = Path(f"/proc/{sender.pid}/task/{sender.pid}/children").read_text().split()
    assert len(children) == 2
    os.kill(int(children[0]), signal.SIGKILL)
    _, err = sender.communicate(timeout=60)
    assert sender.returncode == 1, err
    entries = json.loads(report.read_text())["files"]
    assert sorted(e["path"] for e in entries) == sorted(map(str, sources))  # each file once
    died = [e for e in entries if e["outcome"] != "stored"]
    assert died and all(e["outcome"] == "failed" and "ended unexpectedly" in e["error"] for e in died), died
    assert len({row["sop_instance_uid"] for row in scp.rows()}) >= 30 - len(died)


def test_receiver_restarted_mid_run_with_retries(scp_factory, tmp_path):
    """Kill the receiver mid-run, start it again on the same port: the run completes, each file reported once."""
    folder = tmp_path / "spool"
    sources = spooled_files(folder, 60)
    scp = scp_factory("--fault-delay", "0.05")
    report = tmp_path / "report.json"
    sender = start_sender(scp, folder, report, "--retries", "30", "--retry-delay", "0.2")
    wait_until_stored(scp, 15)
    scp.proc.kill()
    scp.proc.wait()
    (tmp_path / "ready").unlink()
    restarted = scp_factory("--port", str(scp.port))
    _, err = sender.communicate(timeout=120)
    assert sender.returncode == 0, err
    assert "retry 1 of 30" in err
    entries = json.loads(report.read_text())["files"]
    assert sorted(e["path"] for e in entries) == sorted(map(str, sources))  # each file once
    assert all(e["outcome"] == "stored" for e in entries)
    assert len({row["sop_instance_uid"] for row in restarted.rows()}) == 60


def test_journal_resends_only_what_is_missing_or_changed(script_runner, scp_factory, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    first = [make_file(folder / f"{i}.dcm") for i in range(3)]
    scp = scp_factory()
    journal = tmp_path / "sent.jsonl"
    assert storescu(script_runner, scp.port, folder, "--journal", journal).returncode == 0
    assert len(journal.read_text().splitlines()) == 3
    added = make_file(folder / "new.dcm")
    changed = make_file(first[0], sop=pydicom.dcmread(first[0]).SOPInstanceUID, rows=4)
    result = storescu(script_runner, scp.port, folder, "--journal", journal, "--format", "ndjson")
    assert result.returncode == 0, result.stderr
    outcomes = {Path(r["path"]).name: r["outcome"] for r in map(json.loads, result.stdout.splitlines())}
    assert outcomes == {"0.dcm": "stored", "1.dcm": "already-sent", "2.dcm": "already-sent", "new.dcm": "stored"}
    assert "2 already sent" in result.stderr
    stored = [e for e in scp.event_lines() if e["event"] == "stored"]
    assert len(stored) == 5 and changed and added
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert {e["peer"] for e in entries} == {f"PACS@127.0.0.1:{scp.port}"}


def test_spool_renames_on_success_and_failure(script_runner, scp_factory, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    make_file(spool / "a.dcm")
    make_file(spool / "b.dcm")
    (spool / "junk.txt").write_text("not DICOM")
    scp = scp_factory()
    args = ["--on-success-rename", ".done", "--on-failure-rename", ".bad"]
    result = storescu(script_runner, scp.port, spool, *args)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in spool.iterdir()) == ["a.dcm.done", "b.dcm.done", "junk.txt.bad"]
    again = storescu(script_runner, scp.port, spool, *args)
    assert again.returncode == 0 and "stored 0 file(s)" in again.stderr  # marked files are not picked up
    assert len(scp.rows()) == 2


def test_spool_moves_to_directories(script_runner, scp_factory, tmp_path):
    spool, done, failed = tmp_path / "spool", tmp_path / "done", tmp_path / "failed"
    spool.mkdir()
    make_file(spool / "a.dcm")
    scp = scp_factory("--fault-status", "0xC000")
    result = storescu(script_runner, scp.port, spool, "--on-success-move", done, "--on-failure-move", failed)
    assert result.returncode == 1
    assert list(spool.iterdir()) == [] and [p.name for p in failed.iterdir()] == ["a.dcm"]
    assert not done.exists()


# --- exit codes --------------------------------------------------------------------------------------------


def test_nothing_listening_exits_3_and_reports_every_file(script_runner, tmp_path):
    source = make_file(tmp_path / "a.dcm")
    report = tmp_path / "report.json"
    result = storescu(script_runner, free_port(), source, "--report", report, "--retries", "1",
                      "--retry-delay", "0.05")
    assert result.returncode == 3
    assert "retry 1 of 1" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: cannot connect to 127.0.0.1:")
    assert "connection refused" in result.stderr.splitlines()[-1]
    [entry] = report_files(report).values()
    assert entry["outcome"] == "failed" and "connection refused" in entry["error"]


def test_permanent_rejection_exits_3_without_retrying(script_runner, scp_factory, tmp_path):
    scp = scp_factory("-aet", "ARCHIVE", "--accept-called-aet", "ARCHIVE")
    started = time.monotonic()
    result = script_runner.run(["pacs", "storescu", "-aec", "WRONG", "127.0.0.1", str(scp.port),
                                str(make_file(tmp_path / "a.dcm")), "--retries", "5", "--retry-delay", "2"])
    assert result.returncode == 3
    assert "Called AE title not recognised" in result.stderr and "retry" not in result.stderr
    assert time.monotonic() - started < 10


def test_transient_rejection_is_retried(script_runner, scp_factory, tmp_path):
    scp = scp_factory("--fault-reject", "transient")
    result = storescu(script_runner, scp.port, make_file(tmp_path / "a.dcm"), "--retries", "2",
                      "--retry-delay", "0.05")
    assert result.returncode == 3
    assert "retry 2 of 2" in result.stderr and "Transient" in result.stderr


@pytest.mark.parametrize("args, message", [
    ([], "nothing to send"),
    (["x.dcm", "--on-success-rename", ".done", "--on-success-move", "d"], "not both"),
    (["x.dcm", "--associations", "0"], "0 is not in the range"),
])
def test_usage_errors_exit_2(script_runner, args, message):
    result = script_runner.run(["pacs", "storescu", "127.0.0.1", "104", *args])
    assert result.returncode == 2
    assert message in result.stderr


def test_ctrl_c_aborts_and_exits_130_with_a_report(scp_factory, tmp_path):
    folder = tmp_path / "slow"
    folder.mkdir()
    for i in range(20):
        make_file(folder / f"{i}.dcm")
    scp = scp_factory("--fault-delay", "0.5")
    report = tmp_path / "report.json"
    sender = subprocess.Popen(["pacs", "storescu", "-aec", "PACS", "127.0.0.1", str(scp.port), str(folder),
                               "--report", str(report), "--format", "ndjson"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(sender.stdout.readline())
    assert first["outcome"] == "stored"
    sender.send_signal(signal.SIGINT)
    _, err = sender.communicate(timeout=30)
    assert sender.returncode == 130
    assert err.splitlines()[-1] == "Interrupted."
    stored = [e for e in json.loads(report.read_text())["files"] if e["outcome"] == "stored"]
    assert 1 <= len(stored) < 20


# --- the library, without a peer ----------------------------------------------------------------------------


def test_batches_hold_at_most_128_contexts_and_keep_a_class_together():
    from pacs_cli.dimse.send import DEFAULT_TARGETS, Item, plan_batches

    syntaxes = [f"1.2.840.10008.1.2.4.{n}" for n in range(50, 70)]
    items = [Item(i, f"{i}.dcm", 1, 0, f"1.2.3.{i % 9}", f"9.{i}", syntaxes[i % 20], True) for i in range(900)]
    batches = plan_batches(items, DEFAULT_TARGETS)
    assert len(batches) == 2
    assert all(len(batch.roles) <= 128 for batch in batches)
    assert sorted(i.index for batch in batches for i in batch.items) == list(range(900))
    for batch in batches:
        exact = {(sop, syntaxes[0]) for role, sop, syntaxes in batch.roles if role == "exact"}
        assert {(i.sop_class, i.transfer_syntax) for i in batch.items} <= exact


def test_shards_balance_bytes_and_keep_input_order():
    from pacs_cli.dimse.send import Item, shard

    sizes = [100, 1, 1, 1, 50, 50, 1, 1]
    items = [Item(i, f"{i}", size, 0, "1.2", f"3.{i}", ExplicitVRLittleEndian, True) for i, size in enumerate(sizes)]
    shards = shard(items, 2)
    assert sorted(sum(i.size for i in s) for s in shards) == [102, 103]
    assert all([i.index for i in s] == sorted(i.index for i in s) for s in shards)


def test_scan_reads_uids_from_the_dataset(tmp_path):
    from pacs_cli.dimse.send import FileResult, Item, scan

    good = scan(str(make_file(tmp_path / "a.dcm", sop="1.2.3.4")))
    assert isinstance(good, Item) and good.sop_instance == "1.2.3.4" and good.chunked
    raw = scan(str(TEST_FILES / "ExplVR_LitEndNoMeta.dcm"))
    assert isinstance(raw, Item) and not raw.chunked and raw.transfer_syntax == ExplicitVRLittleEndian
    mismatch = scan(str(TEST_FILES / "rtplan.dcm"))  # its file meta names another instance
    assert isinstance(mismatch, Item) and not mismatch.chunked
    assert mismatch.sop_instance == pydicom.dcmread(TEST_FILES / "rtplan.dcm").SOPInstanceUID
    dicomdir = scan(str(TEST_FILES / "dicomdirtests" / "DICOMDIR"))
    assert isinstance(dicomdir, FileResult) and dicomdir.outcome == "skipped" and dicomdir.reason == "DICOMDIR"
    missing = scan(str(tmp_path / "gone.dcm"))
    assert missing.outcome == "failed" and re.search("No such file", missing.error)


def test_journal_ignores_a_line_cut_short(tmp_path):
    from pacs_cli.dimse.send import Journal, scan

    item = scan(str(make_file(tmp_path / "a.dcm")))
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, "PEER")
    result = type("R", (), {"path": item.path, "size": item.size, "mtime_ns": item.mtime_ns,
                            "sop_instance_uid": item.sop_instance, "status": 0})()
    journal.record(result)
    journal.close()
    with path.open("a") as f:
        f.write('{"peer": "PEER", "path": "/x", "si')
    assert Journal(path, "PEER").confirmed(item)
    assert not Journal(path, "OTHER").confirmed(item)


def test_a_worker_sends_held_results_within_the_hold_time():
    """A result held by a sending worker reaches the parent (progress bar, --journal) within
    OUTBOX_HOLD even when no other message follows it, as during a long transfer."""
    import multiprocessing

    from pacs_cli.dimse.send import OUTBOX_HOLD, _Outbox

    reader, writer = multiprocessing.Pipe(duplex=False)
    outbox = _Outbox(writer, 7)
    outbox.put("associated", None)  # sent at once
    assert reader.recv() == (7, [("associated", None)])
    outbox.put("result", "first")  # held: it came right after a send
    outbox.put("result", "second")
    assert not reader.poll(OUTBOX_HOLD / 5)
    assert reader.poll(OUTBOX_HOLD * 20), "held results were never sent"
    assert reader.recv() == (7, [("result", "first"), ("result", "second")])
    outbox.put("result", "third")
    outbox.put("done", None)
    outbox.close()
    assert reader.recv() == (7, [("result", "third"), ("done", None)])
    assert not reader.poll(OUTBOX_HOLD * 3)  # nothing after the end
