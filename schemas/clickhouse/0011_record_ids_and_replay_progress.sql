-- A deterministic id for every stored record, computed by ClickHouse from the record itself. Replays
-- read the same messages at other offsets, so offset-derived tokens cannot tell that a record is
-- already stored: `otelpipe replay` inserts only rows whose RecordId the target time range lacks.
-- MATERIALIZED: computed on insert (and for older parts, on read); never sent by the writer.
ALTER TABLE ${database}.otel_traces ${on_cluster}
    ADD COLUMN IF NOT EXISTS RecordId UInt64 MATERIALIZED cityHash64(TraceId, SpanId, Timestamp, ServiceName, SpanName);

ALTER TABLE ${database}.otel_logs ${on_cluster}
    ADD COLUMN IF NOT EXISTS RecordId UInt64 MATERIALIZED cityHash64(Timestamp, ObservedTimestamp, TraceId, SpanId,
        ServiceName, SeverityNumber, Body, LogAttributes, ResourceAttributes);

ALTER TABLE ${database}.otel_metrics_gauge ${on_cluster}
    ADD COLUMN IF NOT EXISTS RecordId UInt64 MATERIALIZED cityHash64(ServiceName, MetricName, Attributes,
        ResourceAttributes, ScopeName, StartTimeUnix, TimeUnix, Value);

ALTER TABLE ${database}.otel_metrics_sum ${on_cluster}
    ADD COLUMN IF NOT EXISTS RecordId UInt64 MATERIALIZED cityHash64(ServiceName, MetricName, Attributes,
        ResourceAttributes, ScopeName, StartTimeUnix, TimeUnix, Value, AggregationTemporality);

ALTER TABLE ${database}.otel_metrics_histogram ${on_cluster}
    ADD COLUMN IF NOT EXISTS RecordId UInt64 MATERIALIZED cityHash64(ServiceName, MetricName, Attributes,
        ResourceAttributes, ScopeName, StartTimeUnix, TimeUnix, Count, Sum, BucketCounts);

ALTER TABLE ${database}.otel_metrics_exponential_histogram ${on_cluster}
    ADD COLUMN IF NOT EXISTS RecordId UInt64 MATERIALIZED cityHash64(ServiceName, MetricName, Attributes,
        ResourceAttributes, ScopeName, StartTimeUnix, TimeUnix, Count, Sum, Scale, PositiveBucketCounts,
        NegativeBucketCounts);

ALTER TABLE ${database}.otel_metrics_summary ${on_cluster}
    ADD COLUMN IF NOT EXISTS RecordId UInt64 MATERIALIZED cityHash64(ServiceName, MetricName, Attributes,
        ResourceAttributes, ScopeName, StartTimeUnix, TimeUnix, Count, Sum, ValueAtQuantiles.Value);

-- Where each replay is: the next offset to read per partition, so a stopped replay resumes.
CREATE TABLE IF NOT EXISTS ${database}.otelpipe_replay_progress ${on_cluster} (
    ReplayId String,
    Topic LowCardinality(String),
    Partition UInt32,
    NextOffset UInt64,
    StopOffset UInt64,
    UpdatedAt DateTime64(3) DEFAULT now64(3)
) ENGINE = ${engine:ReplacingMergeTree(UpdatedAt)}
ORDER BY (ReplayId, Topic, Partition)
SETTINGS non_replicated_deduplication_window = ${dedup_window};
