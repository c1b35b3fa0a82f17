-- Tail sampling: one summary row per kept trace, written when the trace is decided.
-- sharding_key: cityHash64(TraceId)
CREATE TABLE IF NOT EXISTS ${database}.otel_trace_summary ${on_cluster} (
    TraceId String CODEC(ZSTD(3)),
    Start DateTime64(9) CODEC(Delta, ZSTD(3)),
    Duration UInt64 CODEC(ZSTD(3)),
    RootServiceName LowCardinality(String) CODEC(ZSTD(3)),
    RootSpanName LowCardinality(String) CODEC(ZSTD(3)),
    SpanCount UInt32 CODEC(ZSTD(3)),
    ErrorSpanCount UInt32 CODEC(ZSTD(3)),
    LogCount UInt32 CODEC(ZSTD(3)),
    ErrorLogCount UInt32 CODEC(ZSTD(3)),
    Decision LowCardinality(String),
    Policy LowCardinality(String),
    SampleWeight Float64,
    DecidedAt DateTime64(3),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1
) ENGINE = ${engine:MergeTree}
PARTITION BY toDate(Start)
ORDER BY (RootServiceName, RootSpanName, toUnixTimestamp64Nano(Start))
${ttl:toDateTime(Start)}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, ${dedup};
