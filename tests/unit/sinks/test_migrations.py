"""The rendered target schema in each ClickHouse mode (embedded, server, replicated cluster, sharded
cluster), and the steps planned from what a database holds. No server runs here: these are the
checks of the server and cluster DDL that can be made."""

import re

import pytest
from pydantic import ValidationError

from sinks.migrations import (Column, Index, TableInfo, _table_steps, distributed_sql, load_schema, render,
                              statements, storage_name, targets)
from sinks.settings import ClickHouseSettings

SERVER = dict(dsn="http://ch:8123", database="tel")


def creates(settings: ClickHouseSettings, text_index: bool = True) -> list[str]:
    return [t.sql for t in targets(settings, text_index)]


def test_schema_files_are_numbered_and_every_statement_is_a_guarded_create():
    found = load_schema()
    assert [f.order for f in found] == sorted(f.order for f in found)
    assert found[0].name == "otel_traces"
    names = [t.name for t in targets(ClickHouseSettings(), True)]
    assert len(names) == len(set(names))
    assert {"otel_traces", "otel_logs", "otel_metrics_gauge", "otel_traces_trace_id_ts_mv",
            "otelpipe_sink_ledger"} <= set(names)


def test_every_table_file_names_a_sharding_key():
    for t in targets(ClickHouseSettings(), True):
        if t.kind == "table":
            assert t.sharding_key, t.name
            assert "rand()" not in t.sharding_key  # a retried block must reach the same shard


def test_embedded_render_has_no_cluster_no_ttl_and_a_window_on_every_table():
    for sql in creates(ClickHouseSettings()):
        assert "${" not in sql and "ON CLUSTER" not in sql and "Replicated" not in sql
        if sql.startswith("CREATE TABLE"):
            assert "non_replicated_deduplication_window = 10000" in sql, sql[:80]
            assert "replicated_deduplication_window_seconds" not in sql
            if "otelpipe_sink_ledger" not in sql:
                assert "\nTTL" not in sql


def test_text_indexes_where_the_server_has_them_and_the_exporter_fallback_where_not():
    logs = next(t.sql for t in targets(ClickHouseSettings(), True) if t.name == "otel_logs")
    assert "INDEX idx_lower_body lower(Body) TYPE text(tokenizer = 'splitByNonAlpha')" in logs
    assert "INDEX idx_trace_id TraceId TYPE text(tokenizer = 'array')" in logs
    assert "idx_event_name" not in logs and not re.search(r",\s*\)\s*ENGINE", logs)
    old = next(t.sql for t in targets(ClickHouseSettings(), False) if t.name == "otel_logs")
    assert "INDEX idx_lower_body lower(Body) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8" in old
    assert "INDEX idx_event_name EventName TYPE bloom_filter(0.01) GRANULARITY 1\n)" in old


def test_server_render_with_cluster_is_replicated_with_both_windows_and_ttl():
    settings = ClickHouseSettings(**SERVER, cluster="main", ttl_days=30, dedup_window=50000,
                                  dedup_window_seconds=86400)
    sql = creates(settings)
    traces = sql[0]
    assert traces.startswith("CREATE TABLE IF NOT EXISTS tel.otel_traces ON CLUSTER main")
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')" in traces
    assert "TTL toDateTime(Timestamp) + toIntervalDay(30)" in traces
    for statement in sql:
        if statement.startswith("CREATE TABLE"):
            assert "ENGINE = Replicated" in statement
            assert "replicated_deduplication_window = 50000" in statement
            assert "replicated_deduplication_window_seconds = 86400" in statement
            assert "non_replicated_deduplication_window" not in statement
        else:
            assert "ON CLUSTER main" in statement


def test_sharded_render_makes_local_tables_views_between_them_and_distributed_tables():
    settings = ClickHouseSettings(**SERVER, cluster="main", sharded=True)
    by_name = {t.name: t for t in targets(settings, True)}
    traces = by_name["otel_traces"]
    assert traces.sql.startswith("CREATE TABLE IF NOT EXISTS tel.otel_traces_local ON CLUSTER main")
    assert storage_name(traces, settings) == "otel_traces_local"
    assert distributed_sql(traces, settings) == (
        "CREATE TABLE IF NOT EXISTS tel.otel_traces ON CLUSTER main AS tel.otel_traces_local "
        "ENGINE = Distributed(main, tel, otel_traces_local, cityHash64(TraceId))")
    view = by_name["otel_traces_trace_id_ts_mv"].sql
    assert "TO tel.otel_traces_trace_id_ts_local" in view and "FROM tel.otel_traces_local" in view
    assert storage_name(by_name["otel_traces_trace_id_ts_mv"], settings) == "otel_traces_trace_id_ts_mv"
    rollup = by_name["otel_traces_rollup_1m_mv"].sql
    assert "TO tel.otel_traces_rollup_1m_local" in rollup and "FROM tel.otel_traces_local" in rollup
    for t in by_name.values():
        assert "_local_local" not in t.sql


