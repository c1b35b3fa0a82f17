-- Sampling-aware aggregates: with head or tail sampling, count() of stored spans undercounts and
-- tail sampling keeps errors and slow traces at a higher rate than the rest, so raw counts would
-- also overstate error ratios. The rollup therefore sums SampleWeight (each span's adjusted count):
-- EstimatedSpans, EstimatedErrors and EstimatedLatencyBuckets estimate the true counts, and
-- `otelpipe services` and `otelpipe slo` read them. Spans and Errors keep counting stored spans.
-- Minutes written before this migration estimate with their stored counts (weights were all 1);
-- their latency buckets are not carried over.
ALTER TABLE ${database}.otel_traces_rollup_1m ${on_cluster}
    ADD COLUMN IF NOT EXISTS EstimatedSpans SimpleAggregateFunction(sum, Float64) DEFAULT toFloat64(Spans),
    ADD COLUMN IF NOT EXISTS EstimatedErrors SimpleAggregateFunction(sum, Float64) DEFAULT toFloat64(Errors),
    ADD COLUMN IF NOT EXISTS EstimatedLatencyBuckets AggregateFunction(sumForEach, Array(Float64));

-- The view's query is replaced in place (one atomic ALTER): no moment in which spans are ingested
-- and the rollup misses them, as dropping and creating the view would leave.
ALTER TABLE ${database}.otel_traces_rollup_1m_mv ${on_cluster} MODIFY QUERY
SELECT
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
