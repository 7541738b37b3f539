"""The library layers never import the terminal layers: protocol, storage and index code stay usable
without click or rich (STYLE.md, "dimse/ and archive/ never import click or rich"); and the one-shot
commands, run as `pacs` runs them, import only what they use (issue 7: start-up time)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pacs_cli"
LIBRARY = sorted(p for folder in ("dimse", "archive", "worklist") for p in (PACKAGE / folder).glob("*.py"))


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_library_module_imports_no_click_or_rich(path):
    assert not imported_roots(path) & {"click", "rich"}


def test_the_layers_exist():
    assert len(LIBRARY) > 15


# Run the console script's own entry point and report, at exit, the packages that were really imported
# (a module set to None, an import refused on purpose, does not count).
LOADED = (
    "import atexit, json, sys\n"
    "atexit.register(lambda: print(json.dumps(sorted({name.split('.')[0] for name, module in sys.modules.items()"
    " if module is not None})), file=sys.stderr))\n"
    "from pacs_cli.cli import main\n"
    "sys.argv[0] = 'pacs'\n"
    "main()\n"
)
IMPORT_LATER = "import it inside the function that needs it, not at the top of a module this command imports"


def loaded_packages(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    result = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True, timeout=60)
    return result, set(json.loads(result.stderr.splitlines()[-1]))


def test_echo_imports_neither_pixel_libraries_nor_the_index_nor_rich(pynetdicom_scp):
    """numpy and requests come with any pydicom import unless cli.main keeps them out; sqlite-utils or rich
    would come only through a top-level import on echo's path."""
    port = pynetdicom_scp()
    result, loaded = loaded_packages("echo", "127.0.0.1", str(port))
    assert result.returncode == 0 and "0x0000 Success" in result.stdout, result.stderr
    assert {"pynetdicom", "pydicom"} <= loaded
    assert loaded & {"numpy", "requests", "sqlite_utils", "rich"} == set(), IMPORT_LATER
    assert "http" not in loaded, "pydicom.data (its test-file downloader) loads only when used"


def python_output(code: str) -> str:
    """What ``code`` prints, run in a Python of its own (imports as a fresh `pacs` process makes them)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_pydicom_modules_left_out_at_start_up_load_when_used():
    """pydicom.data and pydicom.examples stand in until used; then they are pydicom's own."""
    code = (
        "import sys\n"
        "from pacs_cli.startup import load_when_used\n"
        "load_when_used('pydicom.examples'); load_when_used('pydicom.data', 'get_palette_files')\n"
        "import pydicom.pixels.processing as processing\n"
        "assert 'http.client' not in sys.modules\n"
        "print(len(processing.get_palette_files('*.dcm')))\n"
        "from pydicom.data import get_testdata_file\n"
        "from pydicom import examples\n"
        "print(get_testdata_file('CT_small.dcm') == str(examples.get_path('ct')))\n"
    )
    palettes, same = python_output(code).split()
    assert int(palettes) > 5 and same == "True"


def test_pynetdicom_loaded_unchecked_leaves_pydicom_validating_as_before():
    """pynetdicom's first import runs with pydicom's validation off (start-up); after it, pydicom
    validates as it did, the finder is gone, and pynetdicom's source and resources read as usual."""
    code = (
        "import importlib.resources, inspect, sys, warnings\n"
        "from pacs_cli.startup import load_unchecked\n"
        "load_unchecked('pynetdicom')\n"
        "from pydicom import config\n"
        "from pydicom.uid import UID\n"
        "before = config.settings.reading_validation_mode\n"
        "import pynetdicom\n"
        "from pynetdicom.sop_class import CTImageStorage\n"
        "assert config.settings.reading_validation_mode == before == config.WARN\n"
        "assert not [f for f in sys.meta_path if type(f).__name__ == '_FirstImportWrapped']\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    UID('1.02.3')\n"
        "assert caught, 'pydicom no longer warns about an invalid UID'\n"
        "assert 'def debug_logger' in inspect.getsource(pynetdicom) and CTImageStorage == '1.2.840.10008.5.1.4.1.1.2'\n"
        "print(sorted(p.name for p in importlib.resources.files('pynetdicom').iterdir() if p.name == 'apps'))\n"
    )
    assert python_output(code).strip() == "['apps']"


