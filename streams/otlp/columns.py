"""The tables and columns the decoder fills, as the Collector's ClickHouse exporter names them.

Column lists per table (``TABLE_COLUMNS``), the tables of each signal (``SIGNAL_TABLES``), and the
enums' names as stored (span kinds, status codes). Pure data: the DDL under ``schemas/clickhouse/``
must agree with it (a test checks).
"""

from __future__ import annotations

TRACES_TABLE = "otel_traces"
LOGS_TABLE = "otel_logs"
GAUGE_TABLE = "otel_metrics_gauge"
SUM_TABLE = "otel_metrics_sum"
HISTOGRAM_TABLE = "otel_metrics_histogram"
EXP_HISTOGRAM_TABLE = "otel_metrics_exponential_histogram"
SUMMARY_TABLE = "otel_metrics_summary"

SIGNALS = ("traces", "logs", "metrics")

SPAN_KINDS = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
STATUS_CODES = ("Unset", "Ok", "Error")

_RESOURCE_COLUMNS = [
    "ResourceAttributes",
    "ResourceSchemaUrl",
    "ResourceDroppedAttrCount",
    "ScopeName",
    "ScopeVersion",
    "ScopeAttributes",
    "ScopeDroppedAttrCount",
    "ScopeSchemaUrl",
    "ServiceName",
]

TRACE_COLUMNS = [
    "Timestamp",
    "TraceId",
    "SpanId",
    "ParentSpanId",
    "TraceState",
    "SpanName",
    "SpanKind",
    "ServiceName",
    "ResourceAttributes",
    "ScopeName",
    "ScopeVersion",
    "SpanAttributes",
    "Duration",
    "StatusCode",
    "StatusMessage",
    "Events.Timestamp",
    "Events.Name",
    "Events.Attributes",
    "Links.TraceId",
    "Links.SpanId",
    "Links.TraceState",
    "Links.Attributes",
    # Beyond the Collector exporter's columns: everything else a span carries.
    "ResourceSchemaUrl",
    "ResourceDroppedAttrCount",
    "ScopeAttributes",
    "ScopeDroppedAttrCount",
    "ScopeSchemaUrl",
    "SpanFlags",
    "DroppedAttributesCount",
    "DroppedEventsCount",
    "DroppedLinksCount",
    "Events.DroppedAttributesCount",
    "Links.Flags",
    "Links.DroppedAttributesCount",
]

LOG_COLUMNS = [
    "Timestamp",
    "TraceId",
    "SpanId",
    "TraceFlags",
    "SeverityText",
    "SeverityNumber",
    "ServiceName",
    "Body",
    "ResourceSchemaUrl",
    "ResourceAttributes",
    "ScopeSchemaUrl",
    "ScopeName",
    "ScopeVersion",
    "ScopeAttributes",
    "LogAttributes",
    "EventName",
    "ObservedTimestamp",
    "LogFlags",
    "DroppedAttributesCount",
    "ResourceDroppedAttrCount",
    "ScopeDroppedAttrCount",
]

_METRIC_COMMON = _RESOURCE_COLUMNS + [
    "MetricName",
    "MetricDescription",
    "MetricUnit",
    "MetricMetadata",
    "Attributes",
    "StartTimeUnix",
    "TimeUnix",
    "Flags",
]
_EXEMPLAR_COLUMNS = [
    "Exemplars.FilteredAttributes",
    "Exemplars.TimeUnix",
    "Exemplars.Value",
    "Exemplars.SpanId",
    "Exemplars.TraceId",
]

METRIC_COLUMNS: dict[str, list[str]] = {
    GAUGE_TABLE: _METRIC_COMMON + ["Value"] + _EXEMPLAR_COLUMNS,
    SUM_TABLE: _METRIC_COMMON + ["Value", "AggregationTemporality", "IsMonotonic"] + _EXEMPLAR_COLUMNS,
    HISTOGRAM_TABLE: _METRIC_COMMON
    + ["Count", "Sum", "BucketCounts", "ExplicitBounds", "Min", "Max", "AggregationTemporality"]
    + _EXEMPLAR_COLUMNS,
    EXP_HISTOGRAM_TABLE: _METRIC_COMMON
    + [
        "Count",
        "Sum",
        "Scale",
        "ZeroCount",
        "ZeroThreshold",
        "PositiveOffset",
        "PositiveBucketCounts",
        "NegativeOffset",
        "NegativeBucketCounts",
        "Min",
        "Max",
        "AggregationTemporality",
    ]
    + _EXEMPLAR_COLUMNS,
    SUMMARY_TABLE: _METRIC_COMMON + ["Count", "Sum", "ValueAtQuantiles.Quantile", "ValueAtQuantiles.Value"],
}

TABLE_COLUMNS: dict[str, list[str]] = {TRACES_TABLE: TRACE_COLUMNS, LOGS_TABLE: LOG_COLUMNS, **METRIC_COLUMNS}
SIGNAL_TABLES: dict[str, list[str]] = {
    "traces": [TRACES_TABLE],
    "logs": [LOGS_TABLE],
    "metrics": list(METRIC_COLUMNS),
}


# The value of every empty array cell (a span without events, a point without exemplars). One shared
# immutable tuple instead of a new list per row: most rows have none, and each list costs an
# allocation and a deallocation. Stages never mutate cells in place.
NONE: tuple = ()
