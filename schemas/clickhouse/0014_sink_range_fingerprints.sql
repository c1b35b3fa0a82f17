-- Fingerprints of the first and last message of each recorded range. A topic deleted and created
-- again (or a broker whose data was wiped) restarts its offsets at 0: a range recorded for the old
-- messages must not cut the new ones. The sink compares these hashes (and the time a range was
-- recorded with the new messages' timestamps) and ignores ranges that no longer match.
ALTER TABLE ${database}.otelpipe_sink_ranges ${on_cluster}
    ADD COLUMN IF NOT EXISTS FirstHash UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS LastHash UInt64 DEFAULT 0;
