"""The control key: configured, from a file, or made once in the data directory and shared."""

import os
import stat

import pytest

from streams.agents.control_key import KEY_FILE, control_key
from streams.config import ConfigError, load_settings


def settings(tmp_path, **env):
    return load_settings(env={"OTELPIPE_WORKER_DATA_DIR": str(tmp_path / "worker"), **env})


def test_the_default_key_is_made_once_private_and_shared(tmp_path):
    first = control_key(settings(tmp_path))
    path = tmp_path / "worker" / KEY_FILE
    assert len(first) >= 32 and path.read_bytes() == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert control_key(settings(tmp_path)) == first  # the CLI of the same configuration finds it
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]  # no draft left behind
    assert control_key(settings(tmp_path / "elsewhere")) != first


def test_a_configured_key_or_key_file_wins_and_makes_no_file(tmp_path):
    assert control_key(settings(tmp_path, OTELPIPE_CONTROL_KEY="the-fleet-key-0123456789")) == \
        b"the-fleet-key-0123456789"
    keyfile = tmp_path / "fleet.key"
    keyfile.write_text("from-a-file-0123456789\n")
    assert control_key(settings(tmp_path, OTELPIPE_CONTROL_KEY_FILE=str(keyfile))) == b"from-a-file-0123456789"
    assert not (tmp_path / "worker").exists()


def test_an_unusable_key_file_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="control.key_file: cannot read"):
        control_key(settings(tmp_path, OTELPIPE_CONTROL_KEY_FILE=str(tmp_path / "missing.key")))
    short = tmp_path / "short.key"
    short.write_text("tiny\n")
    with pytest.raises(ConfigError, match="control.key_file: .* at least 16 characters"):
        control_key(settings(tmp_path, OTELPIPE_CONTROL_KEY_FILE=str(short)))
