"""A command's settings: a /query token file that cannot be read or made is an error naming the
setting and the path, printed like every other settings error, never a traceback.

No Kafka or ClickHouse here (the settings are read, nothing connects; the chDB DSN only names a
path). A directory in the file's place is real; "permission denied" is raised by a stand-in for
``read_text`` / ``os.open`` on that one path, since these tests may run as root, whom file modes
do not stop."""

from __future__ import annotations

import os
import pathlib

import pytest

from streams.agents.query_access import TOKEN_FILE, query_token
from streams.cli import main
from streams.config import ConfigError, load_settings


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.upper().startswith("OTELPIPE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTELPIPE_WORKER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OTELPIPE_CLICKHOUSE_DSN", f"chdb://{tmp_path / 'chdb'}")
    return tmp_path


def _refuse_reading(path: pathlib.Path, monkeypatch) -> None:
    read_text = pathlib.Path.read_text

    def refusing(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)
    monkeypatch.setattr(pathlib.Path, "read_text", refusing)


@pytest.mark.parametrize("fault, reason", [("a directory", "Is a directory"),
                                           ("not readable", "Permission denied")])
def test_an_unreadable_token_file_is_a_settings_error_naming_the_setting_and_the_path(data_dir, monkeypatch,
                                                                                         capsys, fault, reason):
    token_file = data_dir / TOKEN_FILE
    if fault == "a directory":
        token_file.mkdir()
    else:
        token_file.write_text("some-token-value-1234")
        _refuse_reading(token_file, monkeypatch)
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [problem] = [line.strip() for line in err.splitlines()[1:]]
    assert problem == (f"the query token file (worker.query_token unset, worker.data_dir = {data_dir}): "
                       f"cannot read {token_file}: {reason}")


def test_a_data_dir_under_a_file_names_the_setting_and_the_path(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    settings = load_settings(env={"OTELPIPE_WORKER_DATA_DIR": str(blocked / "data")})
    with pytest.raises(ConfigError) as err:
        query_token(settings, create=True)
    assert err.value.problems == [f"the query token file (worker.query_token unset, worker.data_dir = "
                                  f"{blocked / 'data'}): cannot read {blocked / 'data' / TOKEN_FILE}: Not a directory"]


def test_a_token_file_that_cannot_be_made_names_the_setting_and_the_path(tmp_path, monkeypatch):
    token_file = tmp_path / TOKEN_FILE
    real_open = os.open

    def refusing(path, *args, **kwargs):
        if pathlib.Path(path) == token_file:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", refusing)
    settings = load_settings(env={"OTELPIPE_WORKER_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError) as err:
        query_token(settings, create=True)
    assert err.value.problems == [f"the query token file (worker.query_token unset, worker.data_dir = {tmp_path}): "
                                  f"cannot write {token_file}: Permission denied"]


def test_no_token_file_yet_is_no_token(data_dir, capsys):
    settings = load_settings()
    assert query_token(settings) == ""
    assert main(["config"]) == 0
    made = query_token(settings, create=True)
    assert len(made) >= 32 and query_token(settings) == made
