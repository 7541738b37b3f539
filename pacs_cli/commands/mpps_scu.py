"""``pacs mpps-scu create|set``: report a Modality Performed Procedure Step (PS3.4 F.7) to an MPPS SCP."""

from __future__ import annotations

import click

from pacs_cli.options import AE_TITLE, connection_options

REASONS = ("110500", "110501", "110502", "110503", "110504", "110505", "110506", "110507", "110508", "110509",
           "110510", "110511", "110512", "110513", "110514", "110515", "110516")  # dimse.mpps.DISCONTINUATION_REASONS


@click.group()
def mpps_scu():
    """Report a performed procedure step: N-CREATE it, then N-SET it final.

    \b
    Examples:
      uid=$(pacs mpps-scu create host 104 --from-worklist -k AccessionNumber=A1 --station-aet CT1 -q)
      pacs mpps-scu create host 104 --patient-id P1 --accession A1 --modality CT --station-aet CT1
      pacs mpps-scu set "$uid" host 104 --status COMPLETED --series-from sent/
      pacs mpps-scu set "$uid" host 104 --status DISCONTINUED --reason 110514
    """


@mpps_scu.command()
@connection_options()
@click.option("--from-worklist", is_flag=True,
              help="Query the peer's worklist first (C-FIND with the -k keys); exactly one step must match.")
@click.option("-k", "--key", "keys", multiple=True, metavar="KEY=VALUE",
              help="A worklist key for --from-worklist, as in `pacs find -W` (repeatable).")
@click.option("--patient-id", default="", help="Patient ID.")
@click.option("--patient-name", default="", help="Patient's name, Family^Given.")
@click.option("--birth-date", default="", metavar="YYYYMMDD", help="Patient's birth date.")
@click.option("--sex", default="", type=click.Choice(["", "M", "F", "O"]), help="Patient's sex.")
@click.option("--accession", default="", help="Accession number of the imaging service request.")
@click.option("--study-uid", default="", help="Study Instance UID (default: from the worklist, else a new one).")
@click.option("--requested-procedure-id", default="", help="Requested Procedure ID.")
@click.option("--procedure-description", default="", help="Requested Procedure Description.")
@click.option("--step-id", default="", help="Scheduled Procedure Step ID performed.")
@click.option("--step-description", default="", help="Scheduled Procedure Step Description.")
@click.option("-m", "--modality", default="", help="Modality (CT, MR, ...); required without --from-worklist.")
@click.option("--station-aet", type=AE_TITLE, help="Performed Station AE Title (default: the worklist's "
                                                   "Scheduled Station AE Title, else -aet).")
@click.option("--station-name", default="", help="Performed Station Name.")
@click.option("--pps-id", default="", help="Performed Procedure Step ID (default: from the time).")
@click.option("--pps-description", default="", help="Performed Procedure Step Description.")
@click.option("--uid", "sop_instance_uid", metavar="UID", help="Our MPPS SOP Instance UID (default: a new one).")
@click.pass_obj
def create(state, connection, from_worklist, keys, patient_id, patient_name, birth_date, sex, accession, study_uid,
           requested_procedure_id, procedure_description, step_id, step_description, modality, station_aet,
           station_name, pps_id, pps_description, sop_instance_uid):
    """N-CREATE a performed procedure step IN PROGRESS; print its SOP Instance UID.

    \b
    Examples:
      uid=$(pacs mpps-scu create host 104 --from-worklist -k AccessionNumber=A1 -q)
      pacs mpps-scu create host 104 --patient-id P1 --accession A1 --step-id S1 -m CT --station-aet CT1
    """
    from pacs_cli.dimse import mpps

    options = dict(patient_id=patient_id, patient_name=patient_name, patient_birth_date=birth_date, patient_sex=sex,
                   accession_number=accession, study_instance_uid=study_uid,
                   requested_procedure_id=requested_procedure_id,
                   requested_procedure_description=procedure_description, scheduled_step_id=step_id,
                   scheduled_step_description=step_description, modality=modality, station_aet=station_aet or "",
                   station_name=station_name, pps_id=pps_id, pps_description=pps_description)
    if from_worklist:
        step = mpps.step_from_worklist(_worklist_item(connection, keys), **options)
    elif keys:
        raise click.UsageError("-k keys go with --from-worklist")
    else:
        step = mpps.Step(**options)
    if not step.station_aet:
        step = mpps.Step(**{**vars(step), "station_aet": connection.calling_aet})
    result = mpps.create(connection, mpps.create_dataset(step), sop_instance_uid)
    mpps.check(result, "N-CREATE", connection)
    click.echo(result.uid)
    if not state.quiet:
        click.echo(f"MPPS {result.uid} IN PROGRESS on {connection.peer}", err=True)


def _worklist_item(connection, keys):
    from pacs_cli.dimse import find, identifiers
    from pacs_cli.errors import OperationFailed

    model = find.MODELS["worklist"]
    identifier, _ = find.make_identifier(model, None, identifiers.parse_keys((text, "-k") for text in keys))
    outcome = find.Outcome()
    matches = list(find.find(connection, identifier, model, outcome))
    find.check(outcome)
    if len(matches) != 1:
        raise OperationFailed(f"{len(matches)} worklist steps match on {connection.peer}: need exactly one",
                              "narrow the -k keys (AccessionNumber=..., "
                              "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID=...)")
    return matches[0]


@mpps_scu.command(name="set")
@click.argument("uid")
@connection_options()
@click.option("--status", "pps_status", required=True, type=click.Choice(["COMPLETED", "DISCONTINUED"],
                                                                          case_sensitive=False),
              help="The final status.")
@click.option("--series-from", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="The files sent: their headers (never pixel data) give the Performed Series Sequence.")
@click.option("--series", "series_uids", multiple=True, metavar="UID",
              help="A Series Instance UID performed, without its instances (repeatable).")
@click.option("--retrieve-aet", type=AE_TITLE, help="Where the series can be retrieved from.")
@click.option("--reason", type=click.Choice(REASONS), metavar="CODE",
              help="Discontinuation reason, a PS3.16 CID 9300 code (110513: unspecified; 110514: wrong "
                   "worklist entry; 110501: equipment failure).")
@click.pass_obj
def set_(state, uid, connection, pps_status, series_from, series_uids, retrieve_aet, reason):
    """N-SET a performed procedure step COMPLETED or DISCONTINUED, with the series performed.

    \b
    Examples:
      pacs mpps-scu set 1.2.3.4 host 104 --status COMPLETED --series-from sent/
      pacs mpps-scu set 1.2.3.4 host 104 --status DISCONTINUED --reason 110513
    """
    from pathlib import Path

    from pacs_cli.dimse import mpps

    series = mpps.performed_series(Path(series_from) if series_from else None, series_uids, retrieve_aet or "")
    result = mpps.update(connection, uid, mpps.final_dataset(pps_status, series, reason))
    mpps.check(result, "N-SET", connection)
    if not state.quiet:
        click.echo(f"MPPS {uid} {pps_status.upper()} on {connection.peer} ({len(series)} series)", err=True)


def _subcommands_take_verbosity():
    from pacs_cli.cli import _with_verbosity

    for command in mpps_scu.commands.values():
        _with_verbosity(command)


_subcommands_take_verbosity()
