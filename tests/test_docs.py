"""The docs cannot drift: man pages and completions are regenerated and compared, every command is documented,
every ``--help`` works through the installed ``pacs``, and ``pacs --help`` stays free of heavy imports."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pacs_cli import _docgen
from pacs_cli.cli import ALIASES, COMMANDS

REPO = Path(__file__).resolve().parent.parent
REGENERATE = "run `python -m pacs_cli._docgen` and commit man/ and completions/"
HEAVY = {"pynetdicom", "pydicom", "sqlite_utils", "rich"}


def _tree(root: Path) -> dict[str, str]:
    """Every generated-directory file under root, relative path -> text (dotfiles such as .gitkeep aside)."""
    return {
        f"{directory}/{path.name}": path.read_text(encoding="utf-8")
        for directory in _docgen.OUTPUT_DIRS
        if (root / directory).is_dir()
        for path in sorted((root / directory).iterdir())
        if path.is_file() and not path.name.startswith(".")
    }


def test_generated_docs_are_current(tmp_path):
    assert _docgen.main(["--output", str(tmp_path)]) == 0
    fresh, committed = _tree(tmp_path), _tree(REPO)
    drift = [f"missing: {rel}" for rel in sorted(set(fresh) - set(committed))]
    drift += [f"stale: {rel}" for rel in sorted(set(fresh) & set(committed)) if fresh[rel] != committed[rel]]
    drift += [f"extra: {rel}" for rel in sorted(set(committed) - set(fresh))]
    click_version = importlib.metadata.version("click")
    assert not drift, (f"man/ and completions/ are out of date ({', '.join(drift)}): {REGENERATE} "
                       f"(completion scripts are click {click_version}'s own; a different click may write others)")


def test_generated_files_say_so():
    for rel, text in _docgen.render_all().items():
        head = "\n".join(text.splitlines()[:2])
        assert "python -m pacs_cli._docgen" in head and "do not edit" in head, rel


def test_output_is_the_same_in_any_process(tmp_path):
    """No terminal width, no hash order (click keeps help option names in a set), no date."""
    outputs = []
    for seed, columns in (("1", "40"), ("2", "250")):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed, "COLUMNS": columns}
        subprocess.run([sys.executable, "-m", "pacs_cli._docgen", "--output", str(out)], env=env,
                       check=True, capture_output=True)
        outputs.append(_tree(out))
    assert outputs[0] == outputs[1]


def test_check_lists_stale_missing_and_extra_files(tmp_path, capsys):
    assert _docgen.main(["--output", str(tmp_path)]) == 0
    assert _docgen.main(["--check", "--output", str(tmp_path)]) == 0
    (tmp_path / "man" / "pacs.1").write_text("edited by hand\n", encoding="utf-8")
    (tmp_path / "completions" / "pacs.fish").unlink()
    (tmp_path / "man" / "pacs-gone.1").write_text("left over\n", encoding="utf-8")
    capsys.readouterr()

    assert _docgen.main(["--check", "--output", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["missing: completions/pacs.fish", "stale: man/pacs.1", "extra: man/pacs-gone.1"]
    assert (tmp_path / "man" / "pacs.1").read_text(encoding="utf-8") == "edited by hand\n"


def test_man_pages_have_every_section():
    root = _docgen.root_context()
    for name in sorted(COMMANDS):
        ctx = _docgen.command_context(name, root)
        page = _docgen.render_man(ctx.command, ctx)
        sections = re.findall(r"^\.SH (.+)$", page, flags=re.MULTILINE)
        assert sections == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "ENVIRONMENT",
                            "FILES", "SEE ALSO"], name
        assert "PACS_CONFIG" in page
        for code in ("0", "1", "2", "3", "130"):
            assert f"\\fB{code}\\fR" in page, (name, code)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_man_page(name):
    assert (REPO / "man" / f"pacs-{name}.1").is_file(), f"no man/pacs-{name}.1: {REGENERATE}"


def test_every_command_is_in_the_readme():
    readme = REPO / "README.md"
    assert readme.is_file(), "README.md is missing; its '## Commands' section must list every command"
    section = re.search(r"^## Commands\s*$(.*?)(?=^## |\Z)", readme.read_text(encoding="utf-8"),
                        flags=re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Commands' section listing the commands"
    missing = [name for name in sorted(COMMANDS)
               if not re.search(rf"`(pacs )?{re.escape(name)}[`\s]", section.group(1))]
    assert not missing, f"README.md's '## Commands' section does not list {missing} (as `NAME` or `pacs NAME ...`)"


@pytest.mark.script_launch_mode("subprocess")
@pytest.mark.parametrize("args", [[], *([name] for name in sorted({*COMMANDS, *ALIASES}))], ids=lambda args: " ".join(["pacs", *args]))
def test_help_works_through_the_console_script(script_runner, args):
    result = script_runner.run(["pacs", *args, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: pacs {' '.join(args)}".rstrip() + " "), result.stdout
    assert result.stderr == ""


def test_root_help_imports_nothing_heavy():
    """`pacs --help` loads every command module (for the command list) and must stay quick: no DICOM stack."""
    code = (
        "import contextlib, io, json, sys\n"
        "from pacs_cli.cli import cli\n"
        "out, status = io.StringIO(), None\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        cli.main(['--help'], prog_name='pacs')\n"
        "    except SystemExit as exc:\n"
        "        status = exc.code\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r})\n"
        "print(json.dumps({'status': status, 'usage': out.getvalue().startswith('Usage: pacs'), 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["status"] == 0 and report["usage"], f"pacs --help failed: {result.stderr}"
    assert report["heavy"] == [], "pacs --help imported heavy modules; import them inside the command body"
