-- Metric gauge points. The columns, indexes, PARTITION BY and ORDER BY of the Collector ClickHouse
-- exporter's otel_metrics_gauge (v0.165.1), with point times in nanoseconds (DateTime64(9), where the
-- exporter keeps seconds), then otelpipe's own columns: the resource's dropped-attribute count,
-- the metric's metadata, a record id and the service catalog.
-- sharding_key: cityHash64(ServiceName, MetricName, Attributes)
CREATE TABLE IF NOT EXISTS ${database}.otel_metrics_gauge ${on_cluster} (
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    ResourceSchemaUrl String CODEC(ZSTD(3)),
    ScopeName String CODEC(ZSTD(3)),
    ScopeVersion String CODEC(ZSTD(3)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    ScopeDroppedAttrCount UInt32 CODEC(ZSTD(3)),
    ScopeSchemaUrl String CODEC(ZSTD(3)),
    ServiceName LowCardinality(String) CODEC(ZSTD(3)),
    MetricName LowCardinality(String) CODEC(ZSTD(3)),
    MetricDescription String CODEC(ZSTD(3)),
    MetricUnit String CODEC(ZSTD(3)),
    Attributes Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    StartTimeUnix DateTime64(9) CODEC(Delta, ZSTD(3)),
    TimeUnix DateTime64(9) CODEC(Delta, ZSTD(3)),
    Value Float64 CODEC(ZSTD(3)),
    Flags UInt32 CODEC(ZSTD(3)),
    Exemplars Nested (
        FilteredAttributes Map(LowCardinality(String), String),
        TimeUnix DateTime64(9),
        Value Float64,
        SpanId String,
        TraceId String
    ) CODEC(ZSTD(3)),
    ResourceDroppedAttrCount UInt32 CODEC(ZSTD(3)),
    MetricMetadata Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    RecordId UInt64 MATERIALIZED cityHash64(ServiceName, MetricName, Attributes, ResourceAttributes, ScopeName, StartTimeUnix, TimeUnix, Value),
    ServiceTeam LowCardinality(String) DEFAULT '',
    ServiceTier LowCardinality(String) DEFAULT '',
    ServiceOwner LowCardinality(String) DEFAULT '',
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_attr_key mapKeys(Attributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_attr_value mapValues(Attributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_time_minmax TimeUnix TYPE minmax GRANULARITY 1
) ENGINE = ${engine:MergeTree}
PARTITION BY toDate(TimeUnix)
ORDER BY (ServiceName, MetricName, toStartOfHour(TimeUnix), cityHash64(Attributes), TimeUnix)
${ttl:toDateTime(TimeUnix)}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, ${dedup};
