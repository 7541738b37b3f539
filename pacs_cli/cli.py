"""The ``pacs`` root group: global options, lazy subcommands, and the one place errors become exit codes."""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from pacs_cli import __version__, config, logs, startup
from pacs_cli.errors import EXIT_INTERRUPTED, PacsError

# name -> "module:attribute"; modules import nothing heavy at top level so `pacs --help` stays fast.
COMMANDS = {
    "echo": "pacs_cli.commands.echo:echo",
    "dump": "pacs_cli.commands.dump:dump",
    "index": "pacs_cli.commands.index:index",
    "storescp": "pacs_cli.commands.storescp:storescp",
    "storescu": "pacs_cli.commands.storescu:storescu",
    "findscu": "pacs_cli.commands.find:findscu",
    "mwl-scp": "pacs_cli.commands.mwl_scp:mwl_scp",
    "mpps-scu": "pacs_cli.commands.mpps_scu:mpps_scu",
    "movescu": "pacs_cli.commands.move:movescu",
    "getscu": "pacs_cli.commands.get:getscu",
}
ALIASES: dict[str, str] = {"find": "findscu"}
# Commands that never decode or encode pixel data: in a process of their own they load pydicom without
# numpy (see startup.keep_out); storescu decides by its --decompress (State.without_numpy). Every command goes
# without requests.
PIXEL_FREE = {"echo", "findscu", "storescp", "movescu", "getscu", "mwl-scp", "mpps-scu", "index"}
# What main() hands the root group: this process runs one command, then exits.
OWN_PROCESS = object()

log = logging.getLogger("pacs_cli")


@dataclass
class State:
    """What the root group hands every subcommand through ``ctx.obj``."""

    verbose: int
    quiet: bool
    config: config.Config
    own_process: bool = False  # run by main(): the process ends with the command

    def without_numpy(self) -> None:
        """For a command that learns from its options that it handles no pixel data (storescu without
        --decompress): pydicom loads without numpy, as for the PIXEL_FREE commands."""
        if self.own_process:
            startup.keep_out("numpy")


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (or its help is asked for)."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(ALIASES.get(name, name))
        if target is None:
            return None
        module, attribute = target.split(":")
        return _with_verbosity(getattr(importlib.import_module(module), attribute))

    def main(self, args=None, prog_name=None, **extra):
        """Run, then turn every outcome into an exit code and at most one line on stderr."""
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(encoding="utf-8", errors="replace")
        extra["standalone_mode"] = False
        try:
            result = super().main(args=args, prog_name=prog_name, **extra)
            code = result if isinstance(result, int) else 0
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except (click.Abort, KeyboardInterrupt):
            click.echo("Interrupted.", err=True)
            code = EXIT_INTERRUPTED
        except PacsError as exc:
            _report(exc)
            code = exc.exit_code
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            _report(exc, unexpected=True)
            code = 1
        if extra.get("obj") is OWN_PROCESS:
            # The interpreter's last collections at exit walk every object the imports made (pydicom's
            # dictionaries, pynetdicom's contexts): ~30 ms of a 0.34 s `pacs storescu`. Frozen, they are
            # skipped; what refers to nothing in a cycle is still freed, and files were closed by now.
            gc.freeze()
        sys.exit(code)

    def format_commands(self, ctx, formatter):
        """List commands without importing each one: the first docstring line is all we need."""
        rows = [(name, self.get_command(ctx, name).get_short_help_str(limit=70)) for name in self.list_commands(ctx)]
        aliases = [(alias, f"Alias of {target}.") for alias, target in sorted(ALIASES.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows + aliases)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pacs")
@click.option("-v", "--verbose", count=True, help="More output: -v info, -vv debug with pynetdicom's log.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="PACS_CONFIG", show_envvar=True,
              help="TOML config file (default: ~/.config/pacs/config.toml).")
@click.pass_context
def cli(ctx, verbose, quiet, config_path):
    """DICOM networking tools: send, receive, query and retrieve, worklist and MPPS.

    \b
    Exit codes:
      0  success
      1  the operation ran but something failed (a non-success status, a file not sent)
      2  usage error
      3  could not connect, association rejected or aborted, or timed out
      130 interrupted
    """
    own_process = ctx.obj is OWN_PROCESS
    if own_process:
        startup.lean_process(pixel_free=ALIASES.get(ctx.invoked_subcommand, ctx.invoked_subcommand) in PIXEL_FREE)
    logs.configure(verbose, quiet)
    cfg = config.load(config_path, COMMANDS, explicit=config_path is not None)
    ctx.obj = State(verbose=verbose, quiet=quiet, config=cfg, own_process=own_process)
    ctx.default_map = cfg.default_map([*COMMANDS, *ALIASES])


def _raise_verbosity(ctx, param, value):
    """-v/-q after the subcommand too (`pacs storescp -v`), as DCMTK users type them."""
    if value:
        state = ctx.find_root().obj
        if param.name == "verbose":
            state.verbose += value
        else:
            state.quiet = True
        logs.configure(state.verbose, state.quiet)


def _with_verbosity(command: click.Command) -> click.Command:
    if not any(param.name == "verbose" for param in command.params):
        command.params += [
            click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_raise_verbosity,
                         help="More output: -v info, -vv debug (also before the command)."),
            click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_raise_verbosity,
                         help="Errors only (also before the command)."),
        ]
    return command


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="pacs", obj=OWN_PROCESS)


def _report(exc: Exception, unexpected: bool = False) -> None:
    verbose = logging.getLogger("pacs_cli").getEffectiveLevel() <= logging.DEBUG
    if verbose:
        log.debug("traceback:", exc_info=exc)
    if unexpected:
        click.echo(f"Error: unexpected {type(exc).__name__}: {exc} (run with -vv for the traceback)", err=True)
    else:
        click.echo(f"Error: {exc}", err=True)
