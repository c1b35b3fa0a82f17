-- Tail sampling: one summary row per kept trace, written when the trace is decided, and the span
-- context every log of a tail-sampled trace gains in the stream (the span it was emitted in, the
-- trace's root, the trace's decision). Logs written without tail sampling leave these empty.
CREATE TABLE IF NOT EXISTS ${database}.otel_trace_summary ${on_cluster} (
    TraceId String CODEC(ZSTD(1)),
    Start DateTime64(9) CODEC(Delta, ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    RootServiceName LowCardinality(String) CODEC(ZSTD(1)),
    RootSpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanCount UInt32 CODEC(ZSTD(1)),
    ErrorSpanCount UInt32 CODEC(ZSTD(1)),
    LogCount UInt32 CODEC(ZSTD(1)),
    ErrorLogCount UInt32 CODEC(ZSTD(1)),
    Decision LowCardinality(String),
    Policy LowCardinality(String),
    SampleWeight Float64,
    DecidedAt DateTime64(3),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1
) ENGINE = ${engine:MergeTree}
PARTITION BY toDate(Start)
ORDER BY (RootServiceName, RootSpanName, toUnixTimestamp64Nano(Start))
${ttl:toDateTime(Start)}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = ${dedup_window};

ALTER TABLE ${database}.otel_logs ${on_cluster}
    ADD COLUMN IF NOT EXISTS SpanName LowCardinality(String) DEFAULT '' CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS SpanKind LowCardinality(String) DEFAULT '' CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS RootServiceName LowCardinality(String) DEFAULT '' CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS RootSpanName LowCardinality(String) DEFAULT '' CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS TraceDecision LowCardinality(String) DEFAULT '' CODEC(ZSTD(1));
