"""``pacs storescu``: send DICOM files to a storage SCP.

Thin on purpose: the work is in :mod:`pacs_cli.dimse.send`. pydicom, pynetdicom and rich are imported
inside the function so that ``pacs --help`` stays fast.

Parallel associations run in processes by default (``--parallel thread`` is kept, hidden, for
measuring). bench/store_throughput.py, 2,000 files of 9.5 KB to DCMTK's storescp on 2 CPUs, files/s,
median of 3, two runs on a shared machine: 1 association 195 / 153; 2 associations 285 / 248 in
processes against 267 / 231 in threads; 4 associations 317 / 319 in processes against 303 / 327 in
threads. On 2 cores the two are within noise: an association spends most of a file's 5 ms in
pynetdicom's 1 ms polling sleeps, not holding the GIL, and the receiver shares the CPUs. Processes are
the default because they are never behind at 2 associations here and are the only way past one
interpreter's lock on more cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from pacs_cli.errors import OperationFailed
from pacs_cli.options import connection_options


class PathsAfterPeer(click.Command):
    """With ``--peer`` (or PACS_PEER), every positional argument is a PATH, none is HOST or PORT.

    ``connection_options`` declares HOST and PORT as the first two positional arguments, which would
    swallow the first two paths of ``pacs storescu --peer archive a.dcm b.dcm``.
    """

    def parse_args(self, ctx, args):
        if not _peer_given(ctx, args):
            return super().parse_args(ctx, args)
        saved = self.params
        self.params = [p for p in saved if p.name not in ("host", "port")]
        try:
            return super().parse_args(ctx, args)
        finally:
            self.params = saved
            ctx.params.setdefault("host", None)
            ctx.params.setdefault("port", None)


def _peer_given(ctx, args) -> bool:
    options = args[:args.index("--")] if "--" in args else args
    if any(arg == "--peer" or arg.startswith("--peer=") for arg in options):
        return True
    return bool(os.environ.get("PACS_PEER") or (ctx.default_map or {}).get("peer"))


def _marking(suffix, directory, name):
    from pacs_cli.dimse.send import Marking

    if suffix and directory:
        raise click.UsageError(f"give --on-{name}-rename or --on-{name}-move, not both")
    if suffix is not None and not suffix.strip(". "):
        raise click.UsageError(f"--on-{name}-rename needs a suffix such as .done")
    return Marking(suffix, directory) if suffix or directory else None


@click.command(cls=PathsAfterPeer)
@connection_options()
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@click.option("-0", "--null", "null_separated", is_flag=True,
              help="Paths read from '-' are separated by NUL bytes (find -print0), not newlines.")
@click.option("--recurse/--no-recurse", default=True, show_default=True,
              help="Send the files in subdirectories of a directory PATH too.")
@click.option("-a", "--associations", type=click.IntRange(1, 32), default=1, show_default=True,
              help="Associations in parallel, each in its own process; files are shared out by size.")
@click.option("--parallel", type=click.Choice(["process", "thread"]), default="process", hidden=True,
              help="Run parallel associations in processes (default) or threads (for measurements).")
@click.option("--window", type=click.IntRange(1, 64), default=8, show_default=True, metavar="N",
              help="C-STOREs outstanding at once when the peer accepts an asynchronous operations window "
                   "(PS3.7 D.3.3.3; pacs storescp does, DCMTK's storescp does not); 1 waits for each response.")
@click.option("--retries", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Attempts after a connection failure, transient rejection, abort or timeout, "
                   "with exponential backoff; only files not confirmed are sent again.")
@click.option("--retry-delay", type=click.FloatRange(0, 600), default=1.0, show_default=True, metavar="SECONDS",
              help="First backoff; it doubles with each failed attempt in a row (at most 60 s).")
@click.option("--decompress", is_flag=True,
              help="When the peer refuses a compressed file's transfer syntax but accepts an uncompressed "
                   "one, decompress it (RLE needs numpy; JPEG, JPEG-LS and JPEG 2000 need pacs-cli[codecs]).")
@click.option("--ts", "targets", multiple=True, type=click.Choice(["explicit", "implicit"]),
              help="Uncompressed transfer syntaxes to convert to when a file's own is refused, preferred "
                   "first (repeatable; default: explicit, then implicit VR little endian).")
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path),
              help="Record each instance the peer confirmed (fsync'd JSON lines); files already recorded "
                   "for this peer, unchanged, are not sent again.")
@click.option("--on-success-rename", metavar="SUFFIX", help="Rename each file the peer stored to NAME+SUFFIX.")
@click.option("--on-failure-rename", metavar="SUFFIX",
              help="Rename each file that failed or was skipped (not DICOM) to NAME+SUFFIX.")
@click.option("--on-success-move", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Move each file the peer stored into DIR.")
@click.option("--on-failure-move", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Move each file that failed or was skipped into DIR.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JSON report: counts, and per file its UIDs, transfer syntax, status and error.")
@click.option("--format", "output_format", type=click.Choice(["none", "ndjson"]), default="none",
              show_default=True, help="ndjson: one JSON line per file on stdout as it completes.")
@click.pass_obj
def storescu(state, connection, paths, null_separated, recurse, associations, parallel, window, retries, retry_delay,
             decompress, targets, journal, on_success_rename, on_failure_rename, on_success_move,
             on_failure_move, report, output_format):
    """Send DICOM files to a storage SCP with C-STORE.

    PATH is a file, a directory (its subdirectories too, unless --no-recurse),
    a glob pattern ('**' recurses), or '-' for paths on stdin. Files that are
    not DICOM are skipped and counted. Each file is sent in its own transfer
    syntax, from disk, unchanged; when the peer refuses it, the file is
    converted to an uncompressed one (--ts), decompressed with --decompress,
    or reported with the reason. Raw datasets (no file meta) are decoded and
    sent in the transfer syntax they were written in. Exit status 0 means every file was stored,
    with success or a warning status; 1 that some file failed; 3 that the peer
    could not be reached or associated at all.

    As a spool sender, run it again and again: --journal skips what the peer
    already confirmed, and the --on-success-*/--on-failure-* options move
    files out of the spool (renamed files are not picked up again).

    \b
    Examples:
      pacs storescu 127.0.0.1 11112 study/
      pacs storescu --peer archive --associations 4 --retries 5 /data/export
      find /data -name '*.dcm' -print0 | pacs storescu host 11112 -0 -
      pacs storescu host 104 spool/ --journal sent.jsonl --on-success-rename .done
      pacs storescu host 104 '**/*.dcm' --report report.json --format ndjson | jq .status
    """
    if not decompress:
        state.without_numpy()
    from pacs_cli import output, progress
    from pacs_cli.dimse.send import TARGETS, SendOptions, StoreSCU

    if not paths:
        raise click.UsageError("nothing to send: give at least one PATH (or '-' to read paths from stdin)")
    options = SendOptions(
        recurse=recurse, associations=associations, parallel=parallel, window=window, retries=retries,
        retry_delay=retry_delay, decompress=decompress,
        targets=tuple(TARGETS[t] for t in dict.fromkeys(targets)) or SendOptions.targets,
        journal=journal, on_success=_marking(on_success_rename, on_success_move, "success"),
        on_failure=_marking(on_failure_rename, on_failure_move, "failure"),
        null_separated=null_separated, keep_results=report is not None)
    with progress.transfer_progress("sending", state.quiet) as bar:
        sender = StoreSCU(connection, options, _Reporter(bar, output_format, output))
        try:
            sender.run(paths, click.get_binary_stream("stdin"))
        finally:
            bar.clear()
            if report:
                output.write_json(report, sender.report())
            if not state.quiet:
                for line in output.store_summary(sender.summary):
                    click.echo(line, err=True)
    if sender.unreachable:
        raise sender.unreachable
    if sender.summary.failures:
        raise OperationFailed(f"{sender.summary.failures} file(s) not stored"
                              + ("" if report else " (--report FILE lists them)"))


class _Reporter:
    """Streams each result: a JSON line on stdout with --format ndjson, a step of the progress bar."""

    def __init__(self, bar, output_format: str, output):
        self.bar, self.ndjson, self.output = bar, output_format == "ndjson", output
        self.sending = False

    def planned(self, files: int, size: int) -> None:
        self.sending = True
        self.bar.start(files, size)

    def result(self, result) -> None:
        if self.ndjson:
            click.echo(self.output.ndjson(result.record()))
        if self.sending:
            self.bar.advance(1, result.size)