def test_pydicom_and_pynetdicom_learn_their_versions_without_importlib_metadata():
    """Their ``__version__`` as importlib.metadata gives it, read from the dist-info directory's name
    while importlib.metadata stays unloaded (start-up); the finders are gone afterwards."""
    code = (
        "import sys\n"
        "from pacs_cli.startup import lean_process\n"
        "lean_process(pixel_free=True)  # as `pacs echo` starts: numpy and requests would load it anyway\n"
        "import pynetdicom, pydicom\n"
        "assert 'importlib.metadata' not in sys.modules\n"
        "assert not [f for f in sys.meta_path if type(f).__name__ == '_FirstImportWrapped']\n"
        "from importlib.metadata import version\n"
        "print(pydicom.__version__ == version('pydicom') != '', pynetdicom.__version__ == version('pynetdicom') != '')\n"
    )
    assert python_output(code).split() == ["True", "True"]


def test_the_version_stand_in_makes_way_for_importlib_metadata(tmp_path):
    """Where no dist-info sits beside the package, or a name other than ``version`` is asked for, the
    stand-in gives importlib.metadata's own answer and leaves the real module in its place."""
    code = (
        "import sys, types\n"
        "from pacs_cli import startup\n"
        f"sys.modules['click'] = types.SimpleNamespace(__file__={str(tmp_path / 'click' / '__init__.py')!r})\n"
        "stand_in = sys.modules['importlib.metadata'] = startup._metadata_stand_in()\n"
        "from importlib.metadata import version\n"
        "found = version('click')\n"
        "assert sys.modules['importlib.metadata'] is not stand_in\n"
        "sys.modules['importlib.metadata'] = startup._metadata_stand_in()\n"
        "from importlib.metadata import PackageNotFoundError\n"
        "import importlib.metadata as real\n"
        "print(found == real.version('click') != '', PackageNotFoundError is real.PackageNotFoundError)\n"
    )
    assert python_output(code).split() == ["True", "True"]


def test_find_in_the_index_imports_no_network_stack(tmp_path):
    """`pacs find --db` reads SQLite: no pynetdicom, no sqlite-utils (the index is already migrated)."""
    from pacs_cli.archive.index import FileInfo, Index

    index = Index.open(tmp_path / "index.sqlite")
    try:
        with index.write() as tx:
            tx.put({"PatientID": "0042", "PatientName": "Doe^Jane", "StudyInstanceUID": "1.2.3",
                    "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.3.4.5", "Modality": "CT",
                    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, FileInfo("a.dcm", 1, 1))
    finally:
        index.close()
    result, loaded = loaded_packages("find", "--db", str(tmp_path / "index.sqlite"), "-k", "PatientID=0042",
                                     "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["00100020"]["Value"] == ["0042"]
    assert "pydicom" in loaded
    assert loaded & {"numpy", "requests", "pynetdicom", "sqlite_utils", "rich"} == set(), IMPORT_LATER


def test_other_commands_keep_numpy():
    """Only the commands in cli.PIXEL_FREE go without numpy: `pacs dump` may decode pixel data."""
    from pydicom.data import get_testdata_file

    result, loaded = loaded_packages("dump", get_testdata_file("CT_small.dcm"))
    assert result.returncode == 0, result.stderr
    assert "numpy" in loaded
    assert "requests" not in loaded


@pytest.mark.parametrize("decompress", [False, True], ids=["plain", "decompress"])
def test_storescu_loads_numpy_only_to_decompress(dcmtk_storescp, decompress):
    """numpy was a tenth of a second of every `pacs storescu`; only --decompress decodes pixel data."""
    from pydicom.data import get_testdata_file

    port, _ = dcmtk_storescp
    args = ["storescu", "127.0.0.1", str(port), get_testdata_file("CT_small.dcm")]
    result, loaded = loaded_packages(*args, *(["--decompress"] if decompress else []))
    assert result.returncode == 0, result.stderr
    assert ("numpy" in loaded) is decompress
    assert "requests" not in loaded
