-- The sink's ledger. Before the rows decoded from a batch are inserted, every offset range of the
-- batch (a topic partition's [FirstOffset, LastOffset], with fingerprints of its first and last
-- message) is recorded here under the batch's insert id: all the batch's ranges, across
-- partitions, go into one insert per table with one deduplication token. After a crash the
-- messages come back in other batches; the writer cuts them at these ranges and inserts each
-- recorded batch again under its token, so ClickHouse drops what had already landed. Keyed by the
-- data: a second consumer group reading the same messages cuts them the same way. Sorted by
-- LastOffset: a writer asks for the ranges ending at or after the first offset it holds.
-- sharding_key: cityHash64(Topic, Partition)
CREATE TABLE IF NOT EXISTS ${database}.otelpipe_sink_ledger ${on_cluster} (
    Topic LowCardinality(String),
    Partition UInt32,
    FirstOffset UInt64,
    LastOffset UInt64,
    FirstHash UInt64 DEFAULT 0,
    LastHash UInt64 DEFAULT 0,
    ConsumerGroup LowCardinality(String) DEFAULT '',
    RecordedAt DateTime64(3) DEFAULT now64(3),
    -- The insert the range belongs to (its token's id) and how many ranges that insert holds:
    -- '' and 0 for a range recorded alone (one insert per range).
    InsertId String DEFAULT '',
    InsertRanges UInt32 DEFAULT 0,
    INDEX idx_insert_id InsertId TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = ${engine:MergeTree}
ORDER BY (Topic, Partition, LastOffset, FirstOffset)
TTL toDateTime(RecordedAt) + toIntervalDay(14)
SETTINGS index_granularity = 8192, ${dedup};
