"""Migrations take turns, replace views in place, and accept rewritten texts of applied ones (chDB)."""

from __future__ import annotations

import threading
import time
import uuid

from sinks.migrations import LOCK_TABLE, MIGRATIONS_TABLE, SUPERSEDED_CHECKSUMS, migrate
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


def test_the_rollup_view_is_replaced_in_place_and_an_earlier_text_of_0018_is_accepted(chdb_client):
    settings = fresh()
    migrate(chdb_client, settings)
    db = settings.database
    query = chdb_client.query(f"SELECT as_select FROM system.tables WHERE database = '{db}' "
                              "AND name = 'otel_traces_rollup_1m_mv'").result_rows[0][0]
    assert "EstimatedSpans" in query
    # a database migrated with 0018's earlier text (drop and create the view) is up to date
    old = next(iter(SUPERSEDED_CHECKSUMS[18]))
    chdb_client.command(f"INSERT INTO {db}.{MIGRATIONS_TABLE} (Version, Name, Checksum) "
                        f"VALUES (18, 'weighted_rollup', '{old}')")
    assert migrate(chdb_client, settings) == []
