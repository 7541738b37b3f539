"""``pacs getscu``: C-GET from a peer, the instances coming back over the same association into a directory.

Thin on purpose: the identifier is built as for ``pacs movescu`` (:mod:`pacs_cli.commands.move`), the
C-GET and the storage SCP role run in :mod:`pacs_cli.dimse.retrieve`.
"""

from __future__ import annotations

from pathlib import Path

import click

from pacs_cli.commands.move import make_identifier, progress_callback, report, retrieve_options
from pacs_cli.options import connection_options


@click.command()
@connection_options()
@retrieve_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory the instances are written into, as SOPINSTANCEUID.dcm.")
@click.option("--ask-classes", is_flag=True,
              help="First ask the peer with C-FIND which SOP classes the studies hold (SOPClassesInStudy) "
                   "and propose those; falls back on the common ones when it does not say.")
@click.pass_obj
def getscu(state, connection, keys, keys_file, level, model, patient_root, study_root, out_dir, ask_classes):
    """Retrieve with C-GET: the peer sends the instances back over this association.

    Each instance is written as received (no decode and re-encode) into
    --out as SOPINSTANCEUID.dcm. The storage SOP classes are proposed in the
    SCP role, at most 127 presentation contexts: the common classes
    uncompressed, then the image classes with the common compressed transfer
    syntaxes; or, with --ask-classes, the classes the peer says the studies
    hold. Prints the completed/failed/warning counts at the end; exit status
    1 when a sub-operation failed or the peer refused the retrieve.

    \b
    Examples:
      pacs getscu pacs.example 104 -aec PACS -k StudyInstanceUID=1.2.3 --out study/
      pacs getscu --peer archive -k StudyInstanceUID=1.2.3 -k SeriesInstanceUID=1.2.3.4 --out series/
      pacs getscu host 104 -P -k PatientID=12345 --ask-classes --out patient/
    """
    import logging

    from pacs_cli.dimse import retrieve

    chosen, identifier = make_identifier(retrieve.GET_MODELS, keys, keys_file, level, model, patient_root,
                                         study_root)
    sop_classes = None
    if ask_classes:
        sop_classes = retrieve.sop_classes_held(connection, identifier, chosen) or None
        if sop_classes is None:
            logging.getLogger("pacs_cli.retrieve").warning(
                "%s did not say which SOP classes the studies hold: proposing the common ones", connection.peer)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.UsageError(f"cannot create --out directory {out_dir}: {exc.strerror}") from None
    receiver = retrieve.Receiver(out_dir)
    outcome = retrieve.RetrieveOutcome("get")
    with progress_callback("C-GET", state.quiet) as on_pending:
        retrieve.get(connection, identifier, chosen, receiver, outcome, sop_classes, on_pending)
    report(state, outcome, f"; {receiver.written} file(s) written to {out_dir}")
    retrieve.check_retrieve(outcome)
