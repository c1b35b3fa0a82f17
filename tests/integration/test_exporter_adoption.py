"""otelpipe and the Collector's ClickHouse exporter on the real engine (chDB), with the exporter's own
DDL and INSERT column lists rendered from its Go module (tests/fixtures/clickhouse_exporter).

- side by side: otelpipe's fresh schema has every column, index and key of the exporter's current
  release, and differs only where the README's table of differences says so;
- adopting: `otelpipe migrate` on a database each exporter release made keeps every row, the
  exporter's INSERTs still work afterwards, otelpipe's writer writes into it, and a second plan has
  nothing left to do.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.exporter_ddl import INSERT_TABLES, create_statements, insert_columns, render_for, versions
from sinks.clickhouse import ClickHouseSink
from sinks.migrations import MIGRATIONS_TABLE, SCHEMA_VERSION, describe, migrate, plan
from sinks.settings import ClickHouseSettings

README = Path(__file__).resolve().parents[2] / "README.md"
CURRENT = "v0.165.1"


def documented_differences() -> list[tuple[str, set[str]]]:
    """(table pattern, columns or aspects) of each row of the README's table of differences."""
    text = README.read_text()
    section = text.split("### Where otelpipe's tables differ from the exporter's", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            rows.append((cells[0].strip("`"), set(re.findall(r"`([^`]+)`", cells[1]))))
    return rows


def exporter_database(client: Any, version: str, fulltext: bool = False) -> str:
    database = f"exp_{uuid.uuid4().hex[:10]}"
    client.command(f"CREATE DATABASE {database}")
    for sql in create_statements(version, fulltext=fulltext).values():
        client.command(render_for(sql, database))
    return database


def value_of(column_type: str, i: int) -> Any:
    """A plausible value of a ClickHouse type (one element per array, so Nested columns agree)."""
    t = column_type
    for wrapper in ("LowCardinality(", "Nullable("):
        if t.startswith(wrapper):
            t = t[len(wrapper):-1]
    if t.startswith("Array("):
        return [value_of(t[6:-1], i)]
    if t.startswith("Map("):
        return {"k8s.namespace.name": f"ns{i}", "http.route": f"/r/{i}"}
    if t.startswith("DateTime64"):
        return dt.datetime(2026, 12, 1, 12, 0, i % 60, 123456, tzinfo=dt.timezone.utc)
    if t.startswith("DateTime"):
        return dt.datetime(2026, 12, 1, 12, 0, i % 60, tzinfo=dt.timezone.utc)
    if t in ("Bool", "Boolean"):
        return True
    if t.startswith(("UInt", "Int")):
        return i % 100 + 1
    if t.startswith("Float"):
        return i + 0.5
    return f"v{i}"


def exporter_insert(client: Any, database: str, table: str, columns: list[str], rows: int, start: int = 0) -> None:
    """Rows inserted the way the exporter does: its INSERT's column list, nothing else."""
    types = dict(client.query("SELECT name, type FROM system.columns WHERE database = {db:String} AND "
                              "table = {t:String}", parameters={"db": database, "t": table}).result_rows)
    data = [[value_of(types[c], start + i) for c in columns] for i in range(rows)]
    client.insert(f"{database}.{table}", data, column_names=columns)


def counts(client: Any, database: str) -> dict[str, int]:
    return {t: client.query(f"SELECT count() FROM {database}.{t}").result_rows[0][0] for t in INSERT_TABLES}


def test_side_by_side_only_the_documented_differences(chdb_client, ch_settings):
    exporter = exporter_database(chdb_client, CURRENT, fulltext=True)  # chDB 26.9: the exporter builds text()
    theirs, ours = describe(chdb_client, exporter), describe(chdb_client, ch_settings.database)
    found: set[tuple[str, str]] = set()
    for table, info in theirs.items():
        mine = ours[table]
        columns = {c.name: c for c in mine.columns}
        for column in info.columns:
            assert column.name in columns, f"{table}.{column.name} is missing"
            got = columns[column.name]
            if (got.type, got.codec, got.default_kind, got.default_expression) != (
                    column.type, column.codec, column.default_kind, column.default_expression):
                found.add((table, column.name))
        indexes = {i.name: i for i in mine.indexes}
        for index in info.indexes:
            assert index.name in indexes, f"{table}: index {index.name} is missing"
            if indexes[index.name] != index:
                found.add((table, index.name))
        for aspect in ("engine", "sorting_key", "partition_key", "primary_key"):
            if getattr(info, aspect) != getattr(mine, aspect):
                found.add((table, aspect))
        if info.as_select:
            assert mine.as_select == info.as_select.replace(f"{exporter}.", f"{ch_settings.database}."), table
    documented = documented_differences()
    assert documented, "the README has a table of differences"
    undocumented = {(t, c) for t, c in found if not any(fnmatch.fnmatch(t, p) and c in cs for p, cs in documented)}
    assert not undocumented, f"differences the README does not list: {sorted(undocumented)}"
    for pattern, columns in documented:
        assert any(fnmatch.fnmatch(t, pattern) and c in columns for t, c in found), (
            f"the README lists {pattern} {sorted(columns)}, which no longer differ")


@pytest.mark.parametrize("version", versions())
def test_migrate_adopts_an_exporter_database_in_place(chdb_client, version):
    database = exporter_database(chdb_client, version)
    columns = insert_columns(version)
    for table in INSERT_TABLES:
        exporter_insert(chdb_client, database, table, columns[table], rows=20)
    before = counts(chdb_client, database)
    ids_before = chdb_client.query(f"SELECT count() FROM {database}.otel_traces_trace_id_ts").result_rows[0][0]
    settings = ClickHouseSettings(database=database)

    todo = plan(chdb_client, settings)
    assert todo.steps and all(s.sql.startswith(("ALTER TABLE", "CREATE TABLE", "CREATE MATERIALIZED VIEW"))
                              for s in todo.steps)
    assert not any("DROP" in s.sql or "MODIFY COLUMN" in s.sql or "MODIFY ORDER BY" in s.sql for s in todo.steps)
    assert counts(chdb_client, database) == before, "plan changes nothing"
    assert chdb_client.query(f"SELECT count() FROM system.tables WHERE database = '{database}' AND "
                             f"name = '{MIGRATIONS_TABLE}'").result_rows == [(0,)]

    steps = migrate(chdb_client, settings)
    assert steps
    assert counts(chdb_client, database) == before, "every row is kept"
    assert chdb_client.query(f"SELECT Version FROM {database}.{MIGRATIONS_TABLE}").result_rows == [(SCHEMA_VERSION,)]
    assert plan(chdb_client, settings).steps == [] and migrate(chdb_client, settings) == []

    # the exporter keeps writing during a migration period: its INSERTs work on the adopted tables
    for table in INSERT_TABLES:
        exporter_insert(chdb_client, database, table, columns[table], rows=5, start=100)
    after = counts(chdb_client, database)
    assert after == {t: n + 5 for t, n in before.items()}
    assert chdb_client.query(f"SELECT count() FROM {database}.otel_traces_trace_id_ts").result_rows[0][0] > ids_before
    # otelpipe's columns are there for the exporter's rows, computed from them
    rows = chdb_client.query(f"SELECT K8sNamespace, RecordId != 0, SampleWeight FROM {database}.otel_traces "
                             "ORDER BY Timestamp LIMIT 1").result_rows
    assert rows == [("ns0", True, 1.0)]
    assert chdb_client.query(f"SELECT count() FROM {database}.otel_traces_rollup_1m").result_rows[0][0] > 0


def test_otelpipe_writes_into_an_adopted_database(chdb_client):
    """The writer's batches (nanosecond times) land in the exporter's tables, whose metric times are
    DateTime (seconds), with the same instant."""
    from streams.otlp.batch import RawMessage
    from streams.otlp.decode import decode_messages
    from tests.otlp_builders import metrics_request, traces_request

    database = exporter_database(chdb_client, CURRENT)
    settings = ClickHouseSettings(database=database)
    migrate(chdb_client, settings)
    sink = ClickHouseSink(chdb_client, settings, "adopt")
    spans = decode_messages("traces", [RawMessage("t", 0, 0, traces_request(spans=3).SerializeToString())]).batches
    request = metrics_request()
    bare = request.resource_metrics[0].scope_metrics[0].metrics.add()  # a point without exemplars
    bare.name = "bare.gauge"
    bare.gauge.data_points.add(time_unix_nano=1_767_000_000_123_456_789, as_double=2.0)
    metrics = decode_messages("metrics", [RawMessage("m", 0, 0, request.SerializeToString())]).batches
    for i, batch in enumerate([*spans.values(), *metrics.values()]):
        if len(batch):
            sink.write(batch, token=f"adopt-{i}")
    gauge = metrics["otel_metrics_gauge"]
    assert len(gauge)
    stored = chdb_client.query(f"SELECT toUnixTimestamp(TimeUnix) FROM {database}.otel_metrics_gauge "
                               "ORDER BY TimeUnix LIMIT 1").result_rows[0][0]
    assert stored == min(gauge.columns["TimeUnix"]) // 10**9
    assert chdb_client.query(f"SELECT count() FROM {database}.otel_metrics_gauge WHERE MetricName = 'bare.gauge' "
                             "AND empty(Exemplars.TimeUnix)").result_rows == [(1,)]
    assert chdb_client.query(f"SELECT count() FROM {database}.otel_traces").result_rows[0][0] == 3


@pytest.mark.parametrize("version", versions())
def test_the_exporters_inserts_work_on_otelpipes_own_tables(chdb_client, ch_settings, version):
    """A Collector pointed at a database otelpipe made (its exporter with create_schema off) writes."""
    for table, columns in insert_columns(version).items():
        exporter_insert(chdb_client, ch_settings.database, table, columns, rows=3)
    assert set(counts(chdb_client, ch_settings.database).values()) == {3}
