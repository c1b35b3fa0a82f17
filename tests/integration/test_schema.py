"""The DDL files, the decoder and the Collector exporter's tables agree, on the real chDB engine."""

from sinks.migrations import MIGRATIONS_TABLE, migrate, table_columns
from streams.otlp.columns import TABLE_COLUMNS

# Column → type of the OpenTelemetry Collector ClickHouse exporter's tables (its sqltemplates).
_RESOURCE = {
    "ResourceAttributes": "Map(LowCardinality(String), String)", "ResourceSchemaUrl": "String",
    "ScopeName": "String", "ScopeVersion": "String", "ScopeAttributes": "Map(LowCardinality(String), String)",
    "ScopeDroppedAttrCount": "UInt32", "ScopeSchemaUrl": "String", "ServiceName": "LowCardinality(String)",
    "MetricName": "String", "MetricDescription": "String", "MetricUnit": "String",
    "Attributes": "Map(LowCardinality(String), String)", "StartTimeUnix": "DateTime64(9)",
    "TimeUnix": "DateTime64(9)", "Flags": "UInt32",
}
_EXEMPLARS = {
    "Exemplars.FilteredAttributes": "Array(Map(LowCardinality(String), String))",
    "Exemplars.TimeUnix": "Array(DateTime64(9))", "Exemplars.Value": "Array(Float64)",
    "Exemplars.SpanId": "Array(String)", "Exemplars.TraceId": "Array(String)",
}
COLLECTOR = {
    "otel_traces": {
        "Timestamp": "DateTime64(9)", "TraceId": "String", "SpanId": "String", "ParentSpanId": "String",
        "TraceState": "String", "SpanName": "LowCardinality(String)", "SpanKind": "LowCardinality(String)",
        "ServiceName": "LowCardinality(String)", "ResourceAttributes": "Map(LowCardinality(String), String)",
        "ScopeName": "String", "ScopeVersion": "String", "SpanAttributes": "Map(LowCardinality(String), String)",
        "Duration": "UInt64", "StatusCode": "LowCardinality(String)", "StatusMessage": "String",
        "Events.Timestamp": "Array(DateTime64(9))", "Events.Name": "Array(LowCardinality(String))",
        "Events.Attributes": "Array(Map(LowCardinality(String), String))", "Links.TraceId": "Array(String)",
        "Links.SpanId": "Array(String)", "Links.TraceState": "Array(String)",
        "Links.Attributes": "Array(Map(LowCardinality(String), String))",
    },
    "otel_logs": {
        "Timestamp": "DateTime64(9)", "TimestampTime": "DateTime", "TraceId": "String", "SpanId": "String",
        "TraceFlags": "UInt8", "SeverityText": "LowCardinality(String)", "SeverityNumber": "UInt8",
        "ServiceName": "LowCardinality(String)", "Body": "String", "ResourceSchemaUrl": "LowCardinality(String)",
        "ResourceAttributes": "Map(LowCardinality(String), String)", "ScopeSchemaUrl": "LowCardinality(String)",
        "ScopeName": "String", "ScopeVersion": "LowCardinality(String)",
        "ScopeAttributes": "Map(LowCardinality(String), String)",
        "LogAttributes": "Map(LowCardinality(String), String)", "EventName": "String",
    },
    "otel_metrics_gauge": {**_RESOURCE, "Value": "Float64", **_EXEMPLARS},
    "otel_metrics_sum": {**_RESOURCE, "Value": "Float64", **_EXEMPLARS, "AggregationTemporality": "Int32",
                         "IsMonotonic": "Bool"},
    "otel_metrics_histogram": {**_RESOURCE, "Count": "UInt64", "Sum": "Float64", "BucketCounts": "Array(UInt64)",
                               "ExplicitBounds": "Array(Float64)", **_EXEMPLARS, "Min": "Float64",
                               "Max": "Float64", "AggregationTemporality": "Int32"},
    "otel_metrics_exponential_histogram": {
        **_RESOURCE, "Count": "UInt64", "Sum": "Float64", "Scale": "Int32", "ZeroCount": "UInt64",
        "PositiveOffset": "Int32", "PositiveBucketCounts": "Array(UInt64)", "NegativeOffset": "Int32",
        "NegativeBucketCounts": "Array(UInt64)", **_EXEMPLARS, "Min": "Float64", "Max": "Float64",
        "AggregationTemporality": "Int32",
    },
    "otel_metrics_summary": {**_RESOURCE, "Count": "UInt64", "Sum": "Float64",
                             "ValueAtQuantiles.Quantile": "Array(Float64)",
                             "ValueAtQuantiles.Value": "Array(Float64)"},
}


def test_every_collector_column_exists_with_its_type(chdb_client, ch_settings):
    for table, expected in COLLECTOR.items():
        actual = table_columns(chdb_client, ch_settings.database, table)
        for column, typ in expected.items():
            assert actual.get(column) == typ, f"{table}.{column}: {actual.get(column)!r} != {typ!r}"


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
    versions = chdb_client.query(f"SELECT count(), uniqExact(Version) FROM {ch_settings.database}.{MIGRATIONS_TABLE}")
    count, distinct = versions.result_rows[0]
    assert count == distinct >= 8


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
