"""``pacs dump``: list DICOM files like DCMTK's dcmdump, or as DICOM JSON."""

from pathlib import Path

import click


class TagList(click.ParamType):
    """``--tags`` values: keywords and ``(gggg,eeee)`` tags, comma-separated; checked while parsing."""

    name = "TAGS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from pacs_cli.errors import UsageError
        from pacs_cli.listing import parse_tags  # imports pydicom: only when --tags is given

        try:
            return tuple(parse_tags(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(path_type=Path))
@click.option("-r", "--recursive", is_flag=True, help="Dump every file under the directories given.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="dcmdump-style text, or the DICOM JSON model (PS3.18 Annex F).")
@click.option("--tags", multiple=True, type=TagList(), metavar="TAG[,TAG...]",
              help="Only these elements, by keyword, (gggg,eeee) or ggggeeee, also inside sequences; "
                   "repeatable.")
@click.option("--full", is_flag=True, help="Show long values in full instead of cutting them at 64 characters.")
@click.option("--pixel-data", is_flag=True,
              help="Read Pixel Data too (slower on large files); otherwise it is described, not loaded.")
@click.option("--bulk", is_flag=True,
              help="JSON: binary values inline as base64 instead of a BulkDataURI; implies --pixel-data.")
def dump(paths, recursive, output_format, tags, full, pixel_data, bulk):
    """List the elements of DICOM files like dcmdump, or as DICOM JSON.

    Text follows dcmdump: tag, VR, value, then length, VM and keyword, file
    meta (group 0002) first, sequence items indented. With --format json, a
    single file PATH gives its DICOM JSON object; several files or a directory
    give an array of objects. Bulk data (Pixel Data, binary values over 1 KiB)
    becomes a BulkDataURI pointing into the file unless --bulk. A file that
    cannot be read is reported on stderr, the others are still dumped, and the
    exit status is 1.

    \b
    Examples:
      pacs dump image.dcm
      pacs dump -r --tags PatientName,StudyDate,0020000D /archive/incoming
      pacs dump --tags '(0010,0020)' --format json image.dcm
      pacs dump --format json image.dcm | jq '."00100010".Value[0].Alphabetic'
    """
    from pacs_cli import listing

    if bulk and output_format != "json":
        raise click.UsageError("--bulk applies only to --format json")
    spec = listing.DumpSpec(format=output_format, tags=frozenset(tag for group in tags for tag in group),
                            full=full, pixel_data=pixel_data, bulk=bulk, recursive=recursive)
    for chunk in listing.dump(paths, spec):
        click.echo(chunk, nl=False)
