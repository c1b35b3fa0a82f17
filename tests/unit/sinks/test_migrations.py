import pytest

from sinks.migrations import load_migrations, render, statements
from sinks.settings import ClickHouseSettings


def test_migrations_are_numbered_files():
    found = load_migrations()
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].version == 1 and found[0].name == "otel_traces"


def test_embedded_render_has_no_cluster_no_ttl_and_dedup_everywhere():
    settings = ClickHouseSettings()
    for migration in load_migrations():
        sql = render(migration.text, settings)
        assert "${" not in sql
        assert "ON CLUSTER" not in sql and "Replicated" not in sql
        for statement in statements(sql):
            if statement.startswith("CREATE TABLE"):
                assert "non_replicated_deduplication_window = 10000" in statement, statement[:80]
                if "otelpipe_sink_ranges" not in statement and "otelpipe_sink_ledger" not in statement:
                    assert "\nTTL" not in statement


def test_server_render_with_cluster_and_ttl():
    settings = ClickHouseSettings(dsn="http://ch:8123", database="tel", cluster="main", ttl_days=30)
    sql = render(load_migrations()[0].text, settings)
    assert "CREATE TABLE IF NOT EXISTS tel.otel_traces ON CLUSTER main" in sql
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')" in sql
    assert "ENGINE = ReplicatedAggregatingMergeTree(" in sql
    assert "TTL toDateTime(Timestamp) + toIntervalDay(30)" in sql


def test_replicated_engine_keeps_its_parameters():
    settings = ClickHouseSettings(dsn="http://ch:8123", cluster="main")
    assert render("${engine:ReplacingMergeTree(UpdatedAt)}", settings) == (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', UpdatedAt)")
    assert render("${engine:ReplacingMergeTree(UpdatedAt)}", ClickHouseSettings()) == "ReplacingMergeTree(UpdatedAt)"


def test_unknown_placeholder_is_an_error():
    with pytest.raises(ValueError, match="unknown placeholder"):
        render("SELECT ${nope}", ClickHouseSettings())


def test_statements_split_at_line_end_semicolons():
    assert statements("-- c\nCREATE TABLE a (x String);\n\nCREATE VIEW b AS SELECT ';' FROM a;\n") == [
        "CREATE TABLE a (x String)",
        "CREATE VIEW b AS SELECT ';' FROM a",
    ]
