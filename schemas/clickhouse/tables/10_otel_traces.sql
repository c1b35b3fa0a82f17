-- Spans. The columns, types, codecs, indexes, PARTITION BY and ORDER BY of the OpenTelemetry
-- Collector ClickHouse exporter's otel_traces (v0.165.1), then otelpipe's own columns: the span
-- fields that exporter drops, a record id, enrichment, the service catalog and the sample weight.
-- `otelpipe migrate` adds whichever of these columns and indexes a table lacks (an exporter's
-- database included) and never rewrites a table; see sinks/migrations.py.
-- sharding_key: cityHash64(TraceId)
CREATE TABLE IF NOT EXISTS ${database}.otel_traces ${on_cluster} (
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(3)),
    TraceId String CODEC(ZSTD(3)),
    SpanId String CODEC(ZSTD(3)),
    ParentSpanId String CODEC(ZSTD(3)),
    TraceState String CODEC(ZSTD(3)),
    SpanName LowCardinality(String) CODEC(ZSTD(3)),
    SpanKind LowCardinality(String) CODEC(ZSTD(3)),
    ServiceName LowCardinality(String) CODEC(ZSTD(3)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    ScopeName String CODEC(ZSTD(3)),
    ScopeVersion String CODEC(ZSTD(3)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    Duration UInt64 CODEC(ZSTD(3)),
    StatusCode LowCardinality(String) CODEC(ZSTD(3)),
    StatusMessage String CODEC(ZSTD(3)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String),
        DroppedAttributesCount UInt32
    ) CODEC(ZSTD(3)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String),
        Flags UInt32,
        DroppedAttributesCount UInt32
    ) CODEC(ZSTD(3)),
    ResourceSchemaUrl LowCardinality(String) CODEC(ZSTD(3)),
    ResourceDroppedAttrCount UInt32 CODEC(ZSTD(3)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    ScopeDroppedAttrCount UInt32 CODEC(ZSTD(3)),
    ScopeSchemaUrl LowCardinality(String) CODEC(ZSTD(3)),
    SpanFlags UInt32 CODEC(ZSTD(3)),
    DroppedAttributesCount UInt32 CODEC(ZSTD(3)),
    DroppedEventsCount UInt32 CODEC(ZSTD(3)),
    DroppedLinksCount UInt32 CODEC(ZSTD(3)),
    -- A deterministic id computed from the record (MATERIALIZED: on insert, and on read for older
    -- parts); replays insert only rows whose RecordId the target time range lacks.
    RecordId UInt64 MATERIALIZED cityHash64(TraceId, SpanId, Timestamp, ServiceName, SpanName),
    -- Enrichment computed on insert (the writer sends none of these). A span is an error when its
    -- status is Error, or it is a server span answering HTTP 5xx or ending with a gRPC code that
    -- means failure (UNKNOWN 2, DEADLINE_EXCEEDED 4, UNIMPLEMENTED 12, INTERNAL 13, UNAVAILABLE 14,
    -- DATA_LOSS 15).
    ServiceNamespace LowCardinality(String) DEFAULT ResourceAttributes['service.namespace'],
    ServiceVersion LowCardinality(String) DEFAULT ResourceAttributes['service.version'],
    DeploymentEnvironment LowCardinality(String)
        DEFAULT coalesce(nullIf(ResourceAttributes['deployment.environment.name'], ''), ResourceAttributes['deployment.environment']),
    K8sNamespace LowCardinality(String) DEFAULT ResourceAttributes['k8s.namespace.name'],
    K8sPodName String DEFAULT ResourceAttributes['k8s.pod.name'],
    K8sDeploymentName LowCardinality(String) DEFAULT ResourceAttributes['k8s.deployment.name'],
    K8sNodeName LowCardinality(String) DEFAULT ResourceAttributes['k8s.node.name'],
    CloudRegion LowCardinality(String) DEFAULT ResourceAttributes['cloud.region'],
    HostName LowCardinality(String) DEFAULT ResourceAttributes['host.name'],
    IsError UInt8 DEFAULT
        StatusCode = 'Error'
        OR (SpanKind = 'Server' AND toUInt16OrZero(coalesce(nullIf(SpanAttributes['http.response.status_code'], ''),
                                                            SpanAttributes['http.status_code'])) >= 500)
        OR (SpanKind = 'Server' AND SpanAttributes['rpc.grpc.status_code'] IN ('2', '4', '12', '13', '14', '15')),
    -- The service catalog's fields of the span's service (empty for services it does not list).
    ServiceTeam LowCardinality(String) DEFAULT '',
    ServiceTier LowCardinality(String) DEFAULT '',
    ServiceOwner LowCardinality(String) DEFAULT '',
    -- The span's adjusted count: 1 / the probability it was kept with (head and tail sampling).
    SampleWeight Float64 DEFAULT 1 CODEC(ZSTD(3)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1,
    INDEX idx_lower_span_name lower(SpanName) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8
) ENGINE = ${engine:MergeTree}
PARTITION BY toDate(Timestamp)
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp))
${ttl:toDateTime(Timestamp)}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, ${dedup};
