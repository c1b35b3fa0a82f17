-- Alert records: one row each time an alert starts firing or resolves (SLO burn rates, cardinality
-- budgets). The same records go to the otelpipe.alerts topic, Avro-encoded with
-- schemas/avro/alert.avsc; a test keeps the two in step.
-- sharding_key: cityHash64(Kind, Service, Name)
CREATE TABLE IF NOT EXISTS ${database}.otelpipe_alerts ${on_cluster} (
    Timestamp DateTime64(3) CODEC(Delta, ZSTD(3)),
    Kind LowCardinality(String),
    Service LowCardinality(String),
    Name String,
    State LowCardinality(String),
    Severity LowCardinality(String),
    Value Float64,
    Threshold Float64,
    Details Map(LowCardinality(String), String)
) ENGINE = ${engine:MergeTree}
PARTITION BY toYYYYMM(Timestamp)
ORDER BY (Kind, Service, Name, Timestamp)
SETTINGS index_granularity = 8192, ${dedup};
