"""The example scripts in examples/ run as a user would run them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import dcmtk_binary
from test_storescp import make_file

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=180)


def test_modality_workflow():
    result = run("modality-workflow.sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("COMPLETED, 3 images stored")


def test_ci_archive(tmp_path):
    dcmtk_binary("storescu")  # the script sends with DCMTK's
    for i in range(3):
        make_file(tmp_path / f"{i}.dcm")
    result = run("ci-archive.sh", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "3 of 3 files stored" in result.stdout
