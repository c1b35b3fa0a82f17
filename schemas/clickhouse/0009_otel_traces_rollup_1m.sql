-- Per minute, per service, span name and kind: span and error counts, latency quantile states and
-- latency bucket counts. Fed by a materialized view on otel_traces, so `otelpipe services` and
-- `otelpipe slo` read minutes, not spans. The target sets the deduplication window too: a
-- deduplicated (retried) insert into otel_traces must not count twice here.
CREATE TABLE IF NOT EXISTS ${database}.otel_traces_rollup_1m ${on_cluster} (
    Minute DateTime CODEC(Delta, ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    Spans SimpleAggregateFunction(sum, UInt64),
    Errors SimpleAggregateFunction(sum, UInt64),
    DurationSum SimpleAggregateFunction(sum, UInt64),
    -- Spans at or under 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000 ms (latency SLOs).
    LatencyBuckets AggregateFunction(sumForEach, Array(UInt64)),
    DurationQuantiles AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt64)
) ENGINE = ${engine:AggregatingMergeTree}
PARTITION BY toDate(Minute)
ORDER BY (ServiceName, SpanName, SpanKind, Minute)
${ttl:Minute}
SETTINGS index_granularity = 8192, non_replicated_deduplication_window = ${dedup_window};

CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.otel_traces_rollup_1m_mv ${on_cluster}
TO ${database}.otel_traces_rollup_1m
AS SELECT
    toStartOfMinute(Timestamp) AS Minute,
    ServiceName,
    SpanName,
    SpanKind,
    count() AS Spans,
    countIf(StatusCode = 'Error') AS Errors,
    sum(Duration) AS DurationSum,
    sumForEachState(arrayMap(b -> toUInt64(Duration <= b * 1000000),
        [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000])) AS LatencyBuckets,
    quantilesTDigestState(0.5, 0.95, 0.99)(Duration) AS DurationQuantiles
FROM ${database}.otel_traces
GROUP BY Minute, ServiceName, SpanName, SpanKind;
