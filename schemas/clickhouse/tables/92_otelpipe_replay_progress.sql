-- Where each replay is: the next offset to read per partition, so a stopped replay resumes.
-- sharding_key: cityHash64(ReplayId)
CREATE TABLE IF NOT EXISTS ${database}.otelpipe_replay_progress ${on_cluster} (
    ReplayId String,
    Topic LowCardinality(String),
    Partition UInt32,
    NextOffset UInt64,
    StopOffset UInt64,
    UpdatedAt DateTime64(3) DEFAULT now64(3)
) ENGINE = ${engine:ReplacingMergeTree(UpdatedAt)}
ORDER BY (ReplayId, Topic, Partition)
SETTINGS index_granularity = 8192, ${dedup};
