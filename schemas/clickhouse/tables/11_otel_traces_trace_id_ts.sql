-- Trace id → time range lookup, fed by a materialized view: the exporter's table and view. The
-- table sets the deduplication window too: a deduplicated insert into otel_traces still fires the
-- view, and only this setting (with deduplicate_blocks_in_dependent_materialized_views, which the
-- writer sets) stops the view's block from being counted twice.
-- sharding_key: cityHash64(TraceId)
CREATE TABLE IF NOT EXISTS ${database}.otel_traces_trace_id_ts ${on_cluster} (
    TraceId String CODEC(ZSTD(3)),
    Start DateTime CODEC(Delta, ZSTD(3)),
    End DateTime CODEC(Delta, ZSTD(3)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = ${engine:MergeTree}
PARTITION BY toDate(Start)
ORDER BY (TraceId, Start)
${ttl:Start}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, ${dedup};

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.otel_traces_trace_id_ts_mv ${on_cluster}
TO ${database}.otel_traces_trace_id_ts
AS SELECT
    TraceId,
    min(Timestamp) AS Start,
    max(Timestamp) AS End
FROM ${database}.otel_traces
WHERE TraceId != ''
GROUP BY TraceId;
