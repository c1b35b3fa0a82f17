-- Log records. The columns, types, codecs, indexes (text() indexes where the server has them, as
-- the exporter builds them on ClickHouse >= 26.2), PARTITION BY and ORDER BY of the Collector
-- ClickHouse exporter's otel_logs (v0.165.1), then otelpipe's own columns: the record fields that
-- exporter drops, a record id, enrichment, the service catalog and the span context tail sampling
-- adds. An older exporter layout (TimestampTime, ORDER BY (ServiceName, TimestampTime, Timestamp))
-- is adopted as it is: its sort key is kept, columns are added.
-- sharding_key: cityHash64(TraceId, Timestamp)
CREATE TABLE IF NOT EXISTS ${database}.otel_logs ${on_cluster} (
    `Timestamp` DateTime64(9) COMMENT 'Event timestamp with nanosecond precision' CODEC(Delta(8), ZSTD(3)),
    `TraceId` String COMMENT 'W3C trace identifier' CODEC(ZSTD(3)),
    `SpanId` String COMMENT 'W3C span identifier' CODEC(ZSTD(3)),
    `TraceFlags` UInt8 COMMENT 'W3C trace flags',
    `SeverityText` LowCardinality(String) COMMENT 'Log severity as text' CODEC(ZSTD(3)),
    `SeverityNumber` UInt8 COMMENT 'Log severity as number (1-24)',
    `ServiceName` LowCardinality(String) COMMENT 'Service that emitted the log' CODEC(ZSTD(3)),
    `Body` String COMMENT 'Log message body' CODEC(ZSTD(3)),
    `ResourceSchemaUrl` LowCardinality(String) COMMENT 'Schema URL for the resource' CODEC(ZSTD(3)),
    `ResourceAttributes` Map(LowCardinality(String), String) COMMENT 'Resource attributes as key-value pairs' CODEC(ZSTD(3)),
    `ScopeSchemaUrl` LowCardinality(String) COMMENT 'Schema URL for the instrumentation scope' CODEC(ZSTD(3)),
    `ScopeName` String COMMENT 'Instrumentation scope name' CODEC(ZSTD(3)),
    `ScopeVersion` LowCardinality(String) COMMENT 'Instrumentation scope version' CODEC(ZSTD(3)),
    `ScopeAttributes` Map(LowCardinality(String), String) COMMENT 'Instrumentation scope attributes' CODEC(ZSTD(3)),
    `LogAttributes` Map(LowCardinality(String), String) COMMENT 'Log record attributes' CODEC(ZSTD(3)),
    `EventName` String COMMENT 'Event name for log records representing events' CODEC(ZSTD(3)),
    `__otel_materialized_k8s.cluster.name` LowCardinality(String) MATERIALIZED ResourceAttributes['k8s.cluster.name'] CODEC(ZSTD(3)),
    `__otel_materialized_k8s.container.name` LowCardinality(String) MATERIALIZED ResourceAttributes['k8s.container.name'] CODEC(ZSTD(3)),
    `__otel_materialized_k8s.deployment.name` LowCardinality(String) MATERIALIZED ResourceAttributes['k8s.deployment.name'] CODEC(ZSTD(3)),
    `__otel_materialized_k8s.namespace.name` LowCardinality(String) MATERIALIZED ResourceAttributes['k8s.namespace.name'] CODEC(ZSTD(3)),
    `__otel_materialized_k8s.node.name` LowCardinality(String) MATERIALIZED ResourceAttributes['k8s.node.name'] CODEC(ZSTD(3)),
    `__otel_materialized_k8s.pod.name` LowCardinality(String) MATERIALIZED ResourceAttributes['k8s.pod.name'] CODEC(ZSTD(3)),
    `__otel_materialized_k8s.pod.uid` LowCardinality(String) MATERIALIZED ResourceAttributes['k8s.pod.uid'] CODEC(ZSTD(3)),
    `__otel_materialized_deployment.environment.name` LowCardinality(String) MATERIALIZED ResourceAttributes['deployment.environment.name'] CODEC(ZSTD(3)),
    ObservedTimestamp DateTime64(9) CODEC(Delta(8), ZSTD(3)),
    LogFlags UInt32 CODEC(ZSTD(3)),
    DroppedAttributesCount UInt32 CODEC(ZSTD(3)),
    ResourceDroppedAttrCount UInt32 CODEC(ZSTD(3)),
    ScopeDroppedAttrCount UInt32 CODEC(ZSTD(3)),
    RecordId UInt64 MATERIALIZED cityHash64(Timestamp, ObservedTimestamp, TraceId, SpanId,
        ServiceName, SeverityNumber, Body, LogAttributes, ResourceAttributes),
    ServiceNamespace LowCardinality(String) DEFAULT ResourceAttributes['service.namespace'],
    ServiceVersion LowCardinality(String) DEFAULT ResourceAttributes['service.version'],
    DeploymentEnvironment LowCardinality(String)
        DEFAULT coalesce(nullIf(ResourceAttributes['deployment.environment.name'], ''), ResourceAttributes['deployment.environment']),
    K8sNamespace LowCardinality(String) DEFAULT ResourceAttributes['k8s.namespace.name'],
    K8sPodName String DEFAULT ResourceAttributes['k8s.pod.name'],
    HostName LowCardinality(String) DEFAULT ResourceAttributes['host.name'],
    IsError UInt8 DEFAULT SeverityNumber >= 17,
    ServiceTeam LowCardinality(String) DEFAULT '',
    ServiceTier LowCardinality(String) DEFAULT '',
    ServiceOwner LowCardinality(String) DEFAULT '',
    -- The span context a log of a tail-sampled trace gains in the stream (empty otherwise).
    SpanName LowCardinality(String) DEFAULT '' CODEC(ZSTD(3)),
    SpanKind LowCardinality(String) DEFAULT '' CODEC(ZSTD(3)),
    RootServiceName LowCardinality(String) DEFAULT '' CODEC(ZSTD(3)),
    RootSpanName LowCardinality(String) DEFAULT '' CODEC(ZSTD(3)),
    TraceDecision LowCardinality(String) DEFAULT '' CODEC(ZSTD(3)),
    INDEX idx_trace_id TraceId TYPE ${text:array|bloom_filter(0.001) GRANULARITY 1},
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE ${text:array|bloom_filter(0.01) GRANULARITY 1},
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE ${text:array|bloom_filter(0.01) GRANULARITY 1},
    INDEX idx_scope_attr_key mapKeys(ScopeAttributes) TYPE ${text:array|bloom_filter(0.01) GRANULARITY 1},
    INDEX idx_scope_attr_value mapValues(ScopeAttributes) TYPE ${text:array|bloom_filter(0.01) GRANULARITY 1},
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE ${text:array|bloom_filter(0.01) GRANULARITY 1},
    INDEX idx_log_attr_value mapValues(LogAttributes) TYPE ${text:array|bloom_filter(0.01) GRANULARITY 1},
    INDEX idx_lower_body lower(Body) TYPE ${text:splitByNonAlpha|tokenbf_v1(32768, 3, 0) GRANULARITY 8},
    ${no_text:INDEX idx_event_name EventName TYPE bloom_filter(0.01) GRANULARITY 1}
) ENGINE = ${engine:MergeTree}
PARTITION BY toDate(Timestamp)
ORDER BY (toStartOfFiveMinutes(Timestamp), ServiceName, Timestamp)
${ttl:toDateTime(Timestamp)}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, ${dedup};
