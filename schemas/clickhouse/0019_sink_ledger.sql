-- The sink's ledger, keyed by the data: a range of a topic partition's offsets (with fingerprints
-- of its first and last message) is the same range whichever consumer group recorded it, so a
-- second group (another app id, a blue/green deployment) reading the same messages cuts them the
-- same way and writes nothing twice. Sorted by LastOffset: a writer asks for the ranges ending at
-- or after the first offset of its batch, which the primary key finds without reading the
-- ledger's older ranges (the cost no longer grows with its 14 days). ConsumerGroup stays, as who
-- recorded the range. The old ledger's ranges are carried over; the old table is left in place.
CREATE TABLE IF NOT EXISTS ${database}.otelpipe_sink_ledger ${on_cluster} (
    Topic LowCardinality(String),
    Partition UInt32,
    FirstOffset UInt64,
    LastOffset UInt64,
    FirstHash UInt64 DEFAULT 0,
    LastHash UInt64 DEFAULT 0,
    ConsumerGroup LowCardinality(String) DEFAULT '',
    RecordedAt DateTime64(3) DEFAULT now64(3)
) ENGINE = ${engine:MergeTree}
ORDER BY (Topic, Partition, LastOffset, FirstOffset)
TTL toDateTime(RecordedAt) + toIntervalDay(14)
SETTINGS non_replicated_deduplication_window = ${dedup_window};

INSERT INTO ${database}.otelpipe_sink_ledger
    (Topic, Partition, FirstOffset, LastOffset, FirstHash, LastHash, ConsumerGroup, RecordedAt)
SELECT Topic, Partition, FirstOffset, LastOffset, FirstHash, LastHash, ConsumerGroup, RecordedAt
FROM ${database}.otelpipe_sink_ranges;