def test_sharded_needs_a_cluster():
    with pytest.raises(ValidationError, match="sharded needs cluster"):
        ClickHouseSettings(**SERVER, sharded=True)


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


def _info(engine: str, settings: dict[str, str], columns: list[Column], indexes: list[Index]) -> TableInfo:
    return TableInfo(engine, "ServiceName", "toDate(Timestamp)", "ServiceName", "", settings, columns, indexes)


A = Column("A", "String", "", "", "CODEC(ZSTD(3))", "")
B = Column("B", "UInt64", "MATERIALIZED", "cityHash64(A)", "", "")
C = Column("C", "String", "DEFAULT", "''", "CODEC(ZSTD(3))", "it's")
IDX = Index("idx_a", "A", "bloom_filter(0.01)", 1)


def test_missing_columns_are_added_after_their_neighbours_and_missing_indexes_added():
    target = targets(ClickHouseSettings(), True)[0]
    found = _info("MergeTree", {"non_replicated_deduplication_window": "10000"}, [A], [])
    want = _info("MergeTree", {}, [A, B, C], [IDX])
    steps, kept = _table_steps(target, "otel_traces", found, want, ClickHouseSettings(), None)
    assert [s.what for s in steps] == ["add 2 column(s)", "add 1 index(es) (for parts written from now on)"]
    assert steps[0].sql == ("ALTER TABLE otel.otel_traces ADD COLUMN IF NOT EXISTS `B` UInt64 MATERIALIZED "
                            "cityHash64(A) AFTER `A`, ADD COLUMN IF NOT EXISTS `C` String DEFAULT '' "
                            "CODEC(ZSTD(3)) COMMENT 'it\\'s' AFTER `B`")
    assert steps[1].sql == "ALTER TABLE otel.otel_traces ADD INDEX IF NOT EXISTS idx_a A TYPE bloom_filter(0.01) GRANULARITY 1"
    assert kept == []


def test_what_would_rewrite_the_table_is_kept_and_reported():
    target = targets(ClickHouseSettings(), True)[0]
    found = _info("MergeTree", {"non_replicated_deduplication_window": "10000"},
                  [Column("A", "LowCardinality(String)", "", "", "CODEC(ZSTD(1))", "")],
                  [Index("idx_a", "A", "tokenbf_v1(32768, 3, 0)", 8)])
    found.sorting_key = "A"
    want = _info("MergeTree", {}, [A], [IDX])
    steps, kept = _table_steps(target, "otel_traces", found, want, ClickHouseSettings(), None)
    assert steps == []
    assert {(k.aspect, k.found) for k in kept} == {("type of A", "LowCardinality(String)"),
                                                   ("index idx_a", "A TYPE tokenbf_v1(32768, 3, 0)"),
                                                   ("sorting key", "A")}


def test_a_changed_window_reaches_existing_tables_replicated_or_not():
    target = targets(ClickHouseSettings(), True)[0]
    want = _info("MergeTree", {}, [A], [])
    found = _info("MergeTree", {"non_replicated_deduplication_window": "10000"}, [A], [])
    steps, _ = _table_steps(target, "otel_traces", found, want, ClickHouseSettings(dedup_window=30000), None)
    assert [s.sql for s in steps] == [
        "ALTER TABLE otel.otel_traces MODIFY SETTING non_replicated_deduplication_window = 30000"]
    cluster = ClickHouseSettings(**SERVER, cluster="main", dedup_window_seconds=7200)
    found = _info("ReplicatedMergeTree", {}, [A], [])
    steps, kept = _table_steps(target, "otel_traces", found, want, cluster, None)
    assert [s.sql for s in steps] == [
        "ALTER TABLE tel.otel_traces ON CLUSTER main MODIFY SETTING replicated_deduplication_window = 10000, "
        "replicated_deduplication_window_seconds = 7200"]
    assert kept == []


def test_sharded_columns_reach_the_local_and_the_distributed_table():
    settings = ClickHouseSettings(**SERVER, cluster="main", sharded=True)
    target = targets(settings, True)[0]
    found = _info("ReplicatedMergeTree", {"replicated_deduplication_window": "10000",
                                          "replicated_deduplication_window_seconds": "604800"}, [A], [])
    dist = _info("Distributed", {}, [A], [])
    want = _info("MergeTree", {}, [A, C], [])
    steps, _ = _table_steps(target, "otel_traces_local", found, want, settings, dist)
    assert [s.sql for s in steps] == [
        "ALTER TABLE tel.otel_traces_local ON CLUSTER main ADD COLUMN IF NOT EXISTS `C` String DEFAULT '' "
        "CODEC(ZSTD(3)) COMMENT 'it\\'s' AFTER `A`",
        "ALTER TABLE tel.otel_traces ON CLUSTER main ADD COLUMN IF NOT EXISTS `C` String DEFAULT '' "
        "COMMENT 'it\\'s' AFTER `A`",
    ]
