"""Pure formatters for results: a rich table, JSON lines, CSV, and DICOM JSON.

They turn data into text (the table into a rich renderable) and never look at the terminal: the
command decides the format once, with :func:`resolve_format`, and prints what comes back.

* ``table``, ``ndjson`` and ``csv`` take rows: ``{column: string}`` dicts. Values stay strings, as
  received, so an ID of ``007`` stays ``007``; a column a row lacks is ``''``.
* ``json`` takes pydicom Datasets and writes one array in the DICOM JSON model (PS3.18 F.2), as
  ``pacs dump --format json`` does: PN as ``{"Alphabetic": ...}``, IS/DS as numbers, as the model says.

Output is produced piece by piece (generators), so the first result prints before the last arrives;
only the table waits for all rows. ``write_json`` and ``store_summary`` at the end serve ``pacs storescu``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

FORMATS = ("auto", "table", "json", "ndjson", "csv")
TABLE_MIN_WIDTH = 12


def resolve_format(name: str, interactive: bool) -> str:
    """``auto`` is a table on a terminal and JSON lines otherwise; any other name is itself."""
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}")
    if name == "auto":
        return "table" if interactive else "ndjson"
    return name


def select(rows: Iterable[dict], columns: Sequence[str]) -> Iterator[dict[str, str]]:
    """Each row reduced to ``columns``, in that order; missing columns are ''."""
    for row in rows:
        yield {column: row.get(column, "") for column in columns}


def ndjson(record: dict) -> str:
    """One JSON object as one line, without the line end (UTF-8, not escaped)."""
    return json.dumps(record, ensure_ascii=False)


def ndjson_lines(rows: Iterable[dict]) -> Iterator[str]:
    """One JSON object per line, each with its line end."""
    for row in rows:
        yield ndjson(row) + "\n"


def csv_lines(columns: Sequence[str], rows: Iterable[dict]) -> Iterator[str]:
    """A header line, then one line per row; RFC 4180 quoting, '\\n' line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def line(values) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(columns)
    for row in rows:
        yield line([row.get(column, "") for column in columns])


def dicom_json(datasets: Iterable) -> Iterator[str]:
    """One JSON array of DICOM JSON objects, one object per line; '[]' when there are none."""
    count = 0
    for ds in datasets:
        obj = ds.to_json_dict(suppress_invalid_tags=True)
        yield ("[\n  " if count == 0 else ",\n  ") + json.dumps(obj, ensure_ascii=False)
        count += 1
    yield "[]\n" if count == 0 else "\n]\n"


def headers(columns: Sequence[str]) -> list[str]:
    """Short column titles: the last part of a path (``Modality`` for ``Seq[0].Modality``) when unique."""
    short = [column.rsplit(".", 1)[-1] for column in columns]
    return [s if short.count(s) == 1 else column for s, column in zip(short, columns)]


def table(columns: Sequence[str], rows: Iterable[dict], title: str | None = None):
    """A rich Table of the rows; the caller prints it on its own console.

    On a narrow terminal long headers fold before short values do: each column keeps the width of its
    longest value, up to TABLE_MIN_WIDTH characters (UIDs fold beyond that).
    """
    from rich.table import Table

    cells = [[row.get(column, "") for column in columns] for row in rows]
    result = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for number, header in enumerate(headers(columns)):
        longest = max((len(line[number]) for line in cells), default=1)
        result.add_column(header, overflow="fold", min_width=max(1, min(longest, TABLE_MIN_WIDTH)))
    for line in cells:
        result.add_row(*line)
    return result


# --- storescu (pacs_cli.commands.storescu) --------------------------------------------------------


def write_json(path: Path | str, document) -> None:
    """Write one JSON document (indented, UTF-8) to ``path``, replacing it atomically."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def store_summary(summary) -> list[str]:
    """The closing lines of a send: counts, time and rate, then each failure and skip reason with its hint."""
    size = f"{summary.bytes / 1e6:.1f} MB" if summary.bytes >= 1e5 else f"{summary.bytes} bytes"
    rate = f", {summary.bytes / summary.seconds / 1e6:.1f} MB/s" if summary.seconds > 0 and summary.bytes else ""
    lines = [f"stored {summary.stored} file(s) ({size}) in {summary.seconds:.1f} s{rate} over "
             f"{summary.associations} association(s): {summary.warnings} with a warning, "
             f"{summary.failures} failed, {sum(summary.skipped.values())} skipped, "
             f"{summary.already_sent} already sent"]
    for reason, count in sorted(summary.failed.items(), key=lambda item: (-item[1], str(item[0]))):
        hint = summary.hints.get(reason)
        lines.append(f"  failed: {count} x {reason}" + (f" ({hint})" if hint else ""))
    for reason, count in sorted(summary.skipped.items(), key=lambda item: (-item[1], str(item[0]))):
        lines.append(f"  skipped: {count} x {reason}")
    return lines
