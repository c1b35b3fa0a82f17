"""The ClickHouse exporter's rendered statements under tests/fixtures/clickhouse_exporter/ load and parse."""

from __future__ import annotations

import re

import pytest

from tests import exporter_ddl

TABLES = {exporter_ddl.LOGS_TABLE, exporter_ddl.TRACES_TABLE, *exporter_ddl.METRICS_TABLES}
ALL_CREATED = TABLES | {exporter_ddl.TRACE_ID_TS_TABLE, exporter_ddl.TRACE_ID_TS_VIEW}
MODULE = "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/clickhouseexporter"

VERSIONS = exporter_ddl.versions()
_CREATE_TARGET = re.compile(
    r"^CREATE\s+(?:TABLE|MATERIALIZED\s+VIEW)\s+IF\s+NOT\s+EXISTS\s+([\"`])otel\1\.([\"`])([^\"`]+)\2",
)


def test_the_three_layouts_are_there() -> None:
    assert {"v0.150.0", "v0.152.0", "v0.165.1"} <= set(VERSIONS)
    assert VERSIONS == sorted(VERSIONS, key=lambda v: tuple(int(p) for p in v[1:].split(".")))


@pytest.mark.parametrize("version", VERSIONS)
def test_version_file_names_the_module_and_version(version: str) -> None:
    text = (exporter_ddl.FIXTURES / version / "VERSION").read_text()
    assert f"module: {MODULE}\n" in text
    assert f"version: {version}\n" in text
    assert re.search(r"^rendered: \d{4}-\d{2}-\d{2}$", text, re.M)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_table_and_the_view_in_a_safe_order(version: str) -> None:
    statements = exporter_ddl.create_statements(version)
    assert set(statements) == ALL_CREATED
    order = list(statements)
    assert order[-1] == exporter_ddl.TRACE_ID_TS_VIEW
    assert order.index(exporter_ddl.TRACES_TABLE) < order.index(exporter_ddl.TRACE_ID_TS_VIEW)
    assert order.index(exporter_ddl.TRACE_ID_TS_TABLE) < order.index(exporter_ddl.TRACE_ID_TS_VIEW)
    for name, sql in statements.items():
        match = _CREATE_TARGET.match(sql)
        assert match, f"{version} {name}: {sql[:80]!r}"
        assert match[3] == name


@pytest.mark.parametrize("version", VERSIONS)
def test_insert_columns_of_every_table(version: str) -> None:
    columns = exporter_ddl.insert_columns(version)
    assert set(columns) == TABLES
    for table, names in columns.items():
        assert len(names) == len(set(names)), table
        assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", n) for n in names), (table, names)
        target, _ = exporter_ddl.parse_insert(exporter_ddl.insert_statements(version)[table])
        assert target.replace('"', "").replace("`", "") == f"otel.{table}"
        placeholders = exporter_ddl.insert_statements(version)[table].partition("VALUES")[2].count("?")
        assert placeholders == len(names), table
        # Every insert column is defined by the CREATE statement of its table.
        create = exporter_ddl.create_statements(version)[table]
        for name in names:
            nested, _, leaf = name.rpartition(".")
            if nested:  # a field of a Nested column: Events.Timestamp
                assert re.search(rf"(?m)^\s*`?{re.escape(nested)}`?\s+Nested\s*\(", create), (version, table, name)
            assert re.search(rf"(?m)^\s*`?{re.escape(leaf)}`?\s", create), (version, table, name)
    assert columns[exporter_ddl.LOGS_TABLE][0] == "Timestamp"
    assert columns[exporter_ddl.LOGS_TABLE][-1] == "EventName"
    assert "Events.Timestamp" in columns[exporter_ddl.TRACES_TABLE]


def test_layout_differences_between_the_versions() -> None:
    old = exporter_ddl.create_statements("v0.150.0")[exporter_ddl.LOGS_TABLE]
    assert "TimestampTime DateTime DEFAULT toDateTime(Timestamp)" in old
    assert "ORDER BY (ServiceName, TimestampTime, Timestamp)" in old
    assert "__otel_materialized_" not in old
    for version in ("v0.152.0", "v0.165.1"):
        for fulltext in (False, True):
            logs = exporter_ddl.create_statements(version, fulltext=fulltext)[exporter_ddl.LOGS_TABLE]
            assert "TimestampTime" not in logs
            assert "ORDER BY (toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp)" in logs
            assert len(re.findall(r"`__otel_materialized_[^`]+` LowCardinality\(String\) MATERIALIZED", logs)) == 8
            assert ("TYPE text(" in logs) is fulltext
            assert ("tokenbf_v1" in logs) is not fulltext
    # The materialized columns are left to ClickHouse: no INSERT names them.
    for version in VERSIONS:
        assert not any(
            c.startswith("__otel_materialized_") for c in exporter_ddl.insert_columns(version)[exporter_ddl.LOGS_TABLE]
        )


def test_fulltext_variant_only_where_the_exporter_has_one() -> None:
    with pytest.raises(ValueError, match="no text-index variant"):
        exporter_ddl.create_statements("v0.150.0", fulltext=True)
    plain = exporter_ddl.create_statements("v0.165.1")
    fulltext = exporter_ddl.create_statements("v0.165.1", fulltext=True)
    assert list(plain) == list(fulltext)
    assert {k for k in plain if plain[k] != fulltext[k]} == {exporter_ddl.LOGS_TABLE}


def test_unknown_version() -> None:
    with pytest.raises(KeyError):
        exporter_ddl.create_statements("v0.1.0")
    with pytest.raises(KeyError):
        exporter_ddl.insert_columns("../v0.165.1")


@pytest.mark.parametrize("version", VERSIONS)
def test_render_for_retargets_every_qualifier(version: str) -> None:
    statements = [
        *exporter_ddl.create_statements(version).values(),
        *exporter_ddl.insert_statements(version).values(),
    ]
    for sql in statements:
        rendered = exporter_ddl.render_for(sql, "otel_check")
        assert not re.search(r"[\"`]otel[\"`]\.", rendered), rendered[:200]
        assert re.search(r"[\"`]otel_check[\"`]\.", rendered)
        # Only the qualifier changes.
        assert re.sub(r"([\"`])otel_check\1\.", r"\1otel\1.", rendered) == sql
    view = exporter_ddl.create_statements(version)[exporter_ddl.TRACE_ID_TS_VIEW]
    assert exporter_ddl.render_for(view, "x").count('"x".') == 3


def test_render_for_quotes_the_database_name() -> None:
    assert exporter_ddl.render_for('INSERT INTO "otel"."t" (a) VALUES (?)', 'we"ird') == (
        'INSERT INTO "we\\"ird"."t" (a) VALUES (?)'
    )
    create = "CREATE TABLE `otel`.`otel` (a String)"
    assert exporter_ddl.render_for(create, "db") == "CREATE TABLE `db`.`otel` (a String)"
    # A column or table that happens to be called otel is not a qualifier.
    assert exporter_ddl.render_for('SELECT "otel" FROM "otel"."otel"', "db") == 'SELECT "otel" FROM "db"."otel"'
