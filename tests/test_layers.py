"""The library layers never import the terminal layers: protocol, storage and index code stay usable
without click or rich (STYLE.md, "dimse/ and archive/ never import click or rich")."""

from __future__ import annotations

import ast
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
