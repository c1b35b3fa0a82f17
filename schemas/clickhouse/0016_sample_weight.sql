-- Sampling: every stored span carries its adjusted count (1 / the probability it was kept with,
-- head and tail sampling combined), so sum(SampleWeight) estimates how many spans there were.
-- Spans written before sampling existed, or never sampled, count as 1.
ALTER TABLE ${database}.otel_traces ${on_cluster}
    ADD COLUMN IF NOT EXISTS SampleWeight Float64 DEFAULT 1 CODEC(ZSTD(1));
