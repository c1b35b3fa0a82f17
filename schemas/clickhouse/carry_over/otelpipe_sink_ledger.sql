-- Run once, when otelpipe_sink_ledger is created in a database that has the ledger's first form
-- (otelpipe_sink_ranges, keyed by consumer group): its ranges are carried over, the old table is
-- left in place.
INSERT INTO ${database}.otelpipe_sink_ledger
    (Topic, Partition, FirstOffset, LastOffset, FirstHash, LastHash, ConsumerGroup, RecordedAt)
SELECT Topic, Partition, FirstOffset, LastOffset, FirstHash, LastHash, ConsumerGroup, RecordedAt
FROM ${database}.otelpipe_sink_ranges;
