"""The otelpipe command line, run as a user runs it (separate processes, a real chDB path)."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def otelpipe(tmp_path, *args, check=True):
    env = {**os.environ, "OTELPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}",
           "OTELPIPE_WORKER_WEB_PORT": "6999"}
    proc = subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_migrate_twice_then_query_without_a_worker(tmp_path):
    assert "schema is up to date" not in otelpipe(tmp_path, "migrate", "--plan").stdout.splitlines()[0]
    first = otelpipe(tmp_path, "migrate").stdout
    assert "otel_traces: create the table" in first and "otelpipe_sink_ledger: create the table" in first
    assert otelpipe(tmp_path, "migrate").stdout.strip() == "schema is up to date"
    assert otelpipe(tmp_path, "migrate", "--plan").stdout.strip() == "schema is up to date"

    table = otelpipe(tmp_path, "query", "SELECT Version, Name FROM otel.otelpipe_schema_migrations ORDER BY Version").stdout
    from sinks.migrations import SCHEMA_VERSION

    assert "│ Version │" in table.splitlines()[1] and str(SCHEMA_VERSION) in table and "1 row" in table
    rows = json.loads(otelpipe(tmp_path, "query", "SELECT {n:UInt8} + 1 AS x", "--param", "n=41", "--format", "json").stdout)
    assert rows == [{"x": 42}]
    csv = otelpipe(tmp_path, "query", "SELECT 'a,b' AS s", "--format", "csv").stdout
    assert csv.splitlines() == ["s", '"a,b"']


def test_query_is_read_only_and_errors_are_clear(tmp_path):
    otelpipe(tmp_path, "migrate")
    proc = otelpipe(tmp_path, "query", "INSERT INTO otel.otel_logs (Body) VALUES ('x')", check=False)
    assert proc.returncode == 1 and "readonly" in proc.stderr.lower()
    proc = otelpipe(tmp_path, "query", "SELECT nope FROM otel.otel_logs", check=False)
    assert proc.returncode == 1 and "query failed" in proc.stderr


def test_invalid_configuration_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[worker]\nbatch_max_messages = 0\nbatch_within_s = -1\n")
    proc = otelpipe(tmp_path, "--config", str(bad), "config", check=False)
    assert proc.returncode == 2
    assert "worker.batch_max_messages: must be > 0" in proc.stderr
    assert "worker.batch_within_s: must be > 0" in proc.stderr
