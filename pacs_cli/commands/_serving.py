"""What every SCP command does around its server: the ready line, the summary, audit failures."""

import click

from pacs_cli.errors import OperationFailed


def serve(state, scp, name: str, where: str, limits, audit_log, summary) -> None:
    """Run ``scp`` until it stops; ``summary()`` is the closing line, read once the server has stopped.

    An audit record that could not be written makes the run fail (exit 1): it is never dropped silently.
    """
    def ready(host, port):
        if not state.quiet:
            click.echo(f"pacs {name}: listening on {host}:{port} as {scp.listener.ae_title}, {where}")

    try:
        scp.run(limits, ready)
    finally:
        if not state.quiet:
            click.echo(f"pacs {name}: {summary()}")
    if scp.audit.failures:
        raise OperationFailed(f"{scp.audit.failures} audit records could not be written to {audit_log}")
