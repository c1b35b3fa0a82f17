"""Migrations take turns, replace views in place, and record nothing when a step fails (chDB)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from sinks.migrations import LOCK_TABLE, MIGRATIONS_TABLE, SCHEMA_VERSION, MigrationError, migrate, plan
from sinks.settings import ClickHouseSettings


def fresh() -> ClickHouseSettings:
    return ClickHouseSettings(database=f"m_{uuid.uuid4().hex[:12]}")


def test_a_worker_waits_for_the_migration_lock_and_then_has_nothing_left_to_do(chdb_client):
    settings = fresh()
    chdb_client.command(f"CREATE DATABASE {settings.database}")
    chdb_client.command(f"CREATE TABLE {settings.database}.{LOCK_TABLE} (Holder String) ENGINE = MergeTree "
                        "ORDER BY tuple()")  # another worker is migrating
    waits = []

    def holder_finishes() -> None:
        time.sleep(1.0)
        chdb_client.command(f"DROP TABLE {settings.database}.{LOCK_TABLE}")

    threading.Thread(target=holder_finishes).start()
    applied = migrate(chdb_client, settings, sleep=lambda s: (waits.append(s), time.sleep(s)))
    assert waits, "it waited for the lock"
    assert applied, "the holder applied nothing here, so this worker applied everything"
    assert migrate(chdb_client, settings) == []
    tables = chdb_client.query(f"SELECT name FROM system.tables WHERE database = '{settings.database}' "
                               f"AND name = '{LOCK_TABLE}'").result_rows
    assert tables == [], "the lock is gone afterwards"


def test_a_lock_left_by_a_crashed_worker_is_taken_after_the_timeout(chdb_client):
    settings = fresh()
    chdb_client.command(f"CREATE DATABASE {settings.database}")
    chdb_client.command(f"CREATE TABLE {settings.database}.{LOCK_TABLE} (Holder String) ENGINE = MergeTree "
                        "ORDER BY tuple()")
    slept = []
    applied = migrate(chdb_client, settings, lock_timeout_s=1, sleep=lambda s: (slept.append(s), time.sleep(s)))
    assert applied and len(slept) <= 10


def test_a_view_with_an_older_query_is_replaced_in_place(chdb_client):
    settings = fresh()
    migrate(chdb_client, settings)
    db = settings.database
    # the rollup's view as an earlier release made it (no sampling-weighted columns)
    chdb_client.command(f"ALTER TABLE {db}.otel_traces_rollup_1m_mv MODIFY QUERY SELECT toStartOfMinute(Timestamp) "
                        "AS Minute, ServiceName, SpanName, SpanKind, count() AS Spans, countIf(StatusCode = 'Error') "
                        f"AS Errors, sum(Duration) AS DurationSum FROM {db}.otel_traces "
                        "GROUP BY Minute, ServiceName, SpanName, SpanKind")
    chdb_client.command(f"TRUNCATE TABLE {db}.{MIGRATIONS_TABLE}")
    steps = plan(chdb_client, settings).steps
    assert [(s.table, s.what) for s in steps] == [("otel_traces_rollup_1m_mv", "replace the view's query in place")]
    assert "MODIFY QUERY" in steps[0].sql
    migrate(chdb_client, settings)
    query = chdb_client.query(f"SELECT as_select FROM system.tables WHERE database = '{db}' "
                              "AND name = 'otel_traces_rollup_1m_mv'").result_rows[0][0]
    assert "EstimatedSpans" in query
    assert plan(chdb_client, settings).steps == []


class FailingAt:
    """A client whose n-th DDL statement fails (as a server refusing it would)."""

    def __init__(self, client, n: int):
        self.client, self.left = client, n

    def command(self, sql, *args, **kwargs):
        if sql.startswith(("CREATE TABLE IF NOT EXISTS", "ALTER")) and "otelpipe_probe" not in sql:
            self.left -= 1
            if self.left == 0:
                raise RuntimeError("Code: 999. refused")
        return self.client.command(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_failed_migration_records_nothing_and_a_second_run_continues(chdb_client):
    settings = fresh()
    with pytest.raises(MigrationError, match="nothing was recorded"):
        migrate(FailingAt(chdb_client, 5), settings)
    db = settings.database
    assert chdb_client.query(f"SELECT count() FROM {db}.{MIGRATIONS_TABLE}").result_rows == [(0,)]
    made = chdb_client.query(f"SELECT count() FROM system.tables WHERE database = '{db}' "
                             "AND name LIKE 'otel%' AND name != 'otelpipe_schema_migrations'").result_rows[0][0]
    assert 0 < made < len(plan(chdb_client, fresh()).steps)
    assert chdb_client.query(f"SELECT count() FROM system.tables WHERE database = '{db}' "
                             f"AND name = '{LOCK_TABLE}'").result_rows == [(0,)], "the lock is released"
    assert migrate(chdb_client, settings)
    assert chdb_client.query(f"SELECT Version FROM {db}.{MIGRATIONS_TABLE}").result_rows == [(SCHEMA_VERSION,)]
    assert plan(chdb_client, settings).steps == [] and migrate(chdb_client, settings) == []


def test_the_plan_for_a_sharded_cluster(chdb_client):
    """The plan migrate would carry out on a sharded cluster, computed against the real engine (the
    scratch copy it compares with is plain, so chDB can make it; the ON CLUSTER steps are not run)."""
    name = f"s_{uuid.uuid4().hex[:12]}"
    sharded = ClickHouseSettings(dsn="http://ch:8123", database=name, cluster="two", sharded=True)
    empty = plan(chdb_client, sharded)
    sql = [s.sql for s in empty.steps]
    assert sql[0] == f"CREATE DATABASE IF NOT EXISTS {name} ON CLUSTER two"
    local = sql.index(next(s for s in sql if s.startswith(f"CREATE TABLE IF NOT EXISTS {name}.otel_traces_local ")))
    dist = sql.index(f"CREATE TABLE IF NOT EXISTS {name}.otel_traces ON CLUSTER two AS {name}.otel_traces_local "
                     f"ENGINE = Distributed(two, {name}, otel_traces_local, cityHash64(TraceId))")
    assert local < dist
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')" in sql[local]
    view = next(s for s in sql if s.startswith(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name}.otel_traces_trace_id_ts_mv"))
    assert f"TO {name}.otel_traces_trace_id_ts_local" in view and f"FROM {name}.otel_traces_local" in view
    distributed = [s for s in sql if "ENGINE = Distributed(" in s]
    tables = [s for s in sql if s.startswith("CREATE TABLE") and "_local ON CLUSTER two" in s]
    assert len(distributed) == len(tables) >= 12

    # a sharded database made by an earlier release: local tables lacking a column, Distributed too
    chdb_client.command(f"CREATE DATABASE {name}")
    chdb_client.command(f"CREATE TABLE {name}.otelpipe_sink_ledger_local (Topic LowCardinality(String), "
                        "Partition UInt32, FirstOffset UInt64, LastOffset UInt64, FirstHash UInt64 DEFAULT 0, "
                        "LastHash UInt64 DEFAULT 0, ConsumerGroup LowCardinality(String) DEFAULT '', "
                        "RecordedAt DateTime64(3) DEFAULT now64(3)) ENGINE = MergeTree "
                        "ORDER BY (Topic, Partition, LastOffset, FirstOffset)")
    chdb_client.command(f"CREATE TABLE {name}.otelpipe_sink_ledger AS {name}.otelpipe_sink_ledger_local "
                        "ENGINE = Memory")  # stands in for the Distributed table
    steps = [s for s in plan(chdb_client, sharded).steps if s.table == "otelpipe_sink_ledger"]
    assert [s.sql.split(" ADD ")[0].split(" MODIFY ")[0] for s in steps] == [
        f"ALTER TABLE {name}.otelpipe_sink_ledger_local ON CLUSTER two",
        f"ALTER TABLE {name}.otelpipe_sink_ledger ON CLUSTER two",
        f"ALTER TABLE {name}.otelpipe_sink_ledger_local ON CLUSTER two",
        f"ALTER TABLE {name}.otelpipe_sink_ledger_local ON CLUSTER two",
    ]
    assert "`InsertId` String DEFAULT ''" in steps[1].sql and "CODEC" not in steps[1].sql
    # the window follows the engine the table has (this stand-in is not Replicated), which is reported
    assert steps[3].sql.endswith("MODIFY SETTING non_replicated_deduplication_window = 10000")
    kept = [k for k in plan(chdb_client, sharded).kept if k.table == "otelpipe_sink_ledger"]
    assert [(k.aspect, k.found, k.target) for k in kept] == [("engine", "MergeTree", "ReplicatedMergeTree")]
