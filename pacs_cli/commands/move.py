"""``pacs movescu``: C-MOVE from a peer to a destination AE, optionally receiving into a local archive.

Thin on purpose: keys are parsed by :mod:`pacs_cli.dimse.identifiers` (the -k syntax of ``pacs find``),
the C-MOVE runs in :mod:`pacs_cli.dimse.retrieve`, ``--store`` runs :class:`pacs_cli.scp.StorageSCP`
for the duration of the move. The helpers here are shared with ``pacs getscu``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from pacs_cli.options import AE_TITLE, connection_options

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# The deepest unique key given sets the level when neither --level nor QueryRetrieveLevel does.
UNIQUE_KEY_LEVELS = (("SOPInstanceUID", "IMAGE"), ("SeriesInstanceUID", "SERIES"),
                     ("StudyInstanceUID", "STUDY"), ("PatientID", "PATIENT"))


def retrieve_options(func):
    """-k, --keys-file, --level, --model/-P/-S: what to retrieve, as ``pacs find`` asks it."""
    for decorator in reversed([
        click.option("-k", "--key", "keys", multiple=True, metavar="KEY=VALUE",
                     help="A key of the identifier (StudyInstanceUID=1.2.3), in pacs find's -k syntax. "
                          "Repeatable."),
        click.option("--keys-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Keys one per line, as for -k; '#' starts a comment. -k keys override them."),
        click.option("--level", type=click.Choice(LEVELS, case_sensitive=False),
                     help="Query/Retrieve Level (default: that of the deepest unique key given: "
                          "SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID, PatientID)."),
        click.option("-m", "--model", type=click.Choice(["patient", "study"]), default="study",
                     show_default=True, help="Patient Root or Study Root Q/R."),
        click.option("-P", "patient_root", is_flag=True, help="Same as --model patient (DCMTK's -P)."),
        click.option("-S", "study_root", is_flag=True, help="Same as --model study (DCMTK's -S)."),
    ]):
        func = decorator(func)
    return func


def make_identifier(models, keys, keys_file, level, model, patient_root, study_root):
    """(model, identifier) from the options of :func:`retrieve_options`; ``models``: retrieve.MOVE/GET_MODELS."""
    from pacs_cli.dimse import find, identifiers

    flags = [name for name, given in (("patient", patient_root), ("study", study_root)) if given]
    typed = click.get_current_context().get_parameter_source("model").name == "COMMANDLINE"
    if len(flags) > 1 or (flags and typed and flags[0] != model):
        raise click.UsageError("give one information model: -P, -S or --model")
    chosen = models[flags[0] if flags else model]
    texts = identifiers.read_keys_file(keys_file) if keys_file else []
    user_keys = identifiers.parse_keys(texts + [(text, "-k") for text in keys])
    if not user_keys:
        raise click.UsageError("give the keys of what to retrieve, e.g. -k StudyInstanceUID=1.2.3")
    if level is None and not any(k.name == "QueryRetrieveLevel" for k in user_keys):
        given = {k.name for k in user_keys if k.value.strip()}
        level = next((lvl for keyword, lvl in UNIQUE_KEY_LEVELS if keyword in given and lvl in chosen.levels),
                     None)
    identifier, _ = find.make_identifier(chosen, level, user_keys, defaults=False)
    return chosen, identifier


@contextlib.contextmanager
def progress_callback(description: str, quiet: bool):
    """(on_pending, on_stored): feed a progress bar from the pending counts; a no-op off a terminal."""
    from pacs_cli.progress import transfer_progress

    with transfer_progress(description, quiet) as bar:
        seen = {"started": False, "done": 0}

        def on_pending(outcome):
            if not seen["started"] and outcome.total is not None:
                bar.start(outcome.total, 0)
                seen["started"] = True
            if seen["started"] and outcome.done > seen["done"]:
                bar.advance(outcome.done - seen["done"])
                seen["done"] = outcome.done

        yield on_pending
        bar.clear()


def report(state, outcome, extra: str = "") -> None:
    if not state.quiet:
        click.echo(outcome.summary() + extra, err=True)


@click.command()
@connection_options()
@retrieve_options
@click.option("--dest", "destination", type=AE_TITLE, metavar="AETITLE",
              help="Move Destination: the AE title the peer sends to (it must know its host and port). "
                   "Default with --store: our own -aet.")
@click.option("--store", is_flag=True,
              help="Receive the instances here: run a storage SCP on --store-port as our -aet for the "
                   "duration of the move, writing into --out.")
@click.option("--store-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Port of the --store SCP; the peer must have it configured for our AE title.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="With --store: the archive the instances go into (files and "
                                      "index.sqlite).")
@click.pass_obj
def movescu(state, connection, keys, keys_file, level, model, patient_root, study_root, destination, store,
            store_port, out_dir):
    """Retrieve with C-MOVE: ask a peer to send instances to a destination AE.

    The peer opens its own association to the destination, which it must
    know by AE title (host and port configured on the peer). With --store,
    that destination is this command: a storage SCP runs on --store-port
    as our -aet, storing into the archive --out (as pacs storescp does).
    Prints the completed/failed/warning counts at the end; exit status 1
    when a sub-operation failed or the peer refused the move.

    \b
    Examples:
      pacs movescu pacs.example 104 -aec PACS --dest WORKSTATION -k StudyInstanceUID=1.2.3
      pacs movescu --peer archive --store --store-port 11113 --out moved/ -k StudyInstanceUID=1.2.3
      pacs movescu host 104 -P --dest DEST -k PatientID=12345
      pacs movescu host 104 --dest DEST -k StudyInstanceUID=1.2.3 -k SeriesInstanceUID=1.2.3.4
    """
    from pacs_cli.dimse import retrieve

    if store and store_port is None:
        raise click.UsageError("--store needs --store-port (the port the peer knows for our AE title)")
    if not store and given(click.get_current_context(), "store_port", "out_dir"):
        raise click.UsageError("--store-port and --out go with --store")
    destination = destination or (connection.calling_aet if store else None)
    if destination is None:
        raise click.UsageError("give --dest AETITLE (where the peer sends), or --store to receive here")
    chosen, identifier = make_identifier(retrieve.MOVE_MODELS, keys, keys_file, level, model, patient_root,
                                         study_root)
    outcome = retrieve.RetrieveOutcome("move")
    receiving = _receiving(connection, store_port, out_dir) if store else contextlib.nullcontext()
    with receiving as scp, progress_callback("C-MOVE", state.quiet) as on_pending:
        retrieve.move(connection, identifier, chosen, destination, outcome, on_pending)
    stored = f"; {scp.stats.stored} stored in {scp.archive.root}" if store else ""
    report(state, outcome, stored)
    here = f"host {outcome.local_address or 'this host'}, port {store_port}" if store else "its host and port"
    retrieve.check_retrieve(outcome, f"configure the move destination on {connection.peer}: AE title "
                                     f"{destination}, {here}")


def given(ctx, *names) -> bool:
    from pacs_cli.options import given_explicitly

    return any(given_explicitly(ctx, name) for name in names)


@contextlib.contextmanager
def _receiving(connection, port: int, out_dir: Path):
    """A storage SCP as our -aet on ``port``, storing into ``out_dir``, for the ``with`` block."""
    from pacs_cli.dimse.store import Faults
    from pacs_cli.options import Listener
    from pacs_cli.scp import StorageSCP, StoreSettings

    listener = Listener("0.0.0.0", port, connection.calling_aet, connection.timeouts, connection.max_pdu,
                        max_associations=4)
    settings = StoreSettings(out_dir, None, "hierarchical", "replace", False, None, None, Faults(), query=False)
    scp = StorageSCP(listener, settings)
    try:
        scp.server.start()
        yield scp
    finally:
        scp.server.stop(grace=connection.timeouts.dimse)
        scp.runner.close()
        scp.events.close()
        scp.audit.close()
        scp.archive.close()
