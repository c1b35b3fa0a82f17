-- Metric names that break the naming conventions of the label policy: one row per service, metric
-- and rule (ReplacingMergeTree: repeats collapse; query with FINAL), with the first point's time.
-- sharding_key: cityHash64(Service, MetricName)
CREATE TABLE IF NOT EXISTS ${database}.otelpipe_violations ${on_cluster} (
    FirstSeen DateTime64(3),
    Service LowCardinality(String),
    MetricName String,
    Rule LowCardinality(String),
    Detail String,
    Action LowCardinality(String)
) ENGINE = ${engine:ReplacingMergeTree}
ORDER BY (Service, MetricName, Rule)
SETTINGS index_granularity = 8192, ${dedup};
