"""The TOML config file: defaults for options and the table of named peers.

Precedence is option > environment (``PACS_*``) > config file > built-in default; click applies
it for us once the file's values are handed to it as the context's ``default_map``.

Layout::

    [defaults]              # any command's options, by their long name with '_' for '-'
    calling_aet = "PACS"

    [echo]                  # one command's options
    repeat = 3

    [peers.archive]         # --peer archive; also a C-MOVE destination for the SCPs
    ae_title = "ARCHIVE"
    host = "10.0.0.5"
    port = 104
    tls = true              # optional: tls_ca, tls_cert, tls_key
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pacs_cli.errors import UsageError

PEER_KEYS = {"ae_title", "host", "port", "tls", "tls_ca", "tls_cert", "tls_key"}


def default_path() -> Path:
    """``$XDG_CONFIG_HOME/pacs/config.toml``, i.e. ``~/.config/pacs/config.toml`` by default."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "pacs" / "config.toml"


@dataclass(frozen=True)
class PeerEntry:
    """A named peer as written in the config file."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True)
class Config:
    path: Path | None
    defaults: dict
    commands: dict
    peers: dict[str, PeerEntry]

    def default_map(self, command_names) -> dict:
        """Per-command defaults for click: ``[defaults]`` overlaid by the command's own section."""
        return {name: {**self.defaults, **self.commands.get(name, {})} for name in command_names}

    def peer(self, name: str) -> PeerEntry:
        try:
            return self.peers[name]
        except KeyError:
            known = ", ".join(sorted(self.peers)) or "none"
            where = self.path or default_path()
            raise UsageError(
                f"unknown peer {name!r}", f"peers in {where}: {known}"
            ) from None


EMPTY = Config(path=None, defaults={}, commands={}, peers={})


def load(path: Path | None, command_names, explicit: bool) -> Config:
    """Read the config file; a missing default file is an empty config, a missing explicit one an error."""
    path = path or default_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"config file {path} does not exist") from None
        return EMPTY
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    import tomllib  # here: most runs have no config file, and every command starts through this

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    return _parse(path, data, set(command_names))


def _parse(path: Path, data: dict, command_names: set[str]) -> Config:
    unknown = set(data) - command_names - {"defaults", "peers"}
    if unknown:
        raise UsageError(
            f"config file {path}: unknown section [{sorted(unknown)[0]}]",
            "sections are [defaults], [peers.NAME] and one per command",
        )
    for section in ("defaults", *command_names):
        if not isinstance(data.get(section, {}), dict):
            raise UsageError(f"config file {path}: [{section}] must be a table")
    peers = {name: _peer(path, name, entry) for name, entry in data.get("peers", {}).items()}
    commands = {name: data[name] for name in command_names if name in data}
    return Config(path=path, defaults=data.get("defaults", {}), commands=commands, peers=peers)


def _peer(path: Path, name: str, entry) -> PeerEntry:
    if not isinstance(entry, dict):
        raise UsageError(f"config file {path}: [peers.{name}] must be a table")
    unknown = set(entry) - PEER_KEYS
    missing = {"ae_title", "host", "port"} - set(entry)
    if unknown or missing:
        problem = f"unknown key {sorted(unknown)[0]!r}" if unknown else f"missing {sorted(missing)[0]!r}"
        raise UsageError(f"config file {path}: [peers.{name}]: {problem}")
    if not isinstance(entry["port"], int) or not 0 < entry["port"] < 65536:
        raise UsageError(f"config file {path}: [peers.{name}]: port must be 1-65535")
    return PeerEntry(name=name, **entry)
