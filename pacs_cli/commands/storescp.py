"""``pacs storescp``: the storage SCP in front of the archive."""

from pathlib import Path

import click

from pacs_cli.commands._serving import serve
from pacs_cli.options import archive_options, listener_options, run_options


def _status_code(text: str) -> int:
    try:
        code = int(text, 16)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a hexadecimal status such as 0xA700") from None
    if not 0 <= code <= 0xFFFF:
        raise click.BadParameter(f"{text} is not a 16-bit status")
    return code


@click.command()
@listener_options()
@archive_options
@click.option("--layout", type=click.Choice(["hierarchical", "flat"]), default="hierarchical",
              show_default=True, help="PATIENT/STUDY/SERIES/INSTANCE.dcm, or INSTANCE.dcm in one folder.")
@click.option("--path-template", metavar="TEMPLATE",
              help="Path from attribute keywords, e.g. '{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm'.")
@click.option("--on-duplicate", type=click.Choice(["reject", "replace", "ignore"]), default="ignore",
              show_default=True, envvar="PACS_ON_DUPLICATE", show_envvar=True,
              help="A SOP Instance UID already stored: answer 0x0111 and keep the first copy, "
                   "overwrite it, or answer success and keep the first copy.")
@click.option("--fsync", is_flag=True, help="fsync each file and its folder before answering.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, metavar="N",
              help="Serve the port from N processes (one per core), each taking whole associations: "
                   "parallel associations use more than one core. Not with --exit-after or --idle-exit.")
@run_options
@click.option("--exec-on-store", metavar="COMMAND",
              help="Run COMMAND for each stored file, without blocking the association; placeholders: "
                   "{path} {calling_aet} {study_uid} {series_uid} {sop_instance_uid} {sop_class_uid}.")
@click.option("--fault-status", callback=lambda ctx, param, value: value and _status_code(value),
              metavar="HEX", help="Fault injection: answer every C-STORE with this status, store nothing.")
@click.option("--fault-delay", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="Fault injection: wait this long before each C-STORE response.")
@click.option("--fault-abort-after", type=click.IntRange(min=0), metavar="N",
              help="Fault injection: abort each association after N objects.")
@click.option("--no-query", is_flag=True,
              help="Do not answer C-FIND, C-MOVE and C-GET (Patient Root and Study Root Query/Retrieve) "
                   "on this port.")
@click.option("--max-results", type=click.IntRange(min=1), metavar="N",
              help="C-FIND: send at most N matches, then answer 0xA700 (Out of Resources) if there are more.")
@click.option("--worklist", "worklist_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also serve Modality Worklist and MPPS from the item files in DIR, as pacs mwl-scp does "
                   "(one process plays RIS and PACS).")
@click.pass_obj
def storescp(state, listener, archive_dir, db_path, layout, path_template, on_duplicate, fsync, workers,
             ready_file, exit_after, idle_exit, events, audit_log, exec_on_store, fault_status, fault_delay,
             fault_abort_after, no_query, max_results, worklist_dir):
    """Receive DICOM objects into an archive with a SQLite index.

    Files are stored as received (no decode and re-encode), by default under
    ./archive/PATIENT/STUDY/SERIES/INSTANCE.dcm, indexed in ./archive/index.sqlite.
    Any called AE title is accepted unless --accept-called-aet is given.
    C-MOVE destinations are the config file's [peers.NAME] entries, by ae_title.

    \b
    Examples:
      pacs storescp
      pacs storescp --port 0 --ready-file port.txt --exit-after 10 --events events.jsonl &
      pacs storescp -aet ARCHIVE --accept-called-aet ARCHIVE --allow-ip 10.0.0.0/8 --audit-log audit.jsonl
    """
    from pacs_cli.scp import StorageSCP, StoreSettings
    from pacs_cli.dimse.server import RunLimits
    from pacs_cli.dimse.store import Faults

    settings = StoreSettings(archive_dir, db_path, path_template or layout, on_duplicate, fsync,
                             events, exec_on_store, Faults(fault_status, fault_delay, fault_abort_after),
                             query=not no_query, max_results=max_results, audit_log=audit_log,
                             destinations={peer.ae_title: peer for peer in state.config.peers.values()},
                             worklist=worklist_dir)
    limits = RunLimits(exit_after, idle_exit, ready_file)
    if workers > 1:
        from pacs_cli.workers import WorkerPool

        if exit_after is not None or idle_exit is not None:
            raise click.UsageError("--exit-after and --idle-exit count one process's associations: "
                                   "use them with --workers 1")
        pool = WorkerPool(listener, settings, workers)
        serve(state, pool, "storescp", f"archive {pool.root}, {workers} workers", limits, audit_log,
              pool.stats.summary)
        return
    scp = StorageSCP(listener, settings)
    serve(state, scp, "storescp", f"archive {scp.archive.root}", limits, audit_log, scp.stats.summary)
