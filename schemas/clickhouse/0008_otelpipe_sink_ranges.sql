-- The sink's ledger: before rows decoded from Kafka offsets [FirstOffset, LastOffset] are
-- inserted, that range is recorded here. After a crash the messages come back in batches of other
-- sizes; the sink cuts them at these recorded ranges so each range is inserted again with its
-- original deduplication token, and ClickHouse drops what had already landed.
CREATE TABLE IF NOT EXISTS ${database}.otelpipe_sink_ranges ${on_cluster} (
    ConsumerGroup LowCardinality(String),
    Topic LowCardinality(String),
    Partition UInt32,
    FirstOffset UInt64,
    LastOffset UInt64,
    RecordedAt DateTime64(3) DEFAULT now64(3)
) ENGINE = ${engine:MergeTree}
ORDER BY (ConsumerGroup, Topic, Partition, FirstOffset)
TTL toDateTime(RecordedAt) + toIntervalDay(14)
SETTINGS non_replicated_deduplication_window = ${dedup_window};
