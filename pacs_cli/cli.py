"""The ``pacs`` root group: global options, lazy subcommands, and the one place errors become exit codes."""

from __future__ import annotations

import gc
import importlib
import importlib.abc
import importlib.util
import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import click

from pacs_cli import __version__, config, logs
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
# numpy (see _keep_out); storescu decides by its --decompress (State.without_numpy). Every command goes
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
            _keep_out("numpy")


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
        _keep_out("requests")
        _load_when_used("pydicom.examples")
        _load_when_used("pydicom.data", "get_palette_files")
        _load_unchecked("pynetdicom")
        if ALIASES.get(ctx.invoked_subcommand, ctx.invoked_subcommand) in PIXEL_FREE:
            _keep_out("numpy")
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


def _keep_out(name: str) -> None:
    """Have pydicom load as though the package ``name`` (numpy or requests) were not installed.

    Any pydicom import imports both (``pydicom.config`` loads the pixel data handlers, those load
    ``pydicom.data`` and its test-file downloader), and no pydicom setting skips them: measured, they
    were 0.3 s of a 0.74 s `pacs echo`, and 0.2 s of every `pacs storescu`. pydicom supports installs
    without either: numpy only decodes and encodes pixel data and makes numpy-valued DS/IS (off by
    default), requests only downloads pydicom's test files (urllib does it otherwise), and pynetdicom
    uses neither. ``None`` in ``sys.modules`` is how the import system is told to fail an import. Only
    before pydicom's first import and only in a process of our own (:func:`main`): a library caller
    or a test run keeps its numpy.
    """
    if "pydicom" not in sys.modules:
        sys.modules.setdefault(name, None)


class _LoadedWhenUsed(types.ModuleType):
    """Stands in for a module of pydicom's until one of its attributes is asked for."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):  # the import system asking whether this is a package (__path__)
            raise AttributeError(attribute)
        return getattr(self.real(), attribute)

    def real(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return importlib.import_module(self.__name__)

    def stand_in(self, function: str) -> None:
        """Bind ``function`` to a call that loads the real module first."""
        setattr(self, function, lambda *args, **kwargs: getattr(self.real(), function)(*args, **kwargs))


def _load_when_used(name: str, *functions: str) -> None:
    """Have pydicom's module ``name`` load when first used rather than with pydicom.

    Any pydicom import loads ``pydicom.examples``, which looks up 13 test files' paths, and
    ``pydicom.data``, which brings urllib.request and http.client to download them: 13-16 ms of
    every command's start-up (`pacs storescu` of one file), for files no command reads.
    ``functions`` are the names pydicom imports from the module at its own import (``from
    pydicom.data import get_palette_files``): stand-ins that load the real module when called. As
    :func:`_keep_out`: only before pydicom's first import, only in a process of our own.
    """
    if "pydicom" not in sys.modules:
        module = _LoadedWhenUsed(name)
        for function in functions:
            module.stand_in(function)
        sys.modules.setdefault(name, module)


class _UncheckedWhileLoading:
    """A module's loader, run with pydicom's value validation off (see :func:`_load_unchecked`)."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, attribute: str):  # resources, source: as the real loader gives them
        return getattr(self._loader, attribute)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        from pydicom import config

        mode = config.settings.reading_validation_mode
        config.settings.reading_validation_mode = config.IGNORE
        try:
            self._loader.exec_module(module)
        finally:
            config.settings.reading_validation_mode = mode


class _FirstImportUnchecked(importlib.abc.MetaPathFinder):
    """Finds ``name`` once, as the import system would, with its loader wrapped."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _UncheckedWhileLoading(spec.loader)
        return spec


def _load_unchecked(name: str) -> None:
    """Have the package ``name`` (pynetdicom) load with pydicom's value validation off, put back after.

    pynetdicom builds ~370 presentation contexts at import, each UID a pydicom ``UID`` checked by
    regular expressions: ~10 ms of every network command's start-up, for pynetdicom's own constants.
    Those commands turn the validation off anyway once they make an AE
    (:func:`pacs_cli.dimse.ae.configure_libraries`); here it is off only while the package's modules
    load. As :func:`_keep_out`: only in a process of our own, before the package's first import.
    """
    if name not in sys.modules:
        sys.meta_path.insert(0, _FirstImportUnchecked(name))


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
