"""``pacs mwl-scp``: Modality Worklist and MPPS SCP over a directory of item files; and its management."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pacs_cli.commands._serving import serve
from pacs_cli.errors import UsageError
from pacs_cli.options import listener_options, run_options

LIST_COLUMNS = ("source", "patient_id", "patient_name", "accession_number", "requested_procedure_id",
                "scheduled_procedure_step_id", "scheduled_station_ae_title", "modality",
                "scheduled_procedure_step_start_date", "scheduled_procedure_step_start_time",
                "scheduled_procedure_step_status", "scheduled_procedure_step_description")
MPPS_COLUMNS = ("sop_instance_uid", "status", "calling_aet", "created_at", "updated_at")


@click.command()
@listener_options()
@click.option("--dir", "worklist_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("worklist"),
              show_default=True, envvar="PACS_WORKLIST_DIR", show_envvar=True,
              help="Worklist directory: item files (*.json, *.yaml with PyYAML, DCMTK *.wl), reread when they change.")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), envvar="PACS_WORKLIST_DB",
              show_envvar=True, help="Worklist and MPPS database (default: DIR/worklist.sqlite).")
@run_options
@click.option("--add", "add_files", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              metavar="FILE", help="Check an item file and copy it into DIR, then exit (repeatable).")
@click.option("--remove", "remove_accessions", multiple=True, metavar="ACCESSION",
              help="Delete the item file(s) of this accession number from DIR, then exit (repeatable).")
@click.option("--list", "list_items", is_flag=True, help="Print the scheduled steps with their status, then exit.")
@click.option("--list-mpps", is_flag=True, help="Print the performed procedure steps received, then exit.")
@click.pass_obj
def mwl_scp(state, listener, worklist_dir, db_path, ready_file, exit_after, idle_exit, events, audit_log,
            add_files, remove_accessions, list_items, list_mpps):
    """Serve a Modality Worklist and receive MPPS (Verification too), on one port.

    Items come from the files in --dir (format: README, "Worklist items");
    each Scheduled Procedure Step is one worklist entry. An MPPS N-CREATE
    marks the steps it names IN PROGRESS, N-SET COMPLETED or DISCONTINUED
    (PS3.4 F.7). --exit-after counts MPPS messages answered. --add,
    --remove, --list and --list-mpps manage the directory and exit.

    \b
    Examples:
      pacs mwl-scp --dir worklist --port 0 --ready-file port.txt --events events.jsonl &
      pacs mwl-scp --dir worklist --add ct-head.json
      pacs mwl-scp --dir worklist --list
      findscu -W -k 'ScheduledProcedureStepSequence[0].Modality=CT' localhost 11112
    """
    from pacs_cli.dimse.server import RunLimits
    from pacs_cli.worklist import items
    from pacs_cli.worklist.scp import WorklistSCP, WorklistSettings, open_store

    if add_files or remove_accessions or list_items or list_mpps:
        store = open_store(worklist_dir, db_path)
        try:
            try:
                for path in add_files:
                    target, datasets = items.add_file(path, worklist_dir)
                    click.echo(f"added {len(datasets)} item(s) as {target}", err=True)
                for accession in remove_accessions:
                    sources = store.sources_of(accession)
                    if not sources:
                        raise UsageError(f"no item with accession number {accession!r} in {worklist_dir}")
                    for path in items.remove_files(sources, worklist_dir, accession, store.accessions_in):
                        click.echo(f"removed {path}", err=True)
            except items.ItemError as exc:
                raise UsageError(str(exc)) from None
            store.sync()
            if list_items:
                _print(store.steps(), LIST_COLUMNS)
                for error in store.source_errors():
                    click.echo(f"warning: {error}", err=True)
            if list_mpps:
                _print(store.mpps_rows(), MPPS_COLUMNS)
        finally:
            store.close()
        return

    scp = WorklistSCP(listener, WorklistSettings(worklist_dir, db_path, events, audit_log))
    for error in scp.store.source_errors():
        click.echo(f"warning: {error}", err=True)

    serve(state, scp, "mwl-scp", f"worklist {Path(worklist_dir).resolve()}",
          RunLimits(exit_after, idle_exit, ready_file), audit_log,
          lambda: f"{scp.stats.associations} association(s), {scp.stats.stored} MPPS message(s) answered, "
                  f"{scp.stats.failed} refused")


def _print(rows, columns) -> None:
    from pacs_cli import output

    rows = list(output.select(({k: str(v) for k, v in row.items()} for row in rows), columns))
    if output.resolve_format("auto", sys.stdout.isatty()) == "table":
        from rich.console import Console

        Console().print(output.table(columns, rows))
        return
    for chunk in output.ndjson_lines(rows):
        click.echo(chunk, nl=False)
