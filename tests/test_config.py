"""The config file, environment variables and their precedence: option > env > config > default."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def archive_scp(pynetdicom_scp):
    """A pynetdicom SCP that only answers to the called AE title ARCHIVE."""
    return pynetdicom_scp(ae_title="ARCHIVE", require_called_aet=True)


def environ(**values):
    return {**os.environ, **values}


def write_config(home, text: str):
    path = home / ".config" / "pacs" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def peer_config(port: int, extra: str = "") -> str:
    return f'{extra}\n[peers.archive]\nae_title = "ARCHIVE"\nhost = "127.0.0.1"\nport = {port}\n'


def test_peer_from_default_config_location(script_runner, isolated_home, archive_scp):
    write_config(isolated_home, peer_config(archive_scp))
    result = script_runner.run(["pacs", "echo", "--peer", "archive"])
    assert result.returncode == 0, result.stderr
    assert f"to ARCHIVE@127.0.0.1:{archive_scp}: 0x0000 Success" in result.stdout


def test_explicit_config_path_and_env(script_runner, tmp_path, archive_scp):
    path = tmp_path / "other.toml"
    path.write_text(peer_config(archive_scp))
    assert script_runner.run(["pacs", "--config", str(path), "echo", "--peer", "archive"]).returncode == 0
    env_run = script_runner.run(["pacs", "echo"], env=environ(PACS_CONFIG=str(path), PACS_PEER="archive"))
    assert env_run.returncode == 0, env_run.stderr


def test_env_beats_config_and_option_beats_env(script_runner, isolated_home, archive_scp):
    write_config(isolated_home, peer_config(archive_scp, '[defaults]\ncalled_aet = "FROMCONFIG"'))
    port = str(archive_scp)
    from_config = script_runner.run(["pacs", "echo", "127.0.0.1", port])
    assert from_config.returncode == 3 and "FROMCONFIG@" in from_config.stderr
    from_env = script_runner.run(["pacs", "echo", "127.0.0.1", port], env=environ(PACS_CALLED_AET="FROMENV"))
    assert from_env.returncode == 3 and "FROMENV@" in from_env.stderr
    from_option = script_runner.run(["pacs", "echo", "127.0.0.1", port, "-aec", "ARCHIVE"],
                                    env=environ(PACS_CALLED_AET="FROMENV"))
    assert from_option.returncode == 0, from_option.stderr


def test_command_section_overrides_defaults(script_runner, isolated_home, archive_scp):
    write_config(isolated_home, peer_config(archive_scp, "[defaults]\nrepeat = 5\n[echo]\nrepeat = 2"))
    result = script_runner.run(["pacs", "echo", "--peer", "archive"])
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 2


def test_unknown_peer_lists_known_ones(script_runner, isolated_home, archive_scp):
    write_config(isolated_home, peer_config(archive_scp))
    result = script_runner.run(["pacs", "echo", "--peer", "nope"])
    assert result.returncode == 2
    assert result.stderr.startswith("Error: unknown peer 'nope' (peers in ")
    assert result.stderr.rstrip().endswith(": archive)")


@pytest.mark.parametrize("text, message", [
    ("[peers.x\n", "is not valid TOML"),
    ("[bogus]\n", "unknown section [bogus]"),
    ('[peers.x]\nhost = "h"\nport = 1\n', "[peers.x]: missing 'ae_title'"),
    ('[peers.x]\nae_title = "A"\nhost = "h"\nport = 0\n', "port must be 1-65535"),
])
def test_bad_config_is_a_one_line_usage_error(script_runner, isolated_home, text, message):
    write_config(isolated_home, text)
    result = script_runner.run(["pacs", "echo", "127.0.0.1", "104"])
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr


def test_missing_explicit_config_is_an_error(script_runner, tmp_path):
    result = script_runner.run(["pacs", "--config", str(tmp_path / "none.toml"), "echo", "h", "1"])
    assert result.returncode == 2
    assert "does not exist" in result.stderr
