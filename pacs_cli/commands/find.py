"""``pacs findscu`` (alias ``pacs find``): C-FIND a peer, or the archive's own index with --db/--dir.

Thin on purpose: keys are parsed by :mod:`pacs_cli.dimse.identifiers`, the query runs in
:mod:`pacs_cli.dimse.find`, results are formatted by :mod:`pacs_cli.output`. pydicom, pynetdicom and
rich are imported inside the function so that ``pacs --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pacs_cli.options import archive_options, connection_options, given_explicitly

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
FORMATS = ("auto", "table", "json", "ndjson", "csv")  # pacs_cli.output.FORMATS, without importing it


@click.command()
@connection_options(optional=True)
@archive_options
@click.option("-k", "--key", "keys", multiple=True, metavar="KEY[=VALUE]",
              help="A matching key (PatientName=Doe*) or, without a value, a return key; KEY is a keyword, "
                   "(gggg,eeee), or a path into a sequence: Seq[0].Keyword=VALUE. Repeatable.")
@click.option("--keys-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Keys one per line, as for -k; '#' starts a comment. -k keys override them.")
@click.option("--level", type=click.Choice(LEVELS, case_sensitive=False),
              help="Query/Retrieve Level (default: PATIENT for --model patient, STUDY for study).")
@click.option("-m", "--model", type=click.Choice(["patient", "study", "worklist"]), default="study",
              show_default=True, help="Patient Root or Study Root Q/R, or Modality Worklist.")
@click.option("-P", "patient_root", is_flag=True, help="Same as --model patient (DCMTK's -P).")
@click.option("-S", "study_root", is_flag=True, help="Same as --model study (DCMTK's -S).")
@click.option("-W", "worklist", is_flag=True, help="Same as --model worklist (DCMTK's -W).")
@click.option("--format", "output_format", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="table, json (DICOM JSON, one array), ndjson or csv; auto: a table on a terminal, "
                   "else ndjson.")
@click.option("--write", "write_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also save each response as a DICOM file DIR/rsp0001.dcm, rsp0002.dcm, ...")
@click.option("--no-default-keys", is_flag=True,
              help="Send only the -k keys (and the level), not the usual return keys of the level.")
@click.option("--combined-datetime", is_flag=True,
              help="Match StudyDate+StudyTime ranges as one date-time range (asked for by extended "
                   "negotiation; PS3.4 C.2.2.2.5).")
@click.option("--station", metavar="AETITLE",
              help="Worklist: the Scheduled Station AE Title (in the Scheduled Procedure Step Sequence).")
@click.option("--modality", metavar="CODE", help="Worklist: the scheduled Modality (CT, MR, ...).")
@click.option("--date", "step_date", metavar="DATE",
              help="Worklist: the scheduled start date: today, YYYYMMDD or a range (20250101-20250131).")
@click.pass_obj
def findscu(state, connection, archive_dir, db_path, keys, keys_file, level, model, patient_root, study_root,
            worklist, output_format, write_dir, no_default_keys, combined_datetime, station, modality, step_date):
    """Query a peer with C-FIND, or the archive's own index with --db/--dir.

    Prints one row per match: the keys of the level (unless --no-default-keys)
    and every -k key. Matching follows PS3.4 C.2.2.2: '*' and '?' wild cards,
    ranges for dates and times (20250101-20250131, -1200), several UIDs
    separated by '\\'; names match regardless of case and accents in pacs's
    own index. Exit status 0 also when nothing matches, 1 when the peer answers
    with a failure status.

    \b
    Examples:
      pacs find 127.0.0.1 11112 -k PatientName='Doe^J*' -k StudyDate=20250101-
      pacs find --peer archive --level SERIES -k StudyInstanceUID=1.2.3 --format csv
      pacs find host 104 -m patient --level PATIENT -k PatientID=12345 --write responses/
      pacs find host 104 -W -k 'ScheduledProcedureStepSequence[0].Modality=CT'
      pacs find host 104 -W --station CT1 --date today
      pacs find --dir /srv/archive -k ModalitiesInStudy=MR --format json
    """
    from pydicom import config as pydicom_config

    from pacs_cli import output
    from pacs_cli.archive.index import DB_NAME
    from pacs_cli.dimse import find, identifiers

    _check_target(connection)
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE  # show values as they came
    chosen_name = _model(model, patient_root, study_root, worklist)
    chosen = find.MODELS[chosen_name]
    texts = identifiers.read_keys_file(keys_file) if keys_file else []
    texts += _worklist_shortcuts(chosen_name, station, modality, step_date)
    user_keys = identifiers.parse_keys(texts + [(text, "-k") for text in keys])
    identifier, columns = find.make_identifier(chosen, level, user_keys, defaults=not no_default_keys)
    outcome = find.Outcome()
    if connection is None:
        responses = find.find_local(db_path or archive_dir / DB_NAME, identifier, chosen, outcome, combined_datetime)
    else:
        responses = find.find(connection, identifier, chosen, outcome, combined_datetime)
    if write_dir:
        responses = find.saved(responses, write_dir, chosen)
    _print(responses, columns, output.resolve_format(output_format, sys.stdout.isatty()))
    if not state.quiet:
        click.echo(f"{outcome.matches} match(es) {outcome.where}", err=True)
    find.check(outcome)


def _check_target(connection) -> None:
    """A peer (HOST PORT or --peer) or the local index (--db/--dir), exactly one of them."""
    ctx = click.get_current_context()
    local = any(given_explicitly(ctx, name) for name in ("archive_dir", "db_path"))
    if connection is None and not local:
        raise click.UsageError("missing HOST and PORT (or --peer NAME, or --db/--dir for the local index)", ctx)
    if connection is not None and local:
        raise click.UsageError("give HOST PORT (or --peer) to query a peer, or --db/--dir to query "
                               "the archive's index, not both", ctx)


SCHEDULED_STEP = "ScheduledProcedureStepSequence[0]"


def _worklist_shortcuts(model: str, station, modality, step_date) -> list[tuple[str, str]]:
    """--station, --modality and --date as keys inside the Scheduled Procedure Step Sequence (PS3.4 K.6)."""
    given = {"ScheduledStationAETitle": station, "Modality": modality,
             "ScheduledProcedureStepStartDate": _step_date(step_date) if step_date else None}
    shortcuts = [(f"{SCHEDULED_STEP}.{keyword}={value}", f"--{option}")
                 for (keyword, value), option in zip(given.items(), ("station", "modality", "date")) if value]
    if shortcuts and model != "worklist":
        raise click.UsageError("--station, --modality and --date are worklist keys: add -W (--model worklist)")
    return shortcuts


def _step_date(text: str) -> str:
    """'today' in the local calendar, as a scheduler means it; anything else is passed on as a DA key."""
    import datetime

    return datetime.date.today().strftime("%Y%m%d") if text.lower() == "today" else text


def _model(model: str, patient_root: bool, study_root: bool, worklist: bool) -> str:
    """--model, or DCMTK's -P/-S/-W; two different ones are a usage error."""
    flags = [name for name, given in (("patient", patient_root), ("study", study_root), ("worklist", worklist))
             if given]
    typed = click.get_current_context().get_parameter_source("model").name == "COMMANDLINE"
    if len(flags) > 1 or (flags and typed and flags[0] != model):
        raise click.UsageError("give one information model: -P, -S, -W or --model")
    return flags[0] if flags else model


def _print(responses, columns, output_format: str) -> None:
    from pacs_cli import output
    from pacs_cli.dimse.identifiers import flatten

    if output_format == "json":
        chunks = output.dicom_json(responses)
    else:
        rows = output.select((flatten(ds) for ds in responses), columns)
        if output_format == "table":
            from rich.console import Console

            Console().print(output.table(columns, rows))
            return
        chunks = output.ndjson_lines(rows) if output_format == "ndjson" else output.csv_lines(columns, rows)
    for chunk in chunks:
        click.echo(chunk, nl=False)
