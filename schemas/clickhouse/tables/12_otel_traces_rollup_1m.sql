-- Per minute, per service, span name and kind: span and error counts, latency quantile states and
-- latency bucket counts, fed by a materialized view on otel_traces, so `otelpipe services` and
-- `otelpipe slo` read minutes, not spans. The Estimated* columns sum SampleWeight (each span's
-- adjusted count), estimating true counts under head and tail sampling; Spans and Errors count
-- stored spans. The view's query is changed in place (ALTER … MODIFY QUERY), never dropped and
-- created again, which would let ingested spans miss it.
-- sharding_key: cityHash64(ServiceName, SpanName)
CREATE TABLE IF NOT EXISTS ${database}.otel_traces_rollup_1m ${on_cluster} (
    Minute DateTime CODEC(Delta, ZSTD(3)),
    ServiceName LowCardinality(String) CODEC(ZSTD(3)),
    SpanName LowCardinality(String) CODEC(ZSTD(3)),
    SpanKind LowCardinality(String) CODEC(ZSTD(3)),
    Spans SimpleAggregateFunction(sum, UInt64),
    Errors SimpleAggregateFunction(sum, UInt64),
    DurationSum SimpleAggregateFunction(sum, UInt64),
    -- Spans at or under 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000 ms (latency SLOs).
    LatencyBuckets AggregateFunction(sumForEach, Array(UInt64)),
    DurationQuantiles AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), UInt64),
    EstimatedSpans SimpleAggregateFunction(sum, Float64) DEFAULT toFloat64(Spans),
    EstimatedErrors SimpleAggregateFunction(sum, Float64) DEFAULT toFloat64(Errors),
    EstimatedLatencyBuckets AggregateFunction(sumForEach, Array(Float64))
) ENGINE = ${engine:AggregatingMergeTree}
PARTITION BY toDate(Minute)
ORDER BY (ServiceName, SpanName, SpanKind, Minute)
${ttl:Minute}
SETTINGS index_granularity = 8192, ${dedup};

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
    quantilesTDigestState(0.5, 0.95, 0.99)(Duration) AS DurationQuantiles,
    sum(SampleWeight) AS EstimatedSpans,
    sumIf(SampleWeight, StatusCode = 'Error') AS EstimatedErrors,
    sumForEachState(arrayMap(b -> if(Duration <= b * 1000000, SampleWeight, 0.),
        [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000])) AS EstimatedLatencyBuckets
FROM ${database}.otel_traces
GROUP BY Minute, ServiceName, SpanName, SpanKind;
