"""The DDL files and the decoder agree, on the real chDB engine (the exporter's own DDL is compared in
test_exporter_adoption.py)."""

from sinks.migrations import MIGRATIONS_TABLE, SCHEMA_VERSION, migrate, plan, table_columns
from streams.otlp.columns import TABLE_COLUMNS

def test_decoder_columns_and_table_columns_agree(chdb_client, ch_settings):
    for table, decoded in TABLE_COLUMNS.items():
        result = chdb_client.query(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} "
            "AND default_kind = ''", parameters={"db": ch_settings.database, "t": table})
        stored = {row[0] for row in result.result_rows}
        assert set(decoded) == stored, (
            f"{table}: decoded but no column {sorted(set(decoded) - stored)}, "
            f"column but never decoded {sorted(stored - set(decoded))}"
        )


def test_second_migrate_is_a_no_op(chdb_client, ch_settings):
    assert migrate(chdb_client, ch_settings) == []
    assert plan(chdb_client, ch_settings).steps == []
    versions = chdb_client.query(f"SELECT Version, Name FROM {ch_settings.database}.{MIGRATIONS_TABLE}")
    assert versions.result_rows == [(SCHEMA_VERSION, "schema")]


def test_every_table_sets_a_deduplication_window(chdb_client, ch_settings):
    result = chdb_client.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String} AND engine LIKE '%MergeTree'",
        parameters={"db": ch_settings.database})
    tables = dict(result.result_rows)
    assert "otel_traces_trace_id_ts" in tables
    for name, ddl in tables.items():
        if name == MIGRATIONS_TABLE:
            continue
        assert "non_replicated_deduplication_window = 10000" in ddl, name


def test_alert_avro_fields_and_table_columns_agree(chdb_client, ch_settings):
    from streams.stages.alerts import ALERT_FIELDS, ALERTS_TABLE, record, table_columns as alert_columns, Firing

    columns = table_columns(chdb_client, ch_settings.database, ALERTS_TABLE)
    assert list(columns) == ALERT_FIELDS
    rec = record(Firing("slo_burn", "svc", "availability:fast_burn", "page", 20.0, 14.4, (("sli", "availability"),)),
                 "firing", 1_767_323_045_123)
    names, values = alert_columns([rec])
    chdb_client.insert(f"{ch_settings.database}.{ALERTS_TABLE}", values, column_names=names, column_oriented=True)
    row = chdb_client.query(f"SELECT Kind, State, Value, Details, toUnixTimestamp64Milli(Timestamp) "
                            f"FROM {ch_settings.database}.{ALERTS_TABLE}").result_rows
    assert row == [("slo_burn", "firing", 20.0, {"sli": "availability"}, 1_767_323_045_123)]
