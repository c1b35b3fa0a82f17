-- Enrichment computed by ClickHouse on insert (DEFAULT expressions: the writer sends none of these,
-- and SELECT * shows them): resource attributes promoted into columns, and an error flag that
-- queries need. A span is an error when its status is Error, when it is a server span answering
-- HTTP 5xx, or when it is a server span ending with a gRPC code that means failure
-- (UNKNOWN 2, DEADLINE_EXCEEDED 4, UNIMPLEMENTED 12, INTERNAL 13, UNAVAILABLE 14, DATA_LOSS 15).
ALTER TABLE ${database}.otel_traces ${on_cluster}
    ADD COLUMN IF NOT EXISTS ServiceNamespace LowCardinality(String) DEFAULT ResourceAttributes['service.namespace'],
    ADD COLUMN IF NOT EXISTS ServiceVersion LowCardinality(String) DEFAULT ResourceAttributes['service.version'],
    ADD COLUMN IF NOT EXISTS DeploymentEnvironment LowCardinality(String)
        DEFAULT coalesce(nullIf(ResourceAttributes['deployment.environment.name'], ''), ResourceAttributes['deployment.environment']),
    ADD COLUMN IF NOT EXISTS K8sNamespace LowCardinality(String) DEFAULT ResourceAttributes['k8s.namespace.name'],
    ADD COLUMN IF NOT EXISTS K8sPodName String DEFAULT ResourceAttributes['k8s.pod.name'],
    ADD COLUMN IF NOT EXISTS K8sDeploymentName LowCardinality(String) DEFAULT ResourceAttributes['k8s.deployment.name'],
    ADD COLUMN IF NOT EXISTS K8sNodeName LowCardinality(String) DEFAULT ResourceAttributes['k8s.node.name'],
    ADD COLUMN IF NOT EXISTS CloudRegion LowCardinality(String) DEFAULT ResourceAttributes['cloud.region'],
    ADD COLUMN IF NOT EXISTS HostName LowCardinality(String) DEFAULT ResourceAttributes['host.name'],
    ADD COLUMN IF NOT EXISTS IsError UInt8 DEFAULT
        StatusCode = 'Error'
        OR (SpanKind = 'Server' AND toUInt16OrZero(coalesce(nullIf(SpanAttributes['http.response.status_code'], ''),
                                                            SpanAttributes['http.status_code'])) >= 500)
        OR (SpanKind = 'Server' AND SpanAttributes['rpc.grpc.status_code'] IN ('2', '4', '12', '13', '14', '15'));

ALTER TABLE ${database}.otel_logs ${on_cluster}
    ADD COLUMN IF NOT EXISTS ServiceNamespace LowCardinality(String) DEFAULT ResourceAttributes['service.namespace'],
    ADD COLUMN IF NOT EXISTS ServiceVersion LowCardinality(String) DEFAULT ResourceAttributes['service.version'],
    ADD COLUMN IF NOT EXISTS DeploymentEnvironment LowCardinality(String)
        DEFAULT coalesce(nullIf(ResourceAttributes['deployment.environment.name'], ''), ResourceAttributes['deployment.environment']),
    ADD COLUMN IF NOT EXISTS K8sNamespace LowCardinality(String) DEFAULT ResourceAttributes['k8s.namespace.name'],
    ADD COLUMN IF NOT EXISTS K8sPodName String DEFAULT ResourceAttributes['k8s.pod.name'],
    ADD COLUMN IF NOT EXISTS HostName LowCardinality(String) DEFAULT ResourceAttributes['host.name'],
    ADD COLUMN IF NOT EXISTS IsError UInt8 DEFAULT SeverityNumber >= 17;
