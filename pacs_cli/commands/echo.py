"""``pacs echo``: the C-ECHO health check."""

import click

from pacs_cli.errors import OperationFailed
from pacs_cli.options import connection_options


@click.command()
@connection_options()
@click.option("-r", "--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of C-ECHOs, all on one association.")
@click.option("-i", "--interval", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Seconds between C-ECHOs.")
@click.pass_obj
def echo(state, connection, repeat, interval):
    """Verify a peer with C-ECHO and print each round-trip time.

    \b
    Examples:
      pacs echo 127.0.0.1 11112
      pacs echo --peer archive --repeat 5 --interval 1
      pacs echo -aec STORESCP host 104 && echo "PACS is up"
    """
    from pacs_cli.dimse import status
    from pacs_cli.dimse.echo import echo as run_echo

    failed = 0
    for result in run_echo(connection, repeat, interval):
        ok = status.is_success(result.status)
        failed += not ok
        if not state.quiet or not ok:
            click.echo(f"C-ECHO {result.number} to {connection.peer}: "
                       f"{status.describe(result.status)} in {result.seconds * 1000:.1f} ms")
    if failed:
        raise OperationFailed(f"{failed} of {repeat} C-ECHO requests failed")
